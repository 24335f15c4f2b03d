"""tokenred.search on the bundled reference models and the bundled PBC sample: disjoint splits,
the front is a Pareto front, budgets pick what they promise, the store makes a re-run measure
nothing, the recommended spec runs as is, and the CLI's errors are one line."""
import pandas as pd
import pytest
import torch

import tokenred
from tokenred.cli import main
from tokenred.compare import MethodSpec
from tokenred.evaluate import scan_folder
from tokenred.reference import PBC_SAMPLE_DIR

import importlib

search_module = importlib.import_module("tokenred.search")


@pytest.fixture(scope="module")
def quartermap_search(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    result = tokenred.search("vmamba_tiny_pbc64", "quartermap", PBC_SAMPLE_DIR,
                             budget="gflops=0.0765", candidates="stage:0", calibration=64,
                             store=str(out))
    return result, out


def test_splits_are_disjoint_and_class_balanced():
    images = scan_folder(PBC_SAMPLE_DIR)
    calibration, validation, held = search_module.split_images(images, 80, 160)
    assert len(calibration.paths) == 80 and len(validation.paths) == 160
    assert len(held.paths) == len(images.paths) - 240
    assert not set(calibration.paths) & set(held.paths)
    assert not set(validation.paths) & (set(calibration.paths) | set(held.paths))
    for split in (calibration, validation):
        counts = pd.Series(split.labels).value_counts()
        assert counts.max() - counts.min() <= 1            # 8 classes, 10 (20) each
    assert calibration.paths == search_module.split_images(images, 80, 0)[0].paths
    assert search_module.split_images(images, 80, 0)[1] is None
    default = search_module.split_images(images, 80, None)[1]     # half of what is left
    assert len(default.paths) == (800 - 80) // 2
    with pytest.raises(ValueError, match="calibration=800"):
        search_module.split_images(images, 800)
    with pytest.raises(ValueError, match="validation=720: give 0 .. 719"):
        search_module.split_images(images, 80, 720)


def test_front_is_pareto_and_the_budget_is_met(quartermap_search):
    result, _ = quartermap_search
    points, front = result.points, result.front
    assert set(result.sensitivity["block"]) == {0, 1}          # stage 0's two blocks
    assert "none" in set(points["spec"]) and len(points) >= 4    # none, each site, both
    for _, p in front.iterrows():                                  # nothing beats a front point
        better = points[(points["gflops"] < p["gflops"] - 1e-12)
                        & (points["delta_top1"] > p["delta_top1"] + 1e-12)]
        assert better.empty
    assert list(front["gflops"]) == sorted(front["gflops"])
    shortlist = result.shortlist     # the front, and points within 1 calibration point of it
    assert set(front["spec"]) <= set(shortlist["spec"])
    for _, p in shortlist.iterrows():
        better = points[(points["gflops"] <= p["gflops"])
                        & (points["delta_top1"] > p["delta_top1"] + 1.0)]
        assert better.empty
    feasible = shortlist[shortlist["gflops"] <= 0.0765]
    if feasible.empty:
        assert result.recommended is None
    else:   # chosen on the validation split, among the shortlist
        best = feasible.sort_values(["val_delta_top1", "gflops"], ascending=[False, True]).iloc[0]
        assert result.recommended == best["spec"]
        assert result.held_out["images"] == 800 - 64 - 368
    splits = result.splits
    assert splits["validation"]["images"] == (800 - 64) // 2
    assert len({splits[s]["digest"] for s in ("calibration", "validation", "held_out")}) == 3
    none = shortlist[shortlist["spec"] == "none"]
    assert none.empty or (none["val_delta_top1"].iloc[0] == 0 and none["val_kl"].iloc[0] == 0)


def test_a_tolerant_front_keeps_points_close_below_the_front():
    points = pd.DataFrame({"gflops": [1.0, 2.0, 3.0, 4.0], "delta_top1": [-5.0, -0.5, 0.0, -0.4],
                           "spec": list("abcd")})
    assert list(search_module.pareto_front(points, "delta_top1")["spec"]) == ["a", "b", "c"]
    widened = search_module.pareto_front(points, "delta_top1", tolerance=1.0)
    assert list(widened["spec"]) == ["a", "b", "c", "d"]       # d: 0.4 below c, within 1
    assert list(search_module.pareto_front(points, "delta_top1", tolerance=0.3)["spec"]) == \
        ["a", "b", "c"]


def test_a_rerun_measures_nothing(quartermap_search, monkeypatch):
    _, out = quartermap_search
    calls = []
    measure_module = importlib.import_module("tokenred.measure")
    real = measure_module.evaluate
    monkeypatch.setattr(measure_module, "evaluate",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    again = tokenred.search("vmamba_tiny_pbc64", "quartermap", PBC_SAMPLE_DIR,
                            budget="gflops=0.0765", candidates="stage:0", calibration=64,
                            store=str(out))
    assert calls == []
    assert again.recommended == quartermap_search[0].recommended


def test_rates_max_drop_and_the_spec_runs_as_is(tmp_path):
    result = tokenred.search("deit_tiny_pbc64", "evit", PBC_SAMPLE_DIR, max_drop=2.0,
                             rates="keep=0.5,0.8", candidates="blocks:1-3", calibration=48,
                             store=str(tmp_path / "run"))
    assert set(result.points["rate"].dropna()) == {0.5, 0.8}
    ok = result.shortlist[result.shortlist["val_delta_top1"] >= -2.0]   # the floor, on validation
    assert result.recommended == ok.sort_values("gflops").iloc[0]["spec"]
    if result.recommended != "none":
        spec = MethodSpec.parse(result.recommended)             # compare --methods takes it
        assert spec.name == "evit" and "where" in spec.params
        model = tokenred.create_backbone("deit_tiny_pbc64", pretrained=True).eval()
        with tokenred.apply(model, result.recommended), torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 8)
    md = search_module.markdown(result, "deit_tiny_pbc64", "evit")
    assert "Pareto front" in md and "held out" in md


@pytest.mark.parametrize("argv,message", [
    (["--budget", "flops=3"], "budget='flops=3'"),
    (["--budget", "gflops=3", "--max-drop", "1"], "exactly one of budget"),
    ([], "exactly one of budget"),
    (["--budget", "gflops=3", "--method", "quartermap:where=stage:0"], "search chooses where="),
    (["--budget", "gflops=3", "--validation", "600"], "validation=600: give 0 .. 543"),
])
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    base = ["search", "--backbone", "vmamba_tiny_pbc64", "--data", PBC_SAMPLE_DIR,
            "--out", str(tmp_path / "run")]
    if "--method" not in argv:
        base += ["--method", "quartermap"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_writes_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--backbone", "vmamba_tiny_pbc64", "--method", "quartermap",
                 "--data", PBC_SAMPLE_DIR, "--max-drop", "100", "--candidates", "blocks:0",
                 "--calibration", "32", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "Recommended: `quartermap:where=blocks:0`" in text
    for name in ("search.md", "front.csv", "points.csv", "sensitivity.csv", "search.png"):
        assert (out / name).stat().st_size > 0


def test_integer_rates_survive_the_round_trip_through_the_front(tmp_path):
    # ToMe's r is an integer: points read back from the DataFrame (4.0, NaN for none) must map to
    # the same specs, or the local search and the held-out step would measure phantoms
    result = tokenred.search("deit_tiny_pbc64", "tome", PBC_SAMPLE_DIR, budget="gflops=1.0",
                             rates="r=2,4", candidates="blocks:1-2", calibration=32,
                             store=str(tmp_path / "run"))
    specs = set(result.points["spec"])
    assert all(".0" not in s for s in specs), specs
    assert {"tome:r=2,where=blocks:1", "tome:r=4,where=blocks:1/2"} <= specs
