"""EViT, Top-K, ATS, PiToMe, K-Medoids (both variants) and DPC-KNN against the golden outputs of
their official implementations (``../shared/fixtures/vit_methods_mini.pt``): logits to 1e-4 and
every keep / merge decision exactly, read from the sources each site recorded."""
import pytest
import timm
import torch

import tokenred
from tokenred.sites import SiteQuantityError, scaled_locations

from conftest import shared_file

FIXTURE = "fixtures/vit_methods_mini.pt"


@pytest.fixture(scope="module")
def fx():
    return torch.load(shared_file(FIXTURE), weights_only=True)


def official_model(fx):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False,
                              **fx["official_kwargs"]).eval()
    model.load_state_dict(fx["state_dict"])
    return model


def run(fx, entry, method, where, captured=None, **params):
    model = official_model(fx)
    handle = tokenred.apply(model, method, where=where, **params)
    handle.reducer.trace_source = True
    if captured is not None:   # what each site handed the reducer, for the score checks
        original = handle.reducer.reduce_sequence

        def spy(tokens, ctx):
            captured.append({"cls_attention": ctx.cls_attention} if "cls_attention" in
                            handle.reducer.requires else {})
            return original(tokens, ctx)

        handle.reducer.reduce_sequence = spy
    with torch.no_grad():
        logits = model(entry["input"])
    return logits, handle


def orig_ids(source, count, start=1):
    """Original patch index of each token in rows start..start+count (-1: a fused token)."""
    rows = source[:, start:start + count, 1:]
    return torch.where(rows.sum(-1) > 1.5, torch.full_like(rows[..., 0], -1, dtype=torch.long),
                       rows.argmax(-1))


@pytest.mark.parametrize("method", ["evit", "topk"])
def test_evit_and_topk_match_official(fx, method):
    entry = fx["methods"][method]
    captured = []
    logits, handle = run(fx, entry, method, None, captured)     # default where: 1, 3, 4 at depth 6
    assert [s.block for s in handle.sites] == entry["config"]["drop_loc"]
    torch.testing.assert_close(logits, entry["logits"], atol=1e-4, rtol=1e-4)
    assert [65] + list(handle.state.tokens.values()) == [entry["tokens_per_block"][0]] + \
        [entry["tokens_per_block"][b] for b in entry["config"]["drop_loc"]]
    for red, seen in zip(entry["reductions"], captured, strict=True):
        scores = seen["cls_attention"].mean(1)[:, 1:]
        torch.testing.assert_close(scores, red["scores"], atol=1e-6, rtol=0)
        source = handle.state.site_sources[f"blocks.{red['block']}"]
        assert torch.equal(orig_ids(source, red["kept"]), red["kept_orig"])
        assert source.shape[1] == red["tokens_out"]
        if method == "evit" and red is entry["reductions"][0]:
            # the fused token, last, holds exactly the pruned patches
            for b in range(2):
                held = source[b, -1, 1:].nonzero()[:, 0]
                assert torch.equal(held, red["pruned_orig"][b].sort().values)


def test_pitome_matches_official(fx):
    entry = fx["methods"]["pitome"]
    logits, handle = run(fx, entry, "pitome", None, ratio=entry["config"]["ratio"])
    torch.testing.assert_close(logits, entry["logits"], atol=1e-4, rtol=1e-4)
    assert list(handle.state.tokens.values()) == entry["tokens_per_block"]
    assert torch.equal(handle.state.source.bool(), entry["source"].bool())
    assert torch.equal(handle.state.size, entry["final_size"].to(handle.state.size.dtype))
    assert torch.equal(handle.state.source.argmax(1), entry["final_assignment"])


@pytest.mark.parametrize("method", ["kmedoids", "kmedoids_weighted", "dpcknn"])
def test_clustering_methods_match_official(fx, method):
    entry = fx["methods"][method]
    where = entry["config"]["reduction_loc"]
    params = {"keep": entry["config"]["keep_rate"][0]}
    if method == "kmedoids":
        params["first_centers"] = [r["init_center"] for r in entry["reductions"]]
        params["iters"] = entry["config"]["cluster_iters"]
    if method == "dpcknn":
        params["k"] = entry["config"]["k_neighbors"]
    name = "dpc_knn" if method == "dpcknn" else method
    logits, handle = run(fx, entry, name, None, **params)
    assert [s.block for s in handle.sites] == where            # the default sites
    torch.testing.assert_close(logits, entry["logits"], atol=1e-4, rtol=1e-4)
    for red in entry["reductions"]:
        source = handle.state.site_sources[f"blocks.{red['block_input_of']}"]
        assert source.shape[1] == red["tokens_out"]
        # every original patch lands in the output token the official code put it in
        assert torch.equal(source[:, 1:, 1:].argmax(1), red["orig_patch_to_token"])
    if method == "dpcknn":
        assert torch.equal(handle.state.size[:, 1:, 0], entry["final_size"].to(torch.float32))


