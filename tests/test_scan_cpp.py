"""The compiled CPU scan (backend ``cpp``): forward and every gradient against the float64
sequential loop, float64 through the kernel, the batch-1 split backward, dispatch, errors, and the
backbones on it. Building needs a C++ compiler (skipped with the reason where there is none)."""
import shutil

import pytest
import torch

import tokenred
from tokenred.kernels import ScanBackendError, resolve_backend, scan_reference, selective_scan, set_default_backend
from tokenred.kernels import scan_cpp
from tokenred.kernels.selective_scan import is_time_major

from conftest import IN_CI
from test_vmamba import FIXTURES, build_from_fixture
from test_selective_scan import (_scan_grads, check_gradients_against_float64, float64,
                                 make_inputs, rel_err)


@pytest.fixture(scope="module", autouse=True)
def built():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here: the 'cpp' scan backend cannot be built")
    try:
        scan_cpp.load()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"CI has a compiler but the cpp scan did not build: {exc}")
        pytest.skip(str(exc))


def cpp(**kw):
    return selective_scan(**kw, backend="cpp")


@pytest.mark.parametrize("d_state", [1, 3, 16])
@pytest.mark.parametrize("length", [1, 65, 3136])
@pytest.mark.parametrize("regime", ["init", "large"])
def test_forward_matches_float64_sequential(d_state, length, regime):
    inputs = make_inputs(2, 16, d_state, length, regime=regime)
    inputs["z"] = torch.randn(2, 16, length)
    ref = scan_reference(**float64(inputs))
    with torch.no_grad():
        y = cpp(**inputs)
    assert y.dtype == torch.float32 and y.shape == (2, 16, length)
    assert rel_err(y, ref) < 1e-5


def time_major(t):
    """The same values as a [b, d, L] view of time-major [L, b, d] storage (VMamba's layout)."""
    return t.permute(2, 0, 1).contiguous().permute(1, 2, 0)


