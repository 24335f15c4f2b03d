import pytest
import timm
import torch
from helpers import tiny_vit
from torch import nn

import tokenred
from tokenred import Reducer
from tokenred.sites import SiteSelectionError, UnsupportedModelError


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _instance_attrs(model):
    return {(name, key) for name, m in model.named_modules() for key in m.__dict__
            if key in ("forward", "pool")}


@pytest.mark.parametrize("method", ["none", "tome", "random_drop"])
def test_remove_restores_model_exactly(method):
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    before_state = _snapshot(model)
    before_attrs = _instance_attrs(model)
    before_hooks = len(model.patch_embed._forward_pre_hooks)
    with torch.no_grad():
        expected = model(x)
        handle = tokenred.apply(model, method, r=2) if method != "none" else tokenred.apply(model, "none")
        model(x)
        assert model.state_dict().keys() == before_state.keys()
        handle.remove()
        handle.remove()  # idempotent
        after = model(x)
    assert torch.equal(after, expected)
    assert _instance_attrs(model) == before_attrs
    assert len(model.patch_embed._forward_pre_hooks) == before_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_state[k])


def test_none_is_bit_identical_on_timm_variants():
    variants = [
        timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2),
        timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2),
        tiny_vit(reg_tokens=4, init_values=1e-2, qk_norm=True),
        tiny_vit(class_token=False, global_pool="avg"),
    ]
    x = torch.randn(2, 3, 32, 32)
    for model in variants:
        model.eval()
        with torch.no_grad():
            expected = model(x)
            with tokenred.apply(model, "none"):
                got = model(x)
        assert torch.equal(got, expected), type(model).__name__


def test_unfused_attention_path_matches_timm():
    model = tiny_vit()
    for blk in model.blocks:
        blk.attn.fused_attn = False
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        with tokenred.apply(model, "none"):
            assert torch.equal(model(x), expected)
        with tokenred.apply(model, "tome", r=2):
            unfused = model(x)
        for blk in model.blocks:
            blk.attn.fused_attn = True
        with tokenred.apply(model, "tome", r=2):
            fused = model(x)
    torch.testing.assert_close(unfused, fused, atol=1e-5, rtol=1e-5)


def test_where_selectors():
    model = tiny_vit(depth=6)
    blocks = lambda h: [s.block for s in h.sites]  # noqa: E731
    cases = {None: [0, 1, 2, 3, 4, 5], 0: list(range(6)), range(0, 1): list(range(6)),
             (1, 3): [1, 3], "blocks:2-4": [2, 3, 4], "blocks:0,5": [0, 5], "stage:0": list(range(6)),
             "blocks.1*": [1]}
    for where, expected in cases.items():
        with tokenred.apply(model, "tome", where=where, r=1) as h:
            assert blocks(h) == expected, where
    with tokenred.apply(model, "tome", where=lambda s: s.block % 2 == 0, r=1) as h:
        assert blocks(h) == [0, 2, 4]
    with tokenred.apply(model, "random_drop") as h:  # its documented default
        assert blocks(h) == [1, 3, 4]


@pytest.mark.parametrize("where,match", [
    (7, "stage index \\[7\\] does not exist"), ([9], "block index \\[9\\]"),
    ("nothing*", "selects no site"), (1.5, "not a selector"), ("blocks:a", "could not read"),
])
def test_bad_where_is_a_clear_error(where, match):
    with pytest.raises(SiteSelectionError, match=match):
        tokenred.apply(tiny_vit(), "tome", where=where)


def test_only_one_method_at_a_time():
    model = tiny_vit()
    with tokenred.apply(model, "tome", r=1):
        with pytest.raises(RuntimeError, match="already has 'tome' installed"):
            tokenred.apply(model, "random_drop")
    tokenred.apply(model, "random_drop").remove()


def test_method_on_sites_it_cannot_serve():
    class GridOnly(Reducer):
        name = "grid_only_test"
        kinds = frozenset({"grid"})

    with pytest.raises(ValueError, match="serves \\['grid'\\] sites but VisionTransformer only has "
                                         "\\['sequence'\\]"):
        tokenred.apply(tiny_vit(), GridOnly())


def test_unsupported_model_is_a_clear_error():
    with pytest.raises(UnsupportedModelError, match="no site adapter for .*Sequential"):
        tokenred.apply(nn.Sequential(nn.Linear(2, 2)), "none")


def test_attention_mask_with_reduction_is_refused():
    model = tiny_vit()
    with tokenred.apply(model, "tome", r=1), pytest.raises(NotImplementedError, match="masks"):
        model.forward_features(torch.randn(1, 3, 32, 32), attn_mask=torch.zeros(17, 17))


def test_parameter_errors_name_the_parameter():
    with pytest.raises(tokenred.ParameterError, match="random_drop: parameter 'keep' got 1.5; "
                                                      "allowed: a number in \\(0, 1\\]"):
        tokenred.apply(tiny_vit(), "random_drop", keep=1.5)
    with pytest.raises(tokenred.ParameterError,
                       match="unknown parameter\\(s\\) rr; tome takes: prop_attn, r, random_dst, "
                             "ratio, seed, sx, sy, trace_source"):
        tokenred.apply(tiny_vit(), "tome", rr=3)


def test_proportional_attention_bias_only_after_first_merge():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with tokenred.apply(model, "tome", r=2, prop_attn=True):
            with_bias = model(x)
        with tokenred.apply(model, "tome", r=2, prop_attn=False):
            without = model(x)
    assert not torch.allclose(with_bias, without)


def test_copying_an_installed_model_is_refused():
    import copy
    import io

    model = tiny_vit()
    with tokenred.apply(model, "tome", r=1):
        with pytest.raises(RuntimeError, match="copy it first and apply to the copy"):
            copy.deepcopy(model)
        torch.save(model.state_dict(), io.BytesIO())
    copy.deepcopy(model)
