"""The results store (resume, SIGKILL safety) and reports regenerated from it alone."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import tokenred
from tokenred.cli import main
from tokenred.report import latex_escape, pareto_front, table_from_store
from tokenred.store import Key, ResultsStore

measure_module = sys.modules["tokenred.measure"]

TINY = dict(patch_size=8, embed_dim=48, num_heads=3, depth=2, num_classes=3)
FAST = dict(input_size=32, batch_size=2, warmup=0, iters=2, rounds=1, backbone_kwargs=TINY)


def test_store_roundtrip_and_replace(tmp_path):
    path = str(tmp_path / "run" / "results.sqlite")
    store = ResultsStore(path)
    key = Key("b", "tome:r=2", 224, 8, "float32", "cpu", "flops", "v")
    store.put(key, {"gflops": 1.5, "nan": float("nan")})
    store.put(key, {"gflops": 2.5})
    store.close()
    again = ResultsStore(path)
    assert again.get(key) == {"gflops": 2.5} and len(again) == 1
    assert again.get(Key("b", "tome:r=2", 224, 8, "float32", "cpu", "timing", "v")) is None
    with pytest.raises(ValueError, match="unknown measurement kind"):
        again.put(Key("b", "m", 1, 1, "f", "cpu", "speed", ""), {})


def test_rerun_measures_only_what_is_missing(tmp_path, monkeypatch):
    store = ResultsStore(str(tmp_path / "results.sqlite"))
    first = tokenred.compare(["vit_tiny_patch16_224"], ["none", "tome:r=2"], store=store, **FAST)
    measured = []
    real_count, real_bench = measure_module.count_flops, measure_module.benchmark_interleaved

    def counting_flops(model, size):
        measured.append("flops")
        return real_count(model, size)

    def counting_bench(models, *args, **kwargs):
        measured.append(("timing", sorted(models)))
        return real_bench(models, *args, **kwargs)

    monkeypatch.setattr(measure_module, "count_flops", counting_flops)
    monkeypatch.setattr(measure_module, "benchmark_interleaved", counting_bench)
    again = tokenred.compare(["vit_tiny_patch16_224"], ["none", "tome:r=2"], store=store, **FAST)
    assert measured == []
    pd.testing.assert_frame_equal(first, again)
    # one more method: only it is measured, timed next to a fresh `none`
    more = tokenred.compare(["vit_tiny_patch16_224"], ["none", "tome:r=2", "random_drop"],
                            store=store, **FAST)
    assert measured == ["flops", ("timing", ["none", "random_drop"])]
    assert list(more["method"]) == ["none", "tome", "random_drop"]
    pd.testing.assert_frame_equal(more.iloc[:2], first)
    # a different timing protocol is a different measurement
    tokenred.compare(["vit_tiny_patch16_224"], ["none"], store=store, **{**FAST, "iters": 3})
    assert measured[-1] == ("timing", ["none"])


def test_sigkill_loses_nothing_stored_and_never_corrupts(tmp_path):
    path = tmp_path / "results.sqlite"
    script = textwrap.dedent(f"""
        import os, signal, tokenred
        from tokenred.store import ResultsStore
        store = ResultsStore({str(path)!r})
        def progress(msg):
            if len(store) >= 2:       # killed in the middle of the run, after two measurements
                os.kill(os.getpid(), signal.SIGKILL)
        tokenred.compare(["vit_tiny_patch16_224"], ["none", "tome:r=2", "random_drop"],
                         store=store, progress=progress, input_size=32, batch_size=2, warmup=0,
                         iters=2, rounds=1, backbone_kwargs={TINY!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    kept = conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    conn.close()
    assert kept == 2
    store = ResultsStore(str(path))
    df = tokenred.compare(["vit_tiny_patch16_224"], ["none", "tome:r=2", "random_drop"],
                          store=store, **FAST)
    assert df["images_per_s"].notna().all() and len(store) == 6


def _labeled(root):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    return root


def test_report_from_the_store_alone(tmp_path, capsys):
    run = tmp_path / "run"
    store = ResultsStore.in_run_dir(str(run))
    df = tokenred.compare(["vit_tiny_patch16_224"], ["none", "tome:r=2"], store=store,
                          data=str(_labeled(tmp_path / "data")), **FAST)
    store.close()
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    for name in ("results.md", "results.csv", "results.tex", "results.html",
                 "vit_tiny_patch16_224.png", "vit_tiny_patch16_224.svg"):
        assert f"wrote {run / name}" in out and (run / name).stat().st_size > 0
    regenerated = pd.read_csv(run / "results.csv")
    assert list(regenerated["method"]) == ["none", "tome"]
    np.testing.assert_allclose(regenerated["gflops"], df["gflops"])
    np.testing.assert_allclose(regenerated["top1"], df["top1"])
    tex = (run / "results.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"vit\_tiny\_patch16\_224" in tex
    assert r"\textbf{" in tex and r"\%" in tex
    md = (run / "results.md").read_text()
    assert "**" in md and "top-1 %" in md
    from tokenred.timing import keep_freed_memory
    assert f"allocator: {keep_freed_memory()}." in md          # how the timings were taken
    assert list(regenerated["allocator"].unique()) == [keep_freed_memory()]
    from tokenred.kernels import resolve_backend, scan_math
    math = ", ".join(f"{k} {v}" for k, v in scan_math("cpu").items())   # the scan's exponentials
    backend = resolve_backend(None, torch.device("cpu"))
    note = f"({math})" if backend == "torch" else f"(the torch scan here: {math})"
    assert list(regenerated["scan_math"].unique()) == [math]
    assert f"scan backend {backend} {note}" in md
    assert "<table>" in (run / "results.html").read_text()
    assert main(["report", str(run), "--format", "md,pdf"]) == 2
    assert "unknown report format" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "data")]) == 2
    assert "holds no results store" in capsys.readouterr().err


