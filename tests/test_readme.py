import re
from pathlib import Path


from tokenred import registry

README = Path(__file__).resolve().parent.parent / "README.md"
CI_RUN = Path(__file__).resolve().parent.parent / ".ci" / "run"


def _block_after(marker: str) -> str:
    text = README.read_text()
    match = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no python block after {marker}"
    return match.group(1)


def test_new_method_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    namespace: dict = {}
    exec(compile(_block_after("<!-- example:new-method -->"), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "{'blocks.3': 138, 'blocks.6': 97, 'blocks.9': 68}" in out
    table = namespace["table"]
    assert list(table["method"]) == ["none", "key_norm_prune"]
    assert table["flop_reduction_pct"].iloc[1] > 30


def test_new_grid_method_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    exec(compile(_block_after("<!-- example:new-grid-method -->"), "README.md", "exec"), {})
    assert "1568/784/196/49" in capsys.readouterr().out


def test_ci_runs_exactly_the_readme_test_command():
    lines = README.read_text().splitlines()
    commands = [l.strip() for l in lines[:12] if l.startswith("    ")]
    assert len(commands) == 2 and "tokenred compare" in commands[0]
    assert commands[1] in CI_RUN.read_text()
