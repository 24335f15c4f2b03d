"""One measurement mechanism (tokenred.measure): store keys whose protocol part is one JSON
object; run directories written before that form still report and resume without measuring;
the plan's step count is the number of progress messages measuring it reports."""
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

import tokenred
from tokenred.measure import KINDS, is_search_key
from tokenred.report import table_from_store
from tokenred.store import ResultsStore

from conftest import shared_file

measure_module = sys.modules["tokenred.measure"]
LEGACY = Path(__file__).parent / "data" / "legacy_run"
# the script that wrote the legacy run, for its settings
_spec = importlib.util.spec_from_file_location("legacy_run_make", LEGACY / "make.py")
legacy_make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(legacy_make)

VIT = "vit_tiny_patch16_224"


@pytest.fixture
def legacy_run(tmp_path):
    """A copy of the run directory tokenred wrote at 5ef22de, with its images as they were."""
    shutil.copytree(LEGACY / "run", tmp_path / "run")
    shutil.copytree(LEGACY / "images", tmp_path / "images")
    for path in (tmp_path / "images").rglob("*.png"):   # (checkouts give files their own mtime)
        os.utime(path, ns=(legacy_make.MTIME_NS, legacy_make.MTIME_NS))
    return tmp_path


@pytest.fixture
def counted(monkeypatch):
    """Every flops count, timing and evaluation the measurement kinds take."""
    calls = []
    for name in ("count_flops", "benchmark_interleaved", "evaluate"):
        real = getattr(measure_module, name)
        monkeypatch.setattr(measure_module, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    return calls


def _measured_columns(df: pd.DataFrame) -> pd.DataFrame:
    return df[["backbone", "method", "params", "gflops", "tokens_out", "images_per_s", "speedup",
               "top1", "delta_top1", "agreement", "kl", "eval_images"]].reset_index(drop=True)


def test_an_old_run_directory_reports_as_it_did(legacy_run):
    then = pd.read_csv(LEGACY / "run" / "results.csv")     # as `tokenred report` wrote it then
    now = table_from_store(ResultsStore(str(legacy_run / "run" / "results.sqlite")))
    assert list(now["method"]) == list(then["method"]) == ["none", "tome", "random_drop",
                                                           "random_drop"]
    pd.testing.assert_frame_equal(_measured_columns(now).replace("", float("nan")),
                                  _measured_columns(then), check_dtype=False)
    assert now.attrs["skipped"][0]["method"] == "quartermap"


def test_an_old_run_directory_resumes_without_measuring(legacy_run, counted, monkeypatch):
    """In a process that leaves the C library's allocator as it is (as every timing stored
    before tokenred kept freed memory), nothing is measured again."""
    monkeypatch.setattr(measure_module, "freed_memory_kept", lambda: False)
    run, images = str(legacy_run / "run"), str(legacy_run / "images")
    methods = ["none", "tome:r=2", "quartermap", "random_drop"]
    df = tokenred.compare([VIT], methods, data=images, store=run, **legacy_make.SETTINGS)
    assert counted == []
    assert list(df["method"]) == ["none", "tome", "random_drop"]
    assert df.attrs["skipped"][0]["method"] == "quartermap"
    pd.testing.assert_frame_equal(
        _measured_columns(df),
        _measured_columns(table_from_store(ResultsStore.in_run_dir(run)).iloc[:3]),
        check_dtype=False)
    matched = tokenred.compare([VIT], ["none", "tome", "random_drop"], match="keep=0.7",
                               data=images, store=run, **legacy_make.SETTINGS)
    assert counted == []                       # the stored solutions, their stored measurements
    assert list(matched["params"]) == ["", "keep=0.7"]
    assert list(matched["match"].fillna("")) == ["", "keep=0.7"]
    assert [g["method"] for g in matched.attrs["skipped"]] == ["tome @ keep=0.7"]
    # something new is measured (next to a fresh none) and stored in today's key form
    before = {k for k, _ in ResultsStore.in_run_dir(run).items()}
    tokenred.compare([VIT], ["none", "random_drop:keep=0.5"], data=images, store=run,
                     **legacy_make.SETTINGS)
    assert counted == ["count_flops", "benchmark_interleaved", "evaluate"]
    added = [k for k, _ in ResultsStore.in_run_dir(run).items() if k not in before]
    assert {(k.method, k.kind) for k in added} == {
        ("random_drop:keep=0.5", "flops"), ("random_drop:keep=0.5", "timing"),
        ("random_drop:keep=0.5", "eval")}
    for key in added:
        doc = json.loads(key.variant)            # one JSON object, not documents run together
        assert doc["weights"] == {"kwargs": legacy_make.TINY, "pretrained": False, "seed": 0}
        if key.kind == "timing":
            assert doc["protocol"] == {"warmup": 1, "iters": 2, "rounds": 1, "threads": None,
                                       "scan_backend": "torch", "compile": False}
        if key.kind == "eval":
            assert set(doc["protocol"]) == {"data", "subset", "transform"}
        if key.kind == "flops":
            assert "protocol" not in doc
        assert not is_search_key(key)


def test_an_old_run_directory_retimes_under_kept_freed_memory(legacy_run, counted, monkeypatch):
    """Where timing keeps freed memory (the default), the old run's timings were taken under
    other allocator settings: only they are measured again (FLOPs and accuracy are reused), under
    a key that says so; the old ones stay in the store."""
    monkeypatch.setattr(measure_module, "freed_memory_kept", lambda: True)
    run, images = str(legacy_run / "run"), str(legacy_run / "images")
    before = {k for k, _ in ResultsStore.in_run_dir(run).items()}
    df = tokenred.compare([VIT], ["none", "tome:r=2", "random_drop"], data=images, store=run,
                          **legacy_make.SETTINGS)
    assert counted == ["benchmark_interleaved"]
    stored = _measured_columns(table_from_store(ResultsStore.in_run_dir(run)).iloc[:3])
    pd.testing.assert_frame_equal(_measured_columns(df).drop(columns=["images_per_s", "speedup"]),
                                  stored.drop(columns=["images_per_s", "speedup"]),
                                  check_dtype=False)
    added = [k for k, _ in ResultsStore.in_run_dir(run).items() if k not in before]
    assert {(k.method, k.kind) for k in added} == {("none", "timing"), ("tome:r=2", "timing"),
                                                   ("random_drop", "timing")}
    assert all(json.loads(k.variant)["protocol"]["freed_memory_kept"] is True for k in added)
    assert before <= {k for k, _ in ResultsStore.in_run_dir(run).items()}


def test_plan_steps_equal_progress_messages(legacy_run):
    messages, plans = [], []
    store = ResultsStore(":memory:")
    kw = dict(legacy_make.SETTINGS, data=str(legacy_run / "images"), store=store,
              progress=messages.append, on_plan=plans.append)
    tokenred.compare([VIT, "deit_tiny_patch16_224"], ["none", "tome:r=2", "random_drop"], **kw)
    assert len(plans) == 1 and plans[0].steps == len(messages) > 0
    assert [b.needed for b in plans[0].backbones] == [True, True]
    # a resumed run plans one "all stored" step per backbone, and reports exactly that
    messages.clear()
    tokenred.compare([VIT, "deit_tiny_patch16_224"], ["none", "tome:r=2", "random_drop"], **kw)
    assert plans[1].steps == len(messages) == 2
    assert not any(b.needed for b in plans[1].backbones)
    # only the new method's kinds (next to the baseline) are planned
    messages.clear()
    tokenred.compare([VIT], ["none", "tome:r=3"], **kw)
    share = plans[2].backbones[0]
    assert share.todo == {"none": [], "tome:r=3": list(KINDS)}
    assert share.to_prepare() == ["none", "tome:r=3"]
    assert plans[2].steps == len(messages)


def test_an_old_search_directory_resumes_without_evaluating(tmp_path, counted):
    """The committed ToMe search on deit_tiny_pbc64 (its store written before the key form
    changed, and before searches had a validation split) re-runs from the full PBC test split
    without evaluating anything."""
    import tarfile

    tarball = shared_file("data/pbc-blood64-test.tar.gz")
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path / "data", filter="data")
    run = tmp_path / "search"
    source = Path(__file__).parent.parent / "reports" / "search" / "tome_deit_tiny_pbc64"
    run.mkdir()
    shutil.copy(source / "results.sqlite", run / "results.sqlite")
    result = tokenred.search("deit_tiny_pbc64", "tome", str(tmp_path / "data" / "test"),
                             max_drop=0.9, rates="r=4,8", validation=0, store=str(run))
    assert counted == []
    recommended = (source / "search.md").read_text()
    assert f"`{result.recommended}`" in recommended
    assert result.held_out["images"] == result.splits["held_out"]["images"] > 0


