"""The selective scan: every backend against a float64 sequential evaluation, the custom op's FLOP
rules in both counters, backend selection and argument errors."""
import warnings

import pytest
import torch
from torch import nn

import tokenred
from tokenred.kernels import (ScanBackendError, resolve_backend, scan_macs, scan_reference,
                              scan_torch, scan_torch_autograd, selective_scan, set_default_backend)
from tokenred.kernels import scan_cpp
import importlib
ss_module = importlib.import_module("tokenred.kernels.selective_scan")


def make_inputs(batch, dim, d_state, length, groups=4, regime="init", gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    u = torch.randn(batch, dim, length, generator=g)
    if regime == "init":     # Mamba's init: small steps
        delta = 0.5 * torch.randn(batch, dim, length, generator=g)
    else:                    # large steps, strong decay (trained-like)
        delta = 2 + 2 * torch.randn(batch, dim, length, generator=g)
    A = -torch.exp(torch.rand(dim, d_state, generator=g) * 3 - 1)
    B = torch.randn(batch, groups, d_state, length, generator=g)
    C = torch.randn(batch, groups, d_state, length, generator=g)
    D = torch.randn(dim, generator=g)
    delta_bias = 0.5 * torch.randn(dim, generator=g)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias, delta_softplus=True)


def with_small_steps(inputs, seed=1):
    """``inputs`` with Mamba's step init: softplus(bias) log-uniform in [1e-3, 1e-1], small raw
    steps around it (x near -7 for the smallest)."""
    import math
    batch, dim, length = inputs["u"].shape
    g = torch.Generator().manual_seed(seed)
    dt0 = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3))
                    + math.log(1e-3))
    return dict(inputs, delta_bias=dt0 + torch.log(-torch.expm1(-dt0)),   # softplus^-1(dt0)
                delta=0.1 * torch.randn(batch, dim, length, generator=g), delta_softplus=True)


