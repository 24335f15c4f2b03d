"""The ``triton`` scan backend's kernel, run by Triton's CPU interpreter: collected only by
``test_scan_triton.py``, which runs this file in a pytest subprocess with TRITON_INTERPRET=1 (the
interpreter must be on before triton is first imported). The kernel code is the same one CUDA
compiles; the interpreter runs it op by op with numpy. Compared with a float64 sequential
evaluation and with the ``torch`` backend."""
import importlib
import os

import pytest
import torch

from tokenred.kernels import auto_check
from tokenred.kernels import scan_reference, scan_torch
from tokenred.kernels import selective_scan as public_scan
from test_selective_scan import float64, inputs_with_bc_form, make_inputs, rel_err, with_small_steps

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs TRITON_INTERPRET=1 before triton is imported")


@pytest.fixture
def interpreted():
    module = importlib.import_module("tokenred.kernels.scan_triton")
    assert module.interpreting()
    return module


@pytest.mark.parametrize("d_state", [1, 16])
@pytest.mark.parametrize("length", [1, 8, 19])
@pytest.mark.parametrize("regime", ["init", "large"])
def test_matches_float64_sequential(interpreted, d_state, length, regime):
    inputs = make_inputs(2, 8, d_state, length, groups=2, regime=regime)
    inputs["z"] = torch.randn(2, 8, length)
    # tiles of 8 steps: the state crosses tile boundaries at L = 19, and 8 fills one exactly
    y = interpreted.scan_triton(**inputs, block_d=4, block_l=8)
    assert y.dtype == torch.float32 and y.shape == (2, 8, length)
    assert rel_err(y, scan_reference(**float64(inputs))) < 1e-5


@pytest.mark.parametrize("form", ["grouped", "ungrouped", "constant"])
def test_b_c_forms(interpreted, form):
    inputs = inputs_with_bc_form(form, 2, 12, 3, 10)
    y = interpreted.scan_triton(**inputs, block_d=8, block_l=4)
    assert rel_err(y, scan_reference(**float64(inputs))) < 1e-5


def test_b_and_c_in_different_group_counts(interpreted):
    inputs = make_inputs(1, 8, 2, 9, groups=4)
    inputs["C"] = inputs["C"][:, :2]            # B: 4 groups of 2 channels, C: 2 groups of 4
    y = interpreted.scan_triton(**inputs, block_d=8, block_l=4)
    assert rel_err(y, scan_reference(**float64(inputs))) < 1e-5


@pytest.mark.parametrize("d_state", [1, 16])
def test_mamba_small_steps_stay_at_float32_precision(interpreted, d_state):
    """The kernel's softplus keeps the rounding of 1 + e^x (log(1 + e^x) gave 7e-7 here)."""
    inputs = with_small_steps(make_inputs(1, 16, d_state, 40, groups=1))
    y = interpreted.scan_triton(**inputs, block_d=8, block_l=16)
    assert rel_err(y, scan_reference(**float64(inputs))) < 3e-7


def test_no_overflow_at_extreme_decay(interpreted):
    inputs = make_inputs(1, 4, 4, 20, groups=1, regime="large")
    inputs["delta"] = inputs["delta"] + 60.0
    y = interpreted.scan_triton(**inputs, block_d=4, block_l=8)
    assert torch.isfinite(y).all()
    assert rel_err(y, scan_reference(**float64(inputs))) < 1e-5


def test_public_function_on_time_major_views(interpreted):
    """VMamba's layout: u and Δ as [b, d, L] views of time-major storage. The backend reads them
    through their strides and returns the layout the op's fake promises (time-major)."""
    inputs = make_inputs(2, 8, 16, 11, groups=4)
    for k in ("u", "delta"):
        inputs[k] = inputs[k].permute(2, 0, 1).contiguous().permute(1, 2, 0)
    y = public_scan(**inputs, backend="triton")
    assert y.permute(2, 0, 1).is_contiguous()
    torch.testing.assert_close(y, scan_torch(**inputs), rtol=1e-5, atol=1e-5)


def test_training_and_float64_take_the_torch_backend(interpreted):
    inputs = make_inputs(1, 8, 4, 12)
    grads = {}
    for backend in ("triton", "torch"):
        leaves = {k: inputs[k].clone().requires_grad_(True) for k in ("u", "delta", "A", "B")}
        public_scan(**{**inputs, **leaves}, backend=backend).square().sum().backward()
        grads[backend] = {k: v.grad for k, v in leaves.items()}
    for k, g in grads["triton"].items():
        torch.testing.assert_close(g, grads["torch"][k], msg=k)
    y64 = public_scan(**float64(inputs), backend="triton")
    assert y64.dtype == torch.float64
    assert rel_err(y64, scan_reference(**float64(inputs))) < 1e-12


def test_auto_checks_the_kernel_once_and_falls_back_with_a_warning(interpreted, monkeypatch):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):      # what a FLOP counter's mode would see
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    cpu = torch.device("cpu")
    monkeypatch.setattr(auto_check, "_verdicts", {})
    with Recorder() as seen:
        assert interpreted.works_on(cpu)        # the interpreter's kernel agrees with torch
        torch.ones(2).add_(1)                   # (the mode records this thread's ops)
    assert seen.ops == [torch.ops.aten.ones.default, torch.ops.aten.add_.Tensor], seen.ops[:5]
    monkeypatch.setattr(auto_check, "_verdicts", {})

    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly failed\nsecond line")
    monkeypatch.setattr(interpreted, "scan_triton", broken)
    with pytest.warns(RuntimeWarning, match=r"does not work on cpu \(RuntimeError: PTX assembly "
                                            r"failed\); the 'auto' scan backend uses 'torch'"):
        assert not interpreted.works_on(cpu)
    assert not interpreted.works_on(cpu)        # decided once: no second warning, same answer


def test_without_d_bias_softplus_or_gate(interpreted):
    inputs = make_inputs(2, 8, 16, 13, groups=2)
    inputs.update(D=None, delta_bias=None, delta_softplus=False)
    inputs["delta"] = inputs["delta"].abs()          # raw steps, no softplus: keep them >= 0
    y = interpreted.scan_triton(**inputs, block_d=4, block_l=8)
    assert rel_err(y, scan_reference(**float64(inputs))) < 1e-5
