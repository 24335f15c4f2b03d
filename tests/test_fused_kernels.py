"""The fused CPU inference kernels outside the scan (``tokenred.kernels.fused``): the MLP's fc1 +
GELU as one oneDNN call equals timm's MLP, and steps aside wherever gradients, traces, compiled
graphs or FLOP counters must see the individual ops."""
import importlib

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


def reference_conv_silu(x, conv):
    return torch.nn.functional.silu(conv(x)[..., :x.shape[-1]])


@pytest.mark.parametrize("length", [1, 2, 3, 4, 197])
@pytest.mark.parametrize("taps", [2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "time_major_half"])
def test_causal_conv1d_silu_equals_the_depthwise_conv(length, taps, bias, layout):
    """Mamba's causal depthwise conv + SiLU as shifted multiply-adds: the conv's values (its
    left padding, the first L outputs kept), any input strides, lengths shorter than the taps;
    the result is a [B, E, L] view of time-major storage."""
    torch.manual_seed(0)
    channels = 12
    conv = nn.Conv1d(channels, channels, taps, groups=channels, bias=bias, padding=taps - 1)
    if layout == "contiguous":
        x = torch.randn(3, channels, length)
    else:        # Vim's x: half of in_proj's [B, L, 2E] output, seen as [B, E, L]
        x = torch.randn(3, length, 2 * channels).transpose(1, 2)[:, :channels]
    with torch.no_grad():
        assert fused.causal_conv1d_silu_applies(x, conv.weight, conv.bias)
        got = fused.causal_conv1d_silu(x, conv.weight, conv.bias)
        want = reference_conv_silu(x, conv)
    assert got.shape == want.shape and got.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_causal_conv1d_silu_steps_aside_where_the_ops_must_be_seen(monkeypatch):
    """Gradients, FLOP counters and float64 take the conv; Vim's forward takes the kernel in CPU
    inference only, and both give the same output; its FLOP count still has the conv."""
    conv = nn.Conv1d(8, 8, 4, groups=8, padding=3)
    x = torch.randn(2, 8, 10)
    assert not fused.causal_conv1d_silu_applies(x, conv.weight, conv.bias)   # weights need grad
    with torch.no_grad():
        assert not fused.causal_conv1d_silu_applies(x.double(), conv.weight.double(),
                                                    conv.bias.double())
        with FlopCounterMode(display=False):
            assert not fused.causal_conv1d_silu_applies(x, conv.weight, conv.bias)
    vim_module = importlib.import_module("tokenred.backbones.vim")
    calls = []
    real = vim_module.causal_conv1d_silu
    monkeypatch.setattr(vim_module, "causal_conv1d_silu",
                        lambda *a: calls.append(a[0].shape) or real(*a))
    model = tokenred.create_backbone("vim_tiny", depth=2, img_size=32, patch_size=16, stride=16,
                                     num_classes=10, scan_backend="torch").eval()
    image = torch.randn(2, 3, 32, 32)
    plain = model(image)                                   # gradients recorded: the conv
    assert calls == []
    with torch.inference_mode():
        fast = model(image)
    assert len(calls) == 4                                 # 2 blocks x 2 directions
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)
    calls.clear()
    with_conv = tokenred.count_flops(model, 32).gflops
    assert calls == [] and with_conv > 0


@pytest.mark.parametrize("name, kwargs", [
    ("vmamba_tiny_s1l8", dict(dims=16, depths=[1, 1, 1, 1])),
    ("vim_tiny", dict(depth=2, img_size=64, patch_size=16, stride=16)),
])
def test_the_fused_kernels_rules_keep_a_compiled_model_one_graph(name, kwargs):
    """Under torch.compile the rules answer no without calling what dynamo cannot trace (asking
    oneDNN's availability first broke the compiled graph at every MLP)."""
    import torch._dynamo

    model = tokenred.create_backbone(name, num_classes=10, **kwargs).eval()
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(torch.randn(1, 3, 64, 64))
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
