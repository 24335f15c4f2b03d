"""The ``triton`` scan backend. Its kernel's tests are in ``triton_interpreted.py``, run here in
a subprocess under Triton's CPU interpreter (TRITON_INTERPRET=1 must be set before triton is first
imported: triton decorates its own library functions at import)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenred.kernels import ScanBackendError, resolve_backend

pytest.importorskip("triton", reason="the triton backend needs the triton package")


def test_the_kernel_under_triton_s_interpreter():
    here = Path(__file__).resolve().parent
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(here / "triton_interpreted.py")], cwd=here.parent,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "skipped" not in run.stdout and " passed" in run.stdout, run.stdout[-3000:]


def test_triton_is_refused_on_cpu_and_auto_never_picks_it_there():
    with pytest.raises(ScanBackendError, match="'triton' runs on CUDA tensors only"):
        resolve_backend("triton", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) in ("cpp", "torch")


@pytest.mark.gpu
@pytest.mark.parametrize("d_state", [1, 16])
@pytest.mark.parametrize("length", [197, 3136])
@pytest.mark.parametrize("time_major", [False, True])
def test_triton_backend_on_cuda(d_state, length, time_major):
    from test_selective_scan import float64, make_inputs, rel_err
    from tokenred.kernels import mamba_ssm_available, scan_reference, selective_scan

    inputs = make_inputs(2, 64, d_state, length, regime="large")
    inputs["z"] = torch.randn(2, 64, length)
    ref = scan_reference(**float64(inputs))
    cuda = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if time_major:   # VMamba's layout
        for k in ("u", "delta"):
            cuda[k] = cuda[k].permute(2, 0, 1).contiguous().permute(1, 2, 0)
    y = selective_scan(**cuda, backend="triton")
    assert y.is_cuda and rel_err(y.cpu(), ref) < 1e-5
    if not mamba_ssm_available():
        assert resolve_backend("auto", y.device) == "triton"


@pytest.mark.parametrize("d_state", [1, 16])
def test_the_kernel_compiles_for_sm90_without_spills(d_state, tmp_path):
    """Ahead of time, no GPU needed: Triton lowers the kernel to PTX for sm_90 (H100/H200) and
    its bundled ptxas assembles it; ptxas -v must report no spill stores (a spilling tile size
    would run from local memory)."""
    import re
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tokenred.kernels import scan_triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"triton has no bundled ptxas at {ptxas}")
    kernel = scan_triton._scan_kernel
    constants = dict(N=d_state, N_PAD=triton.next_power_of_2(d_state),
                     BLOCK_D=scan_triton.BLOCK_D, BLOCK_L=scan_triton.BLOCK_L,
                     HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
    signature = {name: "constexpr" if name in constants else
                 ("*fp32" if name.endswith("_ptr") else "i32") for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature, constexprs={
        (kernel.arg_names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=scan_triton.NUM_WARPS))
    assert compiled.asm["cubin"]
    ptx = tmp_path / "scan.ptx"
    ptx.write_text(compiled.asm["ptx"])
    info = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(ptx), "-o",
                           str(tmp_path / "scan.cubin")], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr[-2000:]
    assert re.search(r"Used \d+ registers", info.stderr), info.stderr[-2000:]
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", info.stderr)]
    assert not any(spills), info.stderr[-2000:]