def batch_outer(t):
    """The same values as a [b, d, L] view of [b, L, d] storage (a linear layer's output, Vim)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("d_state,dim,groups", [(1, 16, 4), (1, 200, 2), (16, 16, 4), (3, 8, 1)])
@pytest.mark.parametrize("length", [1, 65, 3136])
@pytest.mark.parametrize("regime", ["init", "large"])
@pytest.mark.parametrize("extras", ["all", "all, a time-major z", "all, z half of xz", "none"])
@pytest.mark.parametrize("layout", ["time-major", "batch-outer"])
def test_time_major_inference_matches_float64_sequential(d_state, dim, groups, length, regime,
                                                         extras, layout):
    # dim 200 in 2 groups: blocks of 64 channels that end inside a group, and a short last one
    inputs = make_inputs(2, dim, d_state, length, groups=groups, regime=regime)
    if extras.startswith("all"):
        # the gate, fused in the kernel, read where it lies: channel-major, time-major, or (as
        # Vim's z) the second half of an in_proj output [b, L, 2d] seen as [b, d, L]
        z = torch.randn(2, dim, length) * 3
        z.view(-1)[::7] = 100.0
        z.view(-1)[3::7] = -100.0
        if extras.endswith("time-major z"):
            z = time_major(z)
        elif extras.endswith("half of xz"):
            xz = torch.randn(2, length, 2 * dim)
            xz[..., dim:] = z.transpose(1, 2)
            z = xz.transpose(1, 2)[:, dim:]
        inputs["z"] = z
    else:
        inputs.update(D=None, delta_bias=None, delta_softplus=False)
        inputs["delta"] = inputs["delta"].abs()
    ref = scan_reference(**float64(inputs))
    view = time_major if layout == "time-major" else batch_outer
    fed = dict(inputs, u=view(inputs["u"]), delta=view(inputs["delta"]))
    assert scan_cpp.channel_last_inference(fed["u"], fed["delta"], fed["B"], fed["C"])
    with torch.no_grad():
        y = cpp(**fed)
    assert y.shape == (2, dim, length) and y.dtype == torch.float32
    assert y.stride() == view(y).stride()                  # u's layout: no copy to channel-major
    assert rel_err(y, ref) < 1e-5
    float64_y = scan_cpp.scan_cpp_time_major(**float64(fed))
    assert float64_y.dtype == torch.float64 and rel_err(float64_y, ref) < 1e-12


@pytest.mark.parametrize("d_state", [1, 16])
def test_the_kernels_exp_and_softplus_hold_at_extreme_steps(d_state):
    """The kernels' own float32 exp and softplus over the whole range a trained model can reach:
    raw Δ from -120 to 120 (softplus below its underflow, through its threshold 20, far above)
    and decays exp(Δ·A) down to e^-3000 (the float32 kernels' own exp clamps them at e^-87)."""
    length, dim = 257, 48
    raw = torch.linspace(-120, 120, length).repeat(1, dim, 1)
    raw = raw[..., torch.randperm(length, generator=torch.Generator().manual_seed(0))]
    inputs = make_inputs(1, dim, d_state, length, groups=1)
    inputs.update(delta=raw, delta_bias=None, delta_softplus=True,
                  A=-torch.logspace(-2, 1.4, dim * d_state).view(dim, d_state))
    ref = scan_reference(**float64(inputs))
    for fed in (inputs, dict(inputs, u=time_major(inputs["u"]), delta=time_major(raw))):
        with torch.no_grad():
            y = cpp(**fed)                 # the channel-major kernel, then the time-major one
        assert torch.isfinite(y).all() and rel_err(y, ref) < 1e-5


def test_time_major_inputs_needing_gradients_take_the_differentiable_kernel():
    inputs = make_inputs(1, 8, 1, 20)
    u = time_major(inputs["u"]).requires_grad_()
    assert not scan_cpp.channel_last_inference(u, time_major(inputs["delta"]), inputs["B"],
                                             inputs["C"])
    y = cpp(**dict(inputs, u=u, delta=time_major(inputs["delta"])))
    y.sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


@pytest.mark.parametrize("d_state,length,layout,gate", [
    (1, 49, "grouped", False), (1, 300, "grouped", True), (16, 196, "grouped", True),
    (16, 65, "shared", True), (4, 97, "shared", False), (4, 33, "constant", True),
    (16, 1, "grouped", False)])
@pytest.mark.parametrize("regime", ["init", "large"])
def test_gradients_match_autograd_through_float64_reference(d_state, length, layout, gate,
                                                             regime):
    check_gradients_against_float64(cpp, d_state, length, layout, gate, regime)


def test_float64_runs_in_float64():
    inputs = float64(make_inputs(1, 8, 16, 40, regime="large"))
    inputs["z"] = torch.randn(1, 8, 40, dtype=torch.float64)
    grad_out = torch.randn(1, 8, 40, dtype=torch.float64)
    y_ref, ref = _scan_grads(scan_reference, inputs, grad_out)
    y, got = _scan_grads(cpp, inputs, grad_out)
    assert y.dtype == torch.float64 and rel_err(y, y_ref) < 1e-12
    for name in ref:
        assert got[name].dtype == torch.float64 and rel_err(got[name], ref[name]) < 1e-10, name


def test_batch_one_backward_splits_channels_without_changing_gradients():
    # batch 1, one group: the backward cuts the channels into per-thread splits whose partial
    # dB/dC are summed; the result must not depend on the number of threads
    inputs = make_inputs(1, 24, 16, 50, groups=1, gen_seed=5)
    grad_out = torch.randn(1, 24, 50)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, one = _scan_grads(cpp, inputs, grad_out)
        torch.set_num_threads(4)
        _, four = _scan_grads(cpp, inputs, grad_out)
    finally:
        torch.set_num_threads(previous)
    for name in one:
        torch.testing.assert_close(one[name], four[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_kernels_loops_run_on_torchs_intra_op_threads():
    # at::parallel_for is a header template: built without the OpenMP flag its pragma is ignored
    # and every kernel runs on the calling thread alone, whatever torch.get_num_threads() says
    if not torch.backends.openmp.is_available():
        pytest.skip("this torch's intra-op threads are not OpenMP's; nothing to check here")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert scan_cpp.load().parallel_threads(16) == 2
        torch.set_num_threads(1)
        assert scan_cpp.load().parallel_threads(16) == 1
    finally:
        torch.set_num_threads(previous)


def test_a_compiler_without_openmp_still_gets_a_one_thread_build(monkeypatch, capsys):
    built_with = []

    def build(cflags):
        built_with.append(cflags)
        if "-fopenmp" in cflags:
            raise RuntimeError("clang: error: unsupported option '-fopenmp'")
        return "the one-thread build"

    monkeypatch.setattr(scan_cpp, "build", build)
    monkeypatch.setattr(scan_cpp, "_CFLAGS", ("-O3", "-fopenmp"))
    monkeypatch.setattr(scan_cpp, "_module", None)
    monkeypatch.setattr(scan_cpp, "_error", None)
    assert scan_cpp.load() == "the one-thread build"
    assert built_with == [("-O3", "-fopenmp"), ("-O3",)]
    assert "without OpenMP" in capsys.readouterr().err
    # a build failing for another reason is not retried
    monkeypatch.setattr(scan_cpp, "_CFLAGS", ("-O3",))
    monkeypatch.setattr(scan_cpp, "_module", None)
    monkeypatch.setattr(scan_cpp, "build", lambda cflags: (_ for _ in ()).throw(OSError("no c++")))
    with pytest.raises(RuntimeError, match="could not be built here .*no c\\+\\+"):
        scan_cpp.load()


def test_cpp_backend_needs_cpu_tensors():
    with pytest.raises(ScanBackendError, match="'cpp' runs on CPU tensors only"):
        resolve_backend("cpp", torch.device("cuda"))
    # the meta-device preflight (shapes only) runs whatever backend is chosen
    inputs = make_inputs(1, 4, 1, 5)
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    assert cpp(**meta).shape == (1, 4, 5)


def spy_fused_dt(monkeypatch, in_kernel: bool) -> list:
    """Force the fused SS2D kernel's Δ source (computed in the kernel, or a matmul's tensor) and
    record, per kernel call, whether Δ was computed in the kernel."""
    monkeypatch.setattr(scan_cpp, "IN_KERNEL_DT_MIN_VALUES", 0 if in_kernel else 2 ** 62)
    module, seen = scan_cpp.load(), []

    class Spy:
        def __getattr__(self, name):
            return getattr(module, name)

        def cross_scan_2d(self, x, orders, dts, *rest):
            seen.append(dts.numel() == 0)
            return module.cross_scan_2d(x, orders, dts, *rest)

    monkeypatch.setattr(scan_cpp, "load", Spy)
    return seen


@pytest.mark.parametrize("kernel", ["cross_scan_2d", "cross_scan_2d, Δ in the kernel",
                                    "scan_cpp_time_major"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden_outputs_on_the_inference_kernels(name, kernel, monkeypatch):
    """The official VMamba/MedMamba outputs on the cpp backend's inference paths: the fused SS2D
    kernel (taken by default) with Δ read from a matmul or computed in the kernel, and the
    time-major scan kernel it replaces (VMamba hands the scan time-major views), taken when the
    fused one is not."""
    fx, model = build_from_fixture(name, scan_backend="cpp")
    if kernel == "scan_cpp_time_major":
        monkeypatch.setattr(scan_cpp, "cross_scan_applies", lambda *a: False)
    else:
        in_kernel = spy_fused_dt(monkeypatch, in_kernel=kernel.endswith("in the kernel"))
    calls = []
    real = getattr(scan_cpp, kernel.split(",")[0])
    monkeypatch.setattr(scan_cpp, kernel.split(",")[0], lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        logits = model(fx["input"])
        stages = model.forward_stages(fx["input"])
    assert calls
    if kernel != "scan_cpp_time_major":
        # (forced on, Δ is computed in the kernel wherever the rank allows: not at every stage)
        assert (True in in_kernel) if kernel.endswith("in the kernel") else set(in_kernel) == {False}
    torch.testing.assert_close(logits, fx["logits"], atol=1e-4, rtol=1e-4)
    for ours, official in zip(stages, fx["stage_outputs"], strict=True):
        torch.testing.assert_close(ours, official, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dt_in_kernel", [False, True])
@pytest.mark.parametrize("d_state,ratio,height,width", [(1, 1.0, 56, 56), (16, 2.0, 7, 9),
                                                        (4, 1.0, 5, 3), (1, 2.0, 1, 6)])
def test_fused_ss2d_equals_the_generic_path(d_state, ratio, height, width, dt_in_kernel,
                                            monkeypatch):
    from tokenred.layers.ss2d import SS2D

    in_kernel = spy_fused_dt(monkeypatch, dt_in_kernel)
    torch.manual_seed(0)
    layer = SS2D(40 if d_state > 1 else 96, d_state, ratio, "auto").eval()   # 80 or 96 channels
    x = torch.randn(2, height, width, layer.d_inner)
    with torch.inference_mode():
        layer.scan_backend = "torch"
        want = layer.scan_2d(x)
        layer.scan_backend = "cpp"
        got = layer.scan_2d(x)
        got64 = scan_cpp.cross_scan_2d(x.double(), layer.x_proj_weight, layer.dt_projs_weight,
                                       layer.dt_projs_bias, layer.A_logs, layer.Ds)
        layer.scan_backend = "reference"
        ref64 = layer.double().scan_2d(x.double())
    assert in_kernel == [dt_in_kernel] * 2                              # float32 and float64
    assert rel_err(got, want.double()) < 1e-5
    # (the generic path takes A, D and Δ's bias through float32, as VMamba does: 1e-8, not 1e-12)
    assert got64.dtype == torch.float64 and rel_err(got64, ref64) < 1e-8


@pytest.mark.parametrize("dt_in_kernel", [False, True])
@pytest.mark.parametrize("d_state,shared", [(1, False), (1, True), (16, False)])
def test_fused_ss2d_on_a_token_subset_equals_the_generic_path(d_state, shared, dt_in_kernel,
                                                              monkeypatch):
    """A grid reducer's kept tokens (random_drop, ToMe's destinations): the fused kernel visits
    them in the four orders of their positions, per sample or shared, as scan_tokens does."""
    from tokenred.layers.ss2d import SS2D

    in_kernel = spy_fused_dt(monkeypatch, dt_in_kernel)
    torch.manual_seed(1)
    height, width, count, batch = 9, 7, 25, 3
    layer = SS2D(40 if d_state > 1 else 96, d_state, 2.0 if d_state > 1 else 1.0, "auto").eval()
    x = torch.randn(batch, count, layer.d_inner)
    picks = [torch.randperm(height * width)[:count] for _ in range(1 if shared else batch)]
    positions = torch.stack([torch.stack([p // width, p % width], dim=-1) for p in picks])
    positions = positions[0] if shared else positions            # [T, 2] or [B, T, 2]
    with torch.inference_mode():
        layer.scan_backend = "torch"
        want = layer.scan_tokens(x, positions, height, width)
        layer.scan_backend = "cpp"
        got = layer.scan_tokens(x, positions, height, width)
        layer.scan_backend = "reference"
        ref64 = layer.double().scan_tokens(x.double(), positions, height, width)
        layer.scan_backend = "cpp"
        got64 = layer.scan_tokens(x.double(), positions, height, width)
    assert in_kernel == [dt_in_kernel] * 2
    assert got.shape == want.shape == (batch, count, layer.d_inner)
    assert rel_err(got, want.double()) < 1e-5
    assert got64.dtype == torch.float64 and rel_err(got64, ref64) < 1e-8


def test_the_fused_kernel_refuses_orders_that_are_not_permutations():
    from tokenred.layers.ss2d import SS2D

    layer = SS2D(16, 1, 1.0, "auto").eval()
    weights = (layer.x_proj_weight, layer.dt_projs_weight, layer.dt_projs_bias, layer.A_logs,
               layer.Ds)
    x = torch.randn(2, 5, layer.d_inner)
    good = torch.arange(5)
    with torch.inference_mode():
        scan_cpp.cross_scan_tokens(x, good, good.flip(0), *weights)
        for bad in (torch.tensor([0, 1, 1, 3, 4]), torch.tensor([0, 1, 2, 3, 5])):
            with pytest.raises(RuntimeError, match="permutations of 0..L-1"):
                scan_cpp.cross_scan_tokens(x, good, bad, *weights)


def test_the_fused_kernel_on_an_empty_batch():
    from tokenred.layers.ss2d import SS2D

    layer = SS2D(16, 1, 1.0, "auto").eval()
    with torch.inference_mode():
        out = scan_cpp.cross_scan_2d(torch.zeros(0, 3, 4, layer.d_inner), layer.x_proj_weight,
                                     layer.dt_projs_weight, layer.dt_projs_bias, layer.A_logs,
                                     layer.Ds)
    assert out.shape == (0, 3, 4, layer.d_inner)


def test_the_fused_kernel_steps_aside_for_gradients_traces_and_flop_counters():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 4, 4, 8)
    weights = (torch.randn(4, 5, 8, requires_grad=True),)
    assert scan_cpp.cross_scan_applies(x, "cpp", ())
    assert not scan_cpp.cross_scan_applies(x, "torch", ())
    assert not scan_cpp.cross_scan_applies(x.half(), "cpp", ())
    assert not scan_cpp.cross_scan_applies(x, "cpp", weights)          # a training step
    with torch.no_grad():
        assert scan_cpp.cross_scan_applies(x, "cpp", weights)
    with FlopCounterMode(display=False):
        assert not scan_cpp.cross_scan_applies(x, "cpp", ())           # it must see the scan op
    model = tokenred.create_backbone("vmamba_tiny_s1l8", dims=16, depths=[1, 1, 1, 1],
                                     scan_backend="cpp")
    torch_model = tokenred.create_backbone("vmamba_tiny_s1l8", dims=16, depths=[1, 1, 1, 1])
    assert tokenred.count_flops(model, 64).gflops == tokenred.count_flops(torch_model, 64).gflops


@pytest.mark.parametrize("name,kwargs", [
    ("vim_tiny", dict(img_size=32, patch_size=8, stride=8, embed_dim=32, depth=2)),
    ("vmamba_tiny_s1l8", dict(dims=16, depths=[1, 1, 1, 1])),
    ("medmamba_tiny", dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1]))])
def test_backbones_give_the_same_logits_and_gradients_on_cpp(name, kwargs):
    torch.manual_seed(0)
    model = tokenred.create_backbone(name, num_classes=5, **kwargs)
    size = kwargs.get("img_size", 64)
    x = torch.randn(2, 3, size, size)
    results = {}
    for backend in ("torch", "cpp"):
        model.set_scan_backend(backend)
        model.zero_grad()
        logits = model(x)
        logits.square().sum().backward()
        results[backend] = (logits.detach(), [p.grad.clone() for p in model.parameters()
                                              if p.grad is not None])
    torch.testing.assert_close(results["cpp"][0], results["torch"][0], rtol=1e-4, atol=1e-5)
    for got, want in zip(results["cpp"][1], results["torch"][1]):
        assert rel_err(got, want.double()) < 1e-3


@pytest.mark.parametrize("default", ["cpp", "torch", "auto"])
def test_process_default_reaches_models_that_pin_no_backend(monkeypatch, default):
    model = tokenred.create_backbone("vim_tiny", img_size=32, patch_size=8, stride=8,
                                     embed_dim=32, depth=1, num_classes=3)
    calls = []
    for entry in ("scan_cpp", "scan_cpp_time_major"):    # (Vim's inference gives time-major u)
        real = getattr(scan_cpp, entry)
        monkeypatch.setattr(scan_cpp, entry,
                            lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
    previous = set_default_backend(default)
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
    finally:
        set_default_backend(previous)
    # (auto takes cpp on CPU where it builds, as it does here)
    assert bool(calls) == (default != "torch"), f"default {default!r}: {len(calls)} cpp calls"


def test_auto_takes_cpp_on_cpu_only_while_it_agrees_with_torch(monkeypatch):
    from tokenred.kernels import auto_check

    cpu = torch.device("cpu")
    monkeypatch.setattr(auto_check, "_verdicts", {})
    assert resolve_backend("auto", cpu) == "cpp"
    monkeypatch.setattr(auto_check, "_verdicts", {})
    monkeypatch.setattr(scan_cpp, "scan_cpp_time_major", lambda u, *a, **k: torch.zeros_like(u))
    with pytest.warns(RuntimeWarning, match=r"the compiled 'cpp' selective scan does not work on "
                                            r"cpu \(its time-major kernel: it differs from the "
                                            r"torch backend by 1.0e\+00\); the 'auto' scan "
                                            r"backend uses 'torch' there"):
        assert resolve_backend("auto", cpu) == "torch"


_COMPILED_FIRST = """
import torch, tokenred
from tokenred.kernels import resolve_backend
torch.manual_seed(0)
model = tokenred.create_backbone("vmamba_tiny_s1l8", depths=(1, 1, 2, 1), dims=16).eval()
x = torch.randn(1, 3, 64, 64)
with torch.no_grad():
    compiled = torch.compile(model)(x)      # auto's first decision, inside the traced forward
    eager = model(x)
print(resolve_backend(None, torch.device("cpu")), (compiled - eager).abs().max().item())
"""


def test_auto_decided_inside_a_compiled_forward_is_a_constant_there():
    """A process whose first scan runs under torch.compile: auto's check (a thread, once) runs
    at trace time and its answer is a constant of the graph, so dynamo neither warns about
    tracing the check nor breaks the graph on it; the compiled model equals the eager one."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _COMPILED_FIRST], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    backend, diff = run.stdout.split()
    assert backend == "cpp" and float(diff) < 1e-5
    assert "Dynamo does not know how to trace" not in run.stderr, run.stderr[-3000:]


def test_the_build_a_timing_is_keyed_by_is_the_loaded_one():
    from tokenred.kernels import scan_build

    assert scan_build("cpp") == scan_cpp.load().__name__
    assert scan_build("cpp") == scan_cpp._build_name(scan_cpp._CFLAGS)   # flags, source, CPU
    assert scan_build("triton").startswith("scan_triton_")
