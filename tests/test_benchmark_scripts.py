"""The benchmark run scripts (``benchmarks/gpu_run.sh``, ``benchmarks/cpu_run.sh``) call the
benchmark scripts with flags those scripts accept: a GPU session has minutes, and a flag renamed
in a script but not in the run script would cost one. Each invocation's arguments go through the
script's own argparse, which is stopped right after parsing (nothing is timed here)."""
import argparse
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class ParsedOnly(Exception):
    """Raised by the patched ``parse_args`` once a script's arguments parsed."""


def joined_lines(path: Path) -> list:
    """The script's lines with backslash continuations joined."""
    return path.read_text().replace("\\\n", " ").splitlines()


def gpu_invocations() -> list:
    """(name, script, args) of every ``bench NAME TIMEOUT SCRIPT ARGS...`` line; bench adds
    ``--json``."""
    out = []
    for line in joined_lines(BENCHMARKS / "gpu_run.sh"):
        words = shlex.split(line.strip()) if line.strip().startswith("bench ") else []
        if len(words) >= 4:
            out.append((words[1], words[3], words[4:] + ["--json", "out.json"]))
    return out


def cpu_invocations() -> list:
    """(name, script, args) of every ``run NAME TIMEOUT ... benchmarks/X.py ARGS`` line."""
    out = []
    for line in joined_lines(BENCHMARKS / "cpu_run.sh"):
        words = shlex.split(line.strip()) if line.strip().startswith("run ") else []
        scripts = [i for i, w in enumerate(words) if w.startswith("benchmarks/") and w.endswith(".py")]
        if scripts:
            i = scripts[0]
            args = [w.replace("$R/", "results/") for w in words[i + 1:]]
            out.append((words[1], Path(words[i]).name, args))
    return out


def test_the_run_scripts_are_valid_bash_and_name_their_cases():
    for name in ("gpu_run.sh", "cpu_run.sh", "old_vs_new.sh"):
        subprocess.run(["bash", "-n", str(BENCHMARKS / name)], check=True)
    assert len(gpu_invocations()) >= 8 and len(cpu_invocations()) >= 30


@pytest.mark.parametrize("name, script, args", gpu_invocations() + cpu_invocations(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_invocation_parses_in_its_script(name, script, args, monkeypatch):
    path = BENCHMARKS / script
    assert path.is_file(), f"{name}: no benchmarks/{script}"
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise ParsedOnly(parse(self, argv, namespace))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(path)] + args)
    monkeypatch.syspath_prepend(str(BENCHMARKS))      # the scripts import _protocol beside them
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.main()
    except SystemExit as exc:      # argparse's way of saying a flag is wrong
        pytest.fail(f"{name}: benchmarks/{script} {' '.join(args)} does not parse (exit {exc.code})")
    except ParsedOnly:
        return
    pytest.fail(f"{name}: benchmarks/{script} returned without parsing its arguments")