def test_ats_matches_the_official_single_image_runs(fx):
    entry = fx["methods"]["ats"]
    blocks = entry["config"]["ats_blocks"]
    logits, handle = run(fx, entry, "ats", None)               # default: ceil(6/4)=2 .. 5
    assert [s.block for s in handle.sites] == blocks
    # batched, every image gets exactly its own single-image result
    torch.testing.assert_close(logits, entry["single_image_logits"], atol=1e-4, rtol=1e-4)
    for b in range(2):
        for j, block in enumerate(blocks):
            kept = entry["single_image_kept_orig"][b][j]
            source = handle.state.site_sources[f"blocks.{block}"][b:b + 1]
            assert torch.equal(orig_ids(source, len(kept))[0], kept)
    # image 0 is never padded in the official batch either: its batch decisions agree
    for j, red in enumerate(entry["reductions"]):
        count = red["kept_count"][0]
        source = handle.state.site_sources[f"blocks.{red['block']}"][:1]
        assert torch.equal(orig_ids(source, count)[0], red["kept_orig"][0, :count])
    assert list(handle.state.tokens.values()) == [t for t in entry["tokens_per_block"][2:]]
    # alone, each image gives the same logits as in the batch
    model = handle.model
    with torch.no_grad():
        alone = torch.cat([model(entry["input"][b:b + 1]) for b in range(2)])
    torch.testing.assert_close(alone, logits, atol=1e-5, rtol=1e-5)


def test_depth_scaled_default_sites():
    assert scaled_locations(12) == [3, 6, 9] and scaled_locations(6) == [1, 3, 4]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=48, depth=12, num_heads=3).eval()
    for method, blocks in [("evit", [3, 6, 9]), ("topk", [3, 6, 9]), ("kmedoids", [3, 6, 9]),
                           ("dpc_knn", [3, 6, 9]), ("ats", list(range(3, 12))),
                           ("pitome", list(range(12)))]:
        with tokenred.apply(model, method) as handle:
            assert [s.block for s in handle.sites] == blocks, method


def test_methods_that_need_a_class_token_refuse_models_without_one():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=48, depth=4, num_heads=3, class_token=False,
                              global_pool="avg").eval()
    for method in ("evit", "topk", "ats"):
        with pytest.raises(SiteQuantityError, match="no class token"):
            tokenred.apply(model, method)
    # weighted K-Medoids reads the previous block's attention: block 0 has none
    with pytest.raises(SiteQuantityError, match="received_attention"):
        tokenred.apply(model, "kmedoids_weighted", where=[0, 2])
    # PiToMe and DPC-KNN run (PiToMe's merged sizes weight the average pool)
    x = torch.randn(2, 3, 32, 32)
    for method in ("pitome", "dpc_knn", "kmedoids"):
        with tokenred.apply(model, method), torch.no_grad():
            assert torch.isfinite(model(x)).all()


def test_parameters_are_validated():
    for method, params, message in [
            ("evit", {"keep": 0}, "keep"), ("evit", {"keep": 1.5}, "keep"),
            ("pitome", {"ratio": 0}, "ratio"), ("kmedoids", {"iters": -1}, "iters"),
            ("dpc_knn", {"k": 0}, "'k'"), ("ats", {"samples": 1}, "samples"),
            ("kmedoids", {"first_centers": [-1]}, "first_centers"),
            ("topk", {"fuse": True}, "fuse")]:
        with pytest.raises(tokenred.ParameterError, match=message):
            tokenred.get_method(method)(**params)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=48, depth=4, num_heads=3).eval()
    with pytest.raises(tokenred.ParameterError, match="one per block"):
        tokenred.apply(model, "kmedoids", where=[1, 2], first_centers=[1, 2, 3])


def test_ats_pads_per_image_and_hides_padding_from_attention_and_pooling(fx):
    entry = fx["methods"]["ats"]
    # the fixture's weights under average pooling: padding must count for nothing there too
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg",
                              fc_norm=False, **fx["official_kwargs"]).eval()
    model.load_state_dict(fx["state_dict"])
    x = entry["input"]
    with tokenred.apply(model, "ats") as handle, torch.no_grad():
        handle.reducer.trace_source = True
        batched = model(x)
        real = {name: (src.sum(-1) > 0).sum(-1).tolist()
                for name, src in handle.state.site_sources.items()}
        alone = torch.cat([model(x[b:b + 1]) for b in range(2)])
    assert real["blocks.3"] == [42, 38]                          # 41 / 37 kept + the class token
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