def test_a_change_of_scan_backend_retimes_ssms_only(tmp_path, counted):
    """The scan backend decides an SSM's timing, not a ViT's: after the default changes (as
    auto's did, torch -> cpp on CPU), a resumed comparison times VMamba again and reuses the
    ViT's timing."""
    from tokenred.kernels import set_default_backend

    backbones = ["vit_tiny_patch16_224", "vmamba_tiny_s1l8"]
    kwargs = {"vit_tiny_patch16_224": dict(patch_size=8, embed_dim=48, depth=2, num_heads=3),
              "vmamba_tiny_s1l8": dict(depths=(1, 1, 2, 1), dims=16)}
    settings = dict(input_size=64, batch_size=1, warmup=0, iters=1, rounds=1,
                    backbone_kwargs=kwargs, store=str(tmp_path))
    previous = set_default_backend("reference")
    try:
        first = tokenred.compare(backbones, ["none"], **settings)
        assert counted.count("benchmark_interleaved") == 2
        del counted[:]
        set_default_backend("torch")
        again = tokenred.compare(backbones, ["none"], **settings)
    finally:
        set_default_backend(previous)
    assert counted == ["benchmark_interleaved"]            # VMamba's, under its new backend
    vit = lambda df: df[df["backbone"] == "vit_tiny_patch16_224"]["images_per_s"].tolist()  # noqa: E731
    assert vit(again) == vit(first)                         # the ViT's stored timing, reused
    # each row names the environment it was timed in
    assert dict(zip(again["backbone"], again["scan_backend"])) == {
        "vit_tiny_patch16_224": "reference", "vmamba_tiny_s1l8": "torch"}
