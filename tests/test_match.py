"""Matched budgets: each method's rate solved for a GFLOP, speed or keep target, the most tokens
that stay within it; targets a method cannot meet are gaps; solutions are stored and reused."""
import copy

import pytest

import tokenred
from tokenred.cli import main
from tokenred.match import MatchError, Rate, parse_target, solve
from tokenred.store import ResultsStore

from helpers import tiny_vit

KW = dict(backbone_kwargs=dict(img_size=32, patch_size=4, embed_dim=48, depth=6, num_heads=3),
          warmup=0, iters=1, rounds=1, batch_size=1)


def gflops(model, method, **params):
    m = copy.deepcopy(model)
    tokenred.apply(m, method, **params)
    return tokenred.count_flops(m, 32).gflops


@pytest.fixture(scope="module")
def vit():
    return tiny_vit(img_size=32, patch_size=4, depth=6)


@pytest.mark.parametrize("method,rate", [("evit", "keep"), ("kmedoids", "keep"),
                                         ("pitome", "ratio"), ("tome", "r")])
def test_gflops_target_gives_the_most_tokens_within_budget(vit, method, rate):
    full = gflops(vit, "none")
    target = 0.7 * full
    solved = solve(vit, method, {}, tokenred.get_method(method).rate, ("gflops", target), 32)
    value = solved.params[rate]
    assert solved.achieved <= target
    assert solved.achieved == pytest.approx(gflops(vit, method, **{rate: value}))
    # one step towards more tokens leaves the budget: the solution is the largest that fits
    step = {"r": -1}.get(rate, 2e-3)
    more = value + step
    if rate != "r" and more <= 1:
        assert gflops(vit, method, **{rate: min(more, 0.999)}) > target or value >= 0.998
    if rate == "r":
        assert gflops(vit, method, r=value - 1) > target


def test_targets_that_cannot_be_met_are_gaps(vit):
    floor = solve(vit, "evit", {}, tokenred.get_method("evit").rate, ("gflops", 1e-6), 32)
    assert floor.params is None and "cannot reach" in floor.reason
    none = solve(vit, "quartermap", {}, tokenred.get_method("quartermap").rate, ("gflops", 1.0), 32)
    assert none.params is None and "no rate parameter" in none.reason
    ats = solve(vit, "ats", {}, tokenred.get_method("ats").rate, ("keep", 0.5), 32)
    assert ats.params is None and "not a share" in ats.reason
    assert solve(vit, "topk", {"where": [1, 2]}, tokenred.get_method("topk").rate, ("keep", 0.5),
                 32).params == {"where": [1, 2], "keep": 0.5}


def test_speed_target_bisects_on_measured_speedup(vit):
    # a stand-in timer: speedup falls with the share of tokens kept
    def time_pair(model):
        keep = model.__dict__["_tokenred_handle"].reducer.params["keep"]
        return 2.0 - keep
    solved = solve(vit, "topk", {}, Rate("keep", 0.01, 1.0, share=True), ("speedup", 1.5), 32,
                   time_pair)
    assert abs(solved.achieved - 1.5) <= 0.03 * 1.5 and solved.achieved >= 1.5


def test_compare_at_matched_gflops_and_sweep(tmp_path):
    store = ResultsStore(str(tmp_path / "results.sqlite"))
    full = tokenred.compare(["vit_tiny_patch16_224"], ["none"], input_size=32, **KW)["gflops"][0]
    targets = [f"gflops={0.8 * full:.4f}", f"gflops={0.6 * full:.4f}"]
    df = tokenred.compare(["vit_tiny_patch16_224"], ["none", "evit", "tome", "quartermap"],
                          input_size=32, match=targets, store=store, **KW)
    rows = df[df["method"] != "none"]
    assert sorted(rows["match"]) == sorted([t for t in targets for _ in range(2)])
    for _, row in rows.iterrows():
        assert row["gflops"] <= float(row["match"].split("=")[1]) + 1e-9
        assert row["gflops"] < full and row["params"]   # the solved value is shown
    assert any("quartermap" in g["method"] for g in df.attrs["skipped"])
    # a resumed run finds the solutions in the store and searches nothing again
    import tokenred.match as match_module

    original = match_module.solve
    match_module.solve = lambda *a, **k: pytest.fail("searched again")
    try:
        again = tokenred.compare(["vit_tiny_patch16_224"], ["none", "evit", "tome", "quartermap"],
                                 input_size=32, match=targets, store=store, **KW)
    finally:
        match_module.solve = original
    assert again[["method", "params", "gflops"]].equals(df[["method", "params", "gflops"]])
    # keep=K: no search, the shared share
    keep = tokenred.compare(["vit_tiny_patch16_224"], ["none", "topk", "random_drop"],
                            input_size=32, match={"keep": 0.5}, **KW)
    assert sorted(keep["params"].tolist()) == ["", "keep=0.5", "keep=0.5"]


def test_match_errors():
    for bad in ("gflops", "flops=3", "gflops=x", "keep=1.5", "speedup=-1"):
        with pytest.raises(MatchError):
            parse_target(bad)
    assert main(["compare", "--match", "gflops", "--no-progress"]) == 2
    assert main(["compare", "--match", "gflops=1", "--sweep", "gflops=1,2", "--no-progress"]) == 2
