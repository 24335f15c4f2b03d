"""The fused CPU inference kernels outside the scan (``tokenred.kernels.fused``): the MLP's fc1 +
GELU as one oneDNN call equals timm's MLP, and steps aside wherever gradients, traces, compiled
graphs or FLOP counters must see the individual ops."""
import pytest
import torch
from timm.layers import Mlp as TimmMlp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import tokenred
from tokenred.kernels import fused
from tokenred.layers import mlp as mlp_layer
from tokenred.layers.mlp import Mlp

needs_onednn = pytest.mark.skipif(not fused._onednn_linear_available(),
                                  reason="this PyTorch build has no oneDNN linear")


def pair(act=nn.GELU, **kw):
    torch.manual_seed(0)
    ours = Mlp(24, 96, act_layer=act, **kw).eval()
    theirs = TimmMlp(24, 96, act_layer=act, **kw).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def spy(monkeypatch) -> list:
    calls = []
    real = mlp_layer.linear_gelu
    monkeypatch.setattr(mlp_layer, "linear_gelu", lambda *a: calls.append(a[-1]) or real(*a))
    return calls


@needs_onednn
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 9, 24)])
def test_fused_mlp_equals_timms(approximate, shape, monkeypatch):
    ours, theirs = pair(act=lambda: nn.GELU(approximate=approximate))
    calls = spy(monkeypatch)
    x = torch.randn(*shape)
    with torch.inference_mode():
        got, want = ours(x), theirs(x)
    assert calls == [approximate]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_fused_mlp_steps_aside_where_the_ops_must_be_seen(monkeypatch):
    ours, theirs = pair()
    calls = spy(monkeypatch)
    x = torch.randn(3, 24)
    ours(x).sum().backward()                   # a gradient is needed: timm's forward, and it flows
    assert calls == [] and ours.fc1.weight.grad is not None
    with torch.no_grad():
        ours(x)                                # no gradient needed: fused
    assert calls == ["none"]
    calls.clear()
    with torch.no_grad():
        ours.double()(x.double())              # float64: the generic ops
        ours.float().train()(x)                # training mode (dropout, norm): timm's forward
        ours.eval()
        with FlopCounterMode(display=False) as counter:
            ours(x)
    assert calls == []
    macs = 3 * (24 * 96 + 96 * 24)
    assert counter.get_total_flops() == 2 * macs          # both linears counted, as timm's MLP
    relu, _ = pair(act=nn.ReLU)
    with torch.no_grad():
        relu(x)
    assert calls == []


def test_inference_kernel_allowed():
    x = torch.randn(2, 3)
    w = torch.randn(3, 3, requires_grad=True)
    assert fused.inference_kernel_allowed(x, ())
    assert not fused.inference_kernel_allowed(x, (w,))
    with torch.no_grad():
        assert fused.inference_kernel_allowed(x, (w,))
        with FlopCounterMode(display=False):
            assert not fused.inference_kernel_allowed(x, (w,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fused.inference_kernel_allowed(x, (w,))     # bf16 matmuls, not fp32


@needs_onednn
def test_vmamba_flops_count_the_mlp_as_before(monkeypatch):
    """The FLOP counters see the MLP's matmuls: the fused call is never made under them."""
    calls = spy(monkeypatch)
    model = tokenred.create_backbone("vmamba_tiny_s1l8", dims=16, depths=[1, 1, 1, 1]).eval()
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    assert len(calls) == 4                      # one MLP per block takes the fused call
    calls.clear()
    assert tokenred.count_flops(model, 64).gflops > 0
    assert calls == []                          # the counter saw fc1 and GELU as separate ops
