import pytest
import timm
import torch
from conftest import shared_file
from helpers import tiny_vit
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenred
from tokenred.methods.tome import bipartite_soft_matching, merge_wavg, parse_r


@pytest.fixture(scope="module")
def tome_fixture():
    return torch.load(shared_file("fixtures/tome_vit_mini.pt"), weights_only=True)


def _fixture_model(fx):
    model = timm.create_model(fx["timm_create_model"]["model_name"], pretrained=False,
                              **fx["official_kwargs"]).eval()
    model.load_state_dict(fx["state_dict"], strict=True)
    return model


def test_reproduces_official_tome_fixture(tome_fixture):
    fx = tome_fixture
    model = _fixture_model(fx)
    outputs = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outputs.append(o)) for blk in model.blocks]
    with torch.no_grad(), tokenred.apply(model, "tome", r=fx["r"], prop_attn=fx["prop_attn"],
                                         trace_source=fx["trace_source"]) as handle:
        logits = model(fx["input"])
        size, source = handle.state.size, handle.state.source
        tokens = list(handle.state.tokens.values())
    for h in hooks:
        h.remove()
    torch.testing.assert_close(logits, fx["logits"], atol=1e-4, rtol=1e-4)
    assert torch.equal(size, fx["final_size"])
    assert torch.equal(source, fx["source"])
    assert tokens == fx["tokens_per_block"]
    for ours, theirs in zip(outputs, fx["block_outputs"], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_r0_matches_official_unmerged_logits(tome_fixture):
    fx = tome_fixture
    model = _fixture_model(fx)
    with torch.no_grad(), tokenred.apply(model, "tome", r=0):
        logits = model(fx["input"])
    torch.testing.assert_close(logits, fx["logits_r0"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, fx["logits_timm_unpatched"], atol=1e-5, rtol=0)


def test_parse_r_forms():
    assert parse_r(4, 6) == [6, 6, 6, 6]
    assert parse_r(3, (8, -1.0)) == [16, 8, 0]
    assert parse_r(5, (10, 0.5)) == [5, 7, 10, 12, 15]
    assert parse_r(4, [3, 2]) == [3, 2, 0, 0]
    with pytest.raises(tokenred.ParameterError, match="only 2 site"):
        parse_r(2, [1, 2, 3])


@pytest.mark.parametrize("bad", [-1, 1.5, "x", (3,), (3, 2.0), [1, -2], True])
def test_bad_r_is_a_clear_error(bad):
    with pytest.raises(tokenred.ParameterError, match="'r'"):
        tokenred.get_method("tome")(r=bad)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(2, 40), r=st.integers(0, 30), protected=st.integers(0, 5),
       seed=st.integers(0, 2**16))
def test_matching_invariants(T, r, protected, seed):
    protected = min(protected, T)
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(2, T, 8, generator=g)
    x = torch.randn(2, T, 5, generator=g)
    merge, unmerge = bipartite_soft_matching(metric, r, protected)
    r_eff = max(0, min(r, (T - protected) // 2))
    y, size = merge_wavg(merge, x, None)
    assert y.shape == (2, T - r_eff, 5)
    assert torch.all(size.sum(1) == T)
    # protected tokens pass through untouched and in order, never absorbing anything
    torch.testing.assert_close(y[:, :protected], x[:, :protected])
    assert torch.all(size[:, :protected] == 1)
    # unmerge(merge(x)) gives every original position the value of the token it went into
    source = merge(torch.eye(T).expand(2, T, T), mode="amax")
    back = unmerge(y)
    assert back.shape == x.shape
    expected = torch.einsum("btn,btc->bnc", source, y)  # each original token's final token
    torch.testing.assert_close(back, expected)


def test_distillation_and_register_tokens_are_protected():
    for overrides, prefix in (({"reg_tokens": 4}, 5), ({"class_token": False, "global_pool": "avg",
                                                        "reg_tokens": 2}, 2)):
        model = tiny_vit(**overrides)
        assert model.num_prefix_tokens == prefix
        with torch.no_grad(), tokenred.apply(model, "tome", r=3, trace_source=True) as h:
            model(torch.randn(2, 3, 32, 32))
        source = h.state.source
        for i in range(prefix):  # each prefix token is alone, at its own position
            assert torch.all(source[:, i, i] == 1) and torch.all(source[:, i].sum(-1) == 1)
    distilled = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32,
                                  patch_size=8, embed_dim=48, depth=3, num_heads=3).eval()
    with torch.no_grad(), tokenred.apply(distilled, "tome", r=4, trace_source=True) as h:
        distilled(torch.randn(2, 3, 32, 32))
    assert torch.all(h.state.source[:, 0, 0] == 1) and torch.all(h.state.source[:, 1, 1] == 1)
    assert torch.all(h.state.size[:, :2] == 1)


def test_average_pooling_is_weighted_by_size():
    model = tiny_vit(class_token=False, global_pool="avg")
    x = torch.randn(2, 3, 32, 32)
    captured = {}
    model.fc_norm.register_forward_hook(lambda m, i, o: captured.setdefault("pooled", i[0]))
    with torch.no_grad(), tokenred.apply(model, "tome", r=4, trace_source=True) as h:
        model(x)
        feats = model.forward_features(x)
    # the size-weighted mean equals the plain mean over the 16 original patches, each taking
    # the value of the token it was merged into
    per_patch = torch.einsum("btn,btc->bnc", h.state.source, feats)
    torch.testing.assert_close(captured["pooled"], per_patch.mean(1))


def test_merges_between_attention_and_mlp_and_reduces_flops():
    model = tiny_vit()
    plain = tokenred.count_flops(model, 32).total
    with tokenred.apply(model, "tome", r=2) as h:
        reduced = tokenred.count_flops(model, 32).total
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
    assert reduced < plain
    assert list(h.state.tokens.values()) == [15, 13, 11, 9]