def test_same_command_resumes_in_the_same_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["compare", "--backbones", "vit_tiny_patch16_224", "--methods", "none",
            "--input-size", "32", "--batch-size", "2", "--warmup", "0", "--iters", "1",
            "--rounds", "1", "--no-progress"]
    assert main(argv) == 0
    runs = os.listdir(tmp_path / "reports")
    assert len(runs) == 1 and runs[0].startswith("run-")
    assert main(argv) == 0
    assert os.listdir(tmp_path / "reports") == runs
    store = ResultsStore.in_run_dir(str(tmp_path / "reports" / runs[0]))
    assert len(store) == 2 and len(store.runs()) == 2


def test_latex_escape_and_pareto_front():
    assert latex_escape("vit_s 50% #1 & {x}") == r"vit\_s 50\% \#1 \& \{x\}"
    assert latex_escape("1.5×") == r"1.5$\times$"
    xs, ys = [1, 2, 3, 4], [90, 80, 85, 70]
    assert pareto_front(xs, ys, x_larger_better=True) == [0, 2, 3]
    assert pareto_front(xs, ys, x_larger_better=False) == [0]


def test_table_from_store_lists_unsupported_methods(tmp_path):
    store = ResultsStore(":memory:")
    tokenred.compare(["vit_tiny_patch16_224"], ["none", "quartermap"], store=store, input_size=32,
                     batch_size=1, warmup=0, iters=1, rounds=1,
                     backbone_kwargs=dict(patch_size=8, embed_dim=48, depth=2, num_heads=3))
    df = table_from_store(store)
    assert list(df["method"]) == ["none"]
    assert df.attrs["skipped"][0]["method"] == "quartermap"
    assert "serves ['grid'] sites" in df.attrs["skipped"][0]["reason"]


def test_bold_marks_the_best_value_but_not_ties():
    from tokenred.compare import COLUMNS
    from tokenred.report import markdown_table

    base = {c: None for c in COLUMNS}
    rows = [dict(base, backbone="b", method="none", params="", n_params=1e6, gflops=4.0,
                 images_per_s=10.0, speedup=1.0, latency_median_ms=5.0, latency_iqr_ms=0.1,
                 top1=0.0, agreement=100.0, batch_size=1, input_size=8, dtype="float32",
                 device="cpu"),
            dict(base, backbone="b", method="tome", params="r=2", n_params=1e6, gflops=2.0,
                 images_per_s=15.0, speedup=1.5, latency_median_ms=3.0, latency_iqr_ms=0.1,
                 top1=0.0, agreement=90.0, batch_size=1, input_size=8, dtype="float32",
                 device="cpu")]
    table = markdown_table(pd.DataFrame(rows, columns=COLUMNS))
    tome = next(line for line in table.splitlines() if line.startswith("| tome"))
    none = next(line for line in table.splitlines() if line.startswith("| none"))
    assert "**2.000**" in tome and "**1.50×**" in tome and "**100.00**" in none
    assert "**0.00**" not in table          # equal top-1 everywhere: nothing to single out