def float64(inputs):
    return {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def rel_err(y, ref):
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(params=["chunked", "stepwise"])
def inference_path(request, monkeypatch):
    """Run the ``torch`` backend's inference through its chunked scan or its step-by-step one
    (which it picks by itself for large d_state > 1 states on CPU); returns the path's name and
    the list of step-by-step calls."""
    calls = []
    stepwise = ss_module._scan_stepwise

    def spy(*args):
        calls.append(args[0].shape)
        return stepwise(*args)
    monkeypatch.setattr(ss_module, "_scan_stepwise", spy)
    monkeypatch.setattr(ss_module, "_STEPWISE_MIN_STATE",
                        1 if request.param == "stepwise" else 1 << 62)
    return request.param, calls


@pytest.fixture(params=["intel_mkl", "other"])
def cpu_math(request, monkeypatch):
    """Run the scan with the exponentials either machine rule picks (Intel with MKL: decays by
    exp, torch's softplus; elsewhere: exp2 of Δ A log2 e, the softplus in pieces), including the
    one this machine would not pick: both must give the scan to float32 precision."""
    monkeypatch.setattr(ss_module, "cpu_is_intel_with_mkl", lambda: request.param == "intel_mkl")
    return request.param


@pytest.fixture
def softplus_in_pieces(monkeypatch):
    """The piecewise softplus, whatever this machine's rule."""
    monkeypatch.setattr(ss_module, "cpu_is_intel_with_mkl", lambda: False)


def check_path(inference_path, d_state):
    name, calls = inference_path
    assert bool(calls) == (name == "stepwise" and d_state > 1), (name, d_state, calls)


@pytest.mark.parametrize("d_state", [1, 16])
@pytest.mark.parametrize("length", [1, 7, 49, 196, 3136])
@pytest.mark.parametrize("regime", ["init", "large"])
def test_torch_backend_matches_float64_sequential(d_state, length, regime, inference_path,
                                                  cpu_math):
    dim = 32 if d_state == 16 and length == 3136 else 64
    inputs = make_inputs(2, dim, d_state, length, regime=regime)
    ref = scan_reference(**float64(inputs))
    y = scan_torch(**inputs)
    assert y.dtype == torch.float32 and y.shape == (2, dim, length)
    assert rel_err(y, ref) < 1e-5
    check_path(inference_path, d_state)


def test_softplus_is_within_float32_rounding_everywhere(cpu_math):
    """The backend's vectorised softplus against float64 from -87 (below, results are denormal)
    to 100, including the range near Mamba's small steps (x near -7) where log(1 + e^x) loses
    the rounding of 1 + e^x (a relative error of 1e-4 there, 100% further down); the same
    special values as F.softplus."""
    x = torch.cat([torch.linspace(-87, 100, 400001),
                   torch.randn(100000, generator=torch.Generator().manual_seed(0)) * 8])
    x = x[x >= -87].float()
    ref = torch.nn.functional.softplus(x.double())
    special = torch.tensor([float("-inf"), float("inf"), float("nan"), 0.0, 20.0, 20.5, 1e30])
    for inplace in (False, True):
        given = x.clone()
        got = ss_module._softplus(given, inplace=inplace)
        assert (got.data_ptr() == given.data_ptr()) == inplace
        assert ((got.double() - ref).abs() / ref).max().item() < 2.5e-7
        assert torch.equal(ss_module._softplus(special.clone(), inplace=inplace).nan_to_num(-1.0),
                           torch.nn.functional.softplus(special).nan_to_num(-1.0))


def test_softplus_in_pieces_is_the_same_function(monkeypatch, softplus_in_pieces):
    """Large Δ is processed piece by piece with reused scratch: the result is bit for bit the
    one-piece result, in place or not, contiguous or not, with a last piece shorter than the
    others; an empty tensor passes through."""
    x = torch.randn(7, 3, 101, generator=torch.Generator().manual_seed(2)) * 10
    whole = ss_module._softplus(x)
    monkeypatch.setattr(ss_module, "_SOFTPLUS_PIECE", 1000)             # 2121 = 2 x 1000 + 121
    assert torch.equal(ss_module._softplus(x), whole)
    strided = x.permute(2, 0, 1)
    assert torch.equal(ss_module._softplus(strided), whole.permute(2, 0, 1))
    assert ss_module._softplus(strided).stride() == strided.stride()    # x's layout kept
    given = strided.clone()
    assert ss_module._softplus(given, inplace=True) is given
    assert torch.equal(given, whole.permute(2, 0, 1))
    with_gaps = x.clone()[:, 1:, ::2]                                   # not dense: copied
    assert ss_module._softplus(with_gaps, inplace=True) is with_gaps
    assert torch.equal(with_gaps, whole[:, 1:, ::2])
    assert ss_module._softplus(torch.empty(0, 5)).shape == (0, 5)


def test_softplus_is_one_piece_off_the_cpu(monkeypatch, softplus_in_pieces):
    """Pieces are for CPU caches; on a GPU each would cost kernel launches (meta stands in)."""
    pieces = []
    piece_ = ss_module._softplus_piece_
    monkeypatch.setattr(ss_module, "_softplus_piece_",
                        lambda x, *scratch: pieces.append(x.numel()) or piece_(x, *scratch))
    ss_module._softplus(torch.empty(5 << 17, device="meta"), inplace=True)
    assert pieces == [5 << 17]
    pieces.clear()
    ss_module._softplus(torch.zeros(5 << 17), inplace=True)
    assert pieces == [1 << 17] * 5


@pytest.mark.parametrize("d_state", [1, 16])
@pytest.mark.parametrize("length", [197, 3136])
def test_mamba_small_steps_stay_at_float32_precision(d_state, length, inference_path,
                                                     cpu_math):
    """Mamba's step init (softplus(bias) log-uniform in [1e-3, 1e-1]): the output within a few
    float32 roundings of float64 (a softplus as log(1 + e^x) gave 7e-7 here, the reference
    loop 1e-7)."""
    inputs = with_small_steps(make_inputs(1, 64, d_state, length,
                                          groups=1 if d_state == 16 else 4))
    ref = scan_reference(**float64(inputs))
    assert rel_err(scan_torch(**inputs), ref) < 3e-7
    check_path(inference_path, d_state)


def test_the_machine_rule_picks_the_exponentials(monkeypatch):
    """Intel with MKL: decays by exp (A used as it is) and torch's softplus; elsewhere exp2 of
    A log2 e and the piecewise softplus; off the CPU always exp2 and the pieces. The rule
    depends on the machine only (MKL in torch, the CPU's vendor), never on a timing."""
    a = -torch.rand(8, 4) * 3
    x = -torch.rand(5, 8)
    wide = torch.randn(3, 5, 7) * 10
    for intel in (True, False):
        monkeypatch.setattr(ss_module, "cpu_is_intel_with_mkl", lambda intel=intel: intel)
        assert torch.equal(ss_module._decay_rate(a), a if intel else a * ss_module._LOG2_E)
        assert torch.equal(ss_module._decay_exp_(x.clone()), x.exp() if intel else x.exp2())
        assert ss_module.scan_math("cpu") == {"decays": "exp" if intel else "exp2",
                                              "softplus": "torch" if intel else "pieces"}
        for given, dense in ((wide.clone(), True), (wide.clone().permute(2, 0, 1), True),
                             (wide.clone()[:, 1:, ::2], False)):
            expect = torch.nn.functional.softplus(given)
            out = ss_module._softplus(given)
            assert out.stride() == given.stride() or not dense     # a dense x's layout is kept
            assert (out - expect).abs().max() <= 2e-7 * expect.abs().max()
            assert ss_module._softplus(given, inplace=True) is given
            assert torch.equal(given, out)
        assert ss_module.scan_math("meta") == {"decays": "exp2", "softplus": "pieces"}
    monkeypatch.undo()
    assert ss_module.cpu_is_intel_with_mkl() == (torch.backends.mkl.is_available()
                                                 and ss_module.cpu_vendor() == "GenuineIntel")
    assert isinstance(ss_module.cpu_vendor(), str)


@pytest.mark.parametrize("block", [1, 3, 16])
@pytest.mark.parametrize("length", [1, 2, 16, 17, 50])
def test_stepwise_blocks_carry_the_state(block, length, monkeypatch):
    """The step-by-step scan's time blocks: every block starts from the previous one's last
    state, whatever the block size and however the length falls on block boundaries."""
    monkeypatch.setattr(ss_module, "_STEPWISE_MIN_STATE", 1)
    monkeypatch.setattr(ss_module, "_STEPWISE_MAX_BLOCK", block)
    inputs = make_inputs(2, 12, 4, length, groups=3, regime="large")
    assert rel_err(scan_torch(**inputs), scan_reference(**float64(inputs))) < 1e-5


@pytest.mark.parametrize("state, length, steps", [
    (768 * 16, 197, 10),        # Vim-S, batch 1: the smaller blocks, still 10 steps
    (384 * 16, 3136, 16),       # VMamba v0 / MedMamba shape, batch 1: at the cap either way
    (8 * 768 * 16, 197, 2),     # Vim-S, batch 8: the small size would leave 1 step
    (8 * 384 * 16, 3136, 5),
    (768 * 16, 7, 7)])          # never more steps than the sequence has
def test_stepwise_blocks_are_cache_sized_with_enough_steps(state, length, steps):
    assert ss_module._stepwise_block(state, length) == steps


@pytest.mark.parametrize("batch, expect_one", [(1, True), (4, False)])
def test_stepwise_scan_runs_on_one_thread_below_the_grain(batch, expect_one, monkeypatch):
    """Vim-S at batch 1 (12288 state values per step, under torch's 32768 grain): one intra-op
    thread inside, the caller's setting back after (also after an error); at batch 4 the steps
    are parallel ops themselves, so the threads stay."""
    seen = []
    stepwise = ss_module._scan_stepwise

    def spy(*args):
        seen.append(torch.get_num_threads())
        return stepwise(*args)
    monkeypatch.setattr(ss_module, "_scan_stepwise", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inputs = make_inputs(batch, 768, 16, 3, groups=1)
        scan_torch(**inputs)
        assert seen == [1 if expect_one else 2] and torch.get_num_threads() == 2

        def broken(*args):
            raise RuntimeError("inside the scan")
        monkeypatch.setattr(ss_module, "_scan_stepwise", broken)
        with pytest.raises(RuntimeError, match="inside the scan"):
            scan_torch(**inputs)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_large_states_on_cpu_take_the_stepwise_scan(monkeypatch):
    calls = []
    stepwise = ss_module._scan_stepwise
    monkeypatch.setattr(ss_module, "_scan_stepwise", lambda *a: calls.append(1) or stepwise(*a))
    vim_like = make_inputs(1, 768, 16, 5, groups=1)   # Vim-S: one step's state is 12288 values
    scan_torch(**vim_like)
    assert calls == [1]
    scan_torch(**make_inputs(8, 768, 1, 5))           # d_state 1 (VMamba v2): chunked
    scan_torch(**make_inputs(1, 16, 16, 5))           # a small state: chunked
    assert calls == [1]


@pytest.mark.parametrize("chunk", [2, 3, 5, 16, 64, 4096])
def test_result_does_not_depend_on_the_chunk(chunk):
    inputs = make_inputs(1, 24, 2, 1000, regime="large")
    ref = scan_reference(**float64(inputs))
    assert rel_err(scan_torch(**inputs, chunk=chunk), ref) < 1e-5


def test_extreme_decay_gives_no_overflow_or_nan(inference_path, cpu_math):
    # total log-decay far beyond float32's exp range inside every chunk
    inputs = make_inputs(1, 8, 16, 3136, regime="large")
    inputs["delta"] = inputs["delta"] + 60.0
    y = scan_torch(**inputs)
    assert torch.isfinite(y).all()
    assert rel_err(y, scan_reference(**float64(inputs))) < 1e-5
    check_path(inference_path, 16)


def inputs_with_bc_form(form, batch, dim, d_state, length):
    """Gated inputs whose B/C are grouped [b, 4, N, L], ungrouped [b, N, L] or constant [D, N]."""
    inputs = make_inputs(batch, dim, d_state, length)
    if form == "ungrouped":
        inputs["B"], inputs["C"] = inputs["B"][:, 0], inputs["C"][:, 0]
    elif form == "constant":
        inputs["B"], inputs["C"] = torch.randn(dim, d_state), torch.randn(dim, d_state)
    inputs["z"] = torch.randn(batch, dim, length)
    return inputs


@pytest.mark.parametrize("form", ["grouped", "ungrouped", "constant"])
def test_b_c_shapes_and_gate(form, inference_path):
    inputs = inputs_with_bc_form(form, 2, 12, 3, 40)
    ref = scan_reference(**float64(inputs))
    assert rel_err(scan_torch(**inputs), ref) < 1e-5
    check_path(inference_path, 3)
    # the gate, and the D skip, by hand: y = (scan without D + D u) * silu(z)
    bare = scan_reference(**{**float64(inputs), "D": None, "z": None})
    manual = (bare + inputs["D"].double()[:, None] * inputs["u"].double()) \
        * torch.nn.functional.silu(inputs["z"].double())
    torch.testing.assert_close(ref, manual)


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("with_d, with_bias, with_z", [(True, True, False), (False, True, True),
                                                       (True, False, True), (False, False, False)])
def test_optional_terms_and_the_inputs_left_as_they_were(with_d, with_bias, with_z, time_major,
                                                         inference_path):
    """D, bias and gate each optional, on [b, d, L] inputs and on views of time-major storage
    (as VMamba and Vim hand them over); the scan works in place on its own copies only, so the
    caller's tensors are bit for bit what they were."""
    inputs = make_inputs(2, 32, 16, 37, groups=2)
    inputs["z"] = torch.randn(2, 32, 37)
    if time_major:
        inputs.update({k: inputs[k].permute(2, 0, 1).contiguous().permute(1, 2, 0)
                       for k in ("u", "delta", "z")})
    inputs.update({k: None for k, keep in (("D", with_d), ("delta_bias", with_bias), ("z", with_z))
                   if not keep})
    before = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    ref = scan_reference(**float64(inputs))
    assert rel_err(scan_torch(**inputs), ref) < 1e-5
    check_path(inference_path, 16)
    for k, v in before.items():
        assert torch.equal(inputs[k], v), k


@pytest.mark.parametrize("form", ["grouped", "ungrouped", "constant"])
def test_channel_slices_give_the_same_scan(form, monkeypatch):
    """Large N > 1 scans run in cache-sized channel slices, each inside one group of B/C: force
    slicing on a small input and compare with the sequential float64 scan."""
    inputs = inputs_with_bc_form(form, 2, 48, 4, 50)
    monkeypatch.setattr(ss_module, "_TILE_ABOVE", 1000)
    monkeypatch.setattr(ss_module, "_TILE_ELEMENTS", 50 * 2 * 4 * 5)    # 5 channels wanted
    assert ss_module._channel_tile(50 * 2 * 4, 48, 4 if form == "grouped" else 1) == \
        4           # the largest divisor of a group's 12 (or all 48) channels <= 5
    ref = scan_reference(**float64(inputs))
    assert rel_err(scan_torch(**inputs), ref) < 1e-5
    # training: the sliced forward and backward give the unsliced gradients
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()
              if isinstance(v, torch.Tensor)}
    weights = torch.randn(2, 48, 50)
    (scan_torch_autograd(**{**inputs, **leaves}) * weights).sum().backward()
    sliced = {k: v.grad for k, v in leaves.items()}
    monkeypatch.setattr(ss_module, "_TILE_ABOVE", 1 << 30)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    (scan_torch_autograd(**{**inputs, **leaves}) * weights).sum().backward()
    for k, v in leaves.items():
        torch.testing.assert_close(sliced[k], v.grad, rtol=1e-4, atol=1e-5, msg=k)


def test_reference_matches_a_naive_per_channel_loop():
    inputs = make_inputs(1, 8, 2, 12, groups=2)
    y = scan_reference(**float64(inputs))
    u, delta, A = inputs["u"].double(), inputs["delta"].double(), inputs["A"].double()
    B, C, D, bias = (inputs[k].double() for k in ("B", "C", "D", "delta_bias"))
    for d in range(8):
        g = d // 4
        h = torch.zeros(2, dtype=torch.float64)
        for t in range(12):
            dt = torch.nn.functional.softplus(delta[0, d, t] + bias[d])
            h = torch.exp(dt * A[d]) * h + dt * u[0, d, t] * B[0, g, :, t]
            expect = (h * C[0, g, :, t]).sum() + D[d] * u[0, d, t]
            assert abs(y[0, d, t].item() - expect.item()) < 1e-10


def test_public_function_dispatches_and_records_one_op():
    inputs = make_inputs(1, 8, 1, 30)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D")]
    kw = dict(delta_bias=inputs["delta_bias"], delta_softplus=True)
    ref = scan_reference(*args, **kw)
    for backend in (None, "auto", "torch", "reference"):
        torch.testing.assert_close(selective_scan(*args, backend=backend, **kw), ref,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["channel-major", "time-major", "batch-outer", "mixed"])
def test_the_op_keeps_the_layout_its_fake_promises(layout):
    """torch.compile traces the op with its fake and asserts the real output's strides: a fake
    that said "contiguous" for the torch scan's time-major output made every SSM backbone fail to
    compile. opcheck compares fake and real metadata, strides included."""
    from tokenred.kernels.selective_scan import _selective_scan_op

    batch, dim, length, n = 2, 8, 16, 4
    if layout == "time-major":   # as VMamba hands them over: [B, D, L] views of [L, B, D] storage
        u, delta = (torch.randn(length, batch, dim).permute(1, 2, 0) for _ in range(2))
    elif layout == "batch-outer":   # as Vim's linears give them: views of [B, L, D] storage
        u, delta = (torch.randn(batch, length, dim).transpose(1, 2) for _ in range(2))
    elif layout == "mixed":   # u with contiguous channels, Δ without: cpp's channel-major kernel
        u, delta = torch.randn(batch, length, dim).transpose(1, 2), torch.randn(batch, dim, length)
    else:
        u, delta = torch.randn(batch, dim, length), torch.randn(batch, dim, length)
    args = (u, delta, -torch.rand(dim, n), torch.randn(batch, 1, n, length),
            torch.randn(batch, 1, n, length), torch.randn(dim), None, torch.randn(dim), True)
    backends = ["torch", "reference"] + (["cpp"] if scan_cpp.available() else [])
    for backend in backends:
        result = torch.library.opcheck(_selective_scan_op, args + (backend,))
        assert set(result.values()) == {"SUCCESS"}, (backend, result)


def test_backend_errors_are_clear():
    inputs = make_inputs(1, 4, 1, 5)
    with pytest.raises(ScanBackendError, match="unknown selective-scan backend 'cuda_magic'"):
        selective_scan(**inputs, backend="cuda_magic")
    with pytest.raises(ScanBackendError, match="CUDA tensors only"):
        selective_scan(**inputs, backend="mamba_ssm")
    assert resolve_backend(None, torch.device("cpu")) == ("cpp" if scan_cpp.works() else "torch")
    previous = set_default_backend("reference")
    try:
        assert resolve_backend(None, torch.device("cpu")) == "reference"
    finally:
        set_default_backend(previous)


def test_auto_on_cpu_falls_back_to_torch_with_one_warning_when_cpp_does_not_build(monkeypatch):
    from tokenred.kernels import auto_check

    def no_compiler():
        raise RuntimeError("the 'cpp' scan backend could not be built here (no c++)")
    monkeypatch.setattr(auto_check, "_verdicts", {})
    monkeypatch.setattr(scan_cpp, "load", no_compiler)
    cpu = torch.device("cpu")
    with pytest.warns(RuntimeWarning, match=r"the compiled 'cpp' selective scan does not work on "
                                            r"cpu \(RuntimeError: the 'cpp' scan backend could not "
                                            r"be built here \(no c\+\+\)\); the 'auto' scan "
                                            r"backend uses 'torch' there"):
        assert resolve_backend("auto", cpu) == "torch"
    inputs = make_inputs(1, 4, 16, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # decided once: no second warning
        assert resolve_backend(None, cpu) == "torch"
        with torch.no_grad():
            torch.testing.assert_close(selective_scan(**inputs), scan_torch(**inputs))


@pytest.mark.parametrize("bad, message", [
    (dict(u=torch.zeros(2, 4)), "u must be"),
    (dict(delta=torch.zeros(1, 4, 6)), "delta"),
    (dict(A=torch.zeros(3, 1)), "A must be"),
    (dict(B=torch.zeros(1, 3, 1, 5)), "B must be"),
    (dict(D=torch.zeros(5)), "D must be"),
])
def test_shape_errors_name_the_argument(bad, message):
    inputs = make_inputs(1, 4, 1, 5)
    inputs.update(bad)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)


def _scan_grads(fn, inputs, grad_out):
    leaves = {k: v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v
              for k, v in inputs.items()}
    y = fn(**leaves)
    (y * grad_out.to(y.dtype)).sum().backward()
    return y, {k: v.grad for k, v in leaves.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("d_state,length,layout,gate", [
    (1, 49, "grouped", False), (1, 300, "grouped", True), (16, 196, "grouped", True),
    (4, 97, "shared", False), (4, 33, "constant", True), (16, 1, "grouped", False)])
@pytest.mark.parametrize("regime", ["init", "large"])
def test_torch_backward_matches_autograd_through_float64_reference(d_state, length, layout, gate,
                                                                   regime, cpu_math):
    check_gradients_against_float64(scan_torch_autograd, d_state, length, layout, gate, regime)


def check_gradients_against_float64(fn, d_state, length, layout, gate, regime):
    """``fn``'s output and every input gradient against autograd through the float64 loop
    (relative error 1e-5 / 1e-4; gradients that are exactly zero must stay zero)."""
    inputs = make_inputs(2, 16, d_state, length, groups=4, regime=regime, gen_seed=3)
    g = torch.Generator().manual_seed(7)
    if layout == "shared":       # [batch, N, L]: one group
        inputs["B"], inputs["C"] = inputs["B"][:, 0], inputs["C"][:, 0]
    elif layout == "constant":   # [D, N]
        inputs["B"], inputs["C"] = torch.randn(16, d_state, generator=g), torch.randn(16, d_state, generator=g)
    if gate:
        inputs["z"] = torch.randn(2, 16, length, generator=g)
    grad_out = torch.randn(2, 16, length, generator=g)
    y_ref, ref = _scan_grads(scan_reference, float64(inputs), grad_out)
    y, got = _scan_grads(fn, inputs, grad_out)
    assert rel_err(y, y_ref) < 1e-5
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].shape == ref[name].shape and got[name].dtype == torch.float32, name
        if not ref[name].any():  # e.g. A at length 1: no earlier state, the gradient is exactly 0
            assert not got[name].any(), name
        else:
            assert rel_err(got[name], ref[name]) < 1e-4, name


def test_gradients_run_the_fast_backward_of_the_chosen_backend():
    inputs = make_inputs(1, 8, 2, 40)
    grad_out = torch.randn(1, 8, 40)
    _, ref = _scan_grads(lambda **kw: selective_scan(**kw, backend="reference"), inputs, grad_out)
    calls = []
    original = ss_module._DIFFERENTIABLE["torch"]
    ss_module._DIFFERENTIABLE["torch"] = lambda *a: calls.append(1) or original(*a)
    try:
        _, got = _scan_grads(lambda **kw: selective_scan(**kw, backend="torch"), inputs, grad_out)
    finally:
        ss_module._DIFFERENTIABLE["torch"] = original
    assert calls == [1]
    for name in ref:
        assert rel_err(got[name], ref[name].double()) < 1e-4, name


def test_model_training_step_through_the_fast_backward():
    model = tokenred.create_backbone("vmamba_tiny_s1l8", depths=[1, 1, 1, 1], dims=16,
                                     num_classes=3).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.layers[0].blocks[0].op.A_logs.grad.abs().sum() > 0


class _ScanOnly(nn.Module):
    def __init__(self, dim, d_state):
        super().__init__()
        self.A = nn.Parameter(-torch.rand(dim, d_state))
        self.D = nn.Parameter(torch.ones(dim))
        self.dim, self.d_state = dim, d_state

    def forward(self, x):                      # x: [B, 1, dim, L] (an "image" for count_flops)
        u = x[:, 0]
        bc = torch.ones(u.shape[0], 4, self.d_state, u.shape[-1])
        return selective_scan(u, u, self.A, bc, bc, self.D, None, None, True)


@pytest.mark.parametrize("d_state", [1, 16])
def test_flops_use_vmamba_formula_in_fvcore_and_flop_counter(d_state):
    batch, dim, length = 2, 16, 50
    model = _ScanOnly(dim, d_state)
    expected = 9 * batch * length * dim * d_state + batch * dim * length
    assert scan_macs(batch, length, dim, d_state) == expected
    count = tokenred.count_flops(model, (batch, 1, dim, length))
    assert count.total == expected and not count.uncounted
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(batch, 1, dim, length))
    assert counter.get_total_flops() == 2 * expected   # that counter counts 2 per multiply-add


@pytest.mark.gpu
@pytest.mark.parametrize("d_state", [1, 16])
def test_torch_backend_on_cuda(d_state):
    inputs = make_inputs(4, 64, d_state, 3136, regime="large")
    ref = scan_reference(**float64(inputs))
    cuda = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    y = selective_scan(**cuda, backend="torch")
    assert y.is_cuda and rel_err(y.cpu(), ref) < 1e-5
