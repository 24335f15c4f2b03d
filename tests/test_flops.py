import logging

import pytest
import torch
from helpers import tiny_vit
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import tokenred
from tokenred import flops as flops_mod


@pytest.fixture(scope="module")
def deit_s():
    return tokenred.create_backbone("deit_small_patch16_224")


@pytest.fixture(scope="module")
def vit_s():
    return tokenred.create_backbone("vit_small_patch16_224")


def _reference_macs(model, size):
    """torch.utils.flop_counter (2 x MACs; no norms). torch 2.13/2.14 miss CPU fused attention:
    map that op to the registered SDPA formula."""
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None and cpu_sdpa not in torch.utils.flop_counter.flop_registry:
        def cpu_sdpa_flop(q, k, v, *args, out_shape=None, **kwargs):
            return sdpa_flop_count(q, k, v)
        mapping[cpu_sdpa] = cpu_sdpa_flop
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2


def test_deit_small_matches_published(deit_s):
    result = tokenred.count_flops(deit_s, 224)
    assert result.gflops == pytest.approx(4.61, rel=0.005)
    assert result.uncounted == {}
    assert result.by_operator["scaled_dot_product_attention"] > 0


@pytest.mark.parametrize("r,published", [(13, 2.71), (16, 2.29)])
def test_vit_small_tome_matches_official_counts(vit_s, r, published):
    with tokenred.apply(vit_s, "tome", r=r):
        result = tokenred.count_flops(vit_s, 224)
    assert result.gflops == pytest.approx(published, rel=0.005)
    assert result.uncounted == {}


@pytest.mark.parametrize("method,params", [("none", {}), ("tome", {"r": 13}),
                                           ("random_drop", {"keep": 0.6})])
def test_cross_check_against_torch_flop_counter(deit_s, method, params, caplog):
    with tokenred.apply(deit_s, method, **params):
        with caplog.at_level(logging.WARNING):
            ours = tokenred.count_flops(deit_s, 224)
        reference = _reference_macs(deit_s, 224)
    assert not [r for r in caplog.records if "nsupported" in r.getMessage()]
    # fvcore's convention also counts LayerNorm (5 per element); torch's counter counts none
    assert ours.total - ours.by_operator["layer_norm"] == pytest.approx(reference, rel=1e-6)


def test_breakdown_and_input_forms():
    model = tiny_vit()
    result = tokenred.count_flops(model, (3, 32, 32))
    assert result.input_shape == (1, 3, 32, 32)
    assert result.by_module[""] == result.total
    assert sum(v for k, v in result.by_module.items() if k.count(".") == 1
               and k.startswith("blocks.")) < result.total
    assert tokenred.count_flops(model, (2, 3, 32, 32)).total == 2 * result.total
    assert tokenred.count_flops(model, (2, 3, 32, 32)).gflops == pytest.approx(result.gflops)
    with pytest.raises(ValueError, match="input_size"):
        tokenred.count_flops(model, (1, 2, 3, 4, 5))


def test_uncounted_ops_are_listed_and_handles_can_be_added(monkeypatch):
    class Spectral(nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x, dim=-1).real

    result = tokenred.count_flops(Spectral(), (1, 1, 4, 8))
    assert result.uncounted == {"aten::fft_rfft": 1}
    monkeypatch.setattr(flops_mod, "_EXTRA_HANDLES", {})
    tokenred.register_flop_handle("aten::fft_rfft", lambda inputs, outputs: 123)
    assert tokenred.count_flops(Spectral(), (1, 1, 4, 8)).total == 123
