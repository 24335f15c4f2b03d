import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import tokenred
from tokenred.timing import benchmark_interleaved


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.lin = nn.Linear(8, 2)

    def forward(self, x):
        self.calls += 1
        return self.lin(x.mean(dim=(2, 3)).repeat(1, 3)[:, :8])


def test_benchmark_statistics_and_environment():
    model = Counting()
    res = tokenred.benchmark(model, input_size=8, batch_size=4, warmup=3, iters=7)
    assert model.calls == 10                 # warm-up ran but is not in the statistics
    assert res.iters == 7 and len(res.times_ms) == 7 and res.warmup == 3
    assert res.min_ms <= res.median_ms
    assert res.iqr_ms >= 0
    assert res.images_per_s == pytest.approx(4 / (res.median_ms / 1e3))
    for key in ("device_name", "torch", "timm", "tokenred", "threads", "dtype", "tf32_matmul",
                "tf32_cudnn", "cudnn_benchmark"):
        assert key in res.env
    assert res.env["threads"] == torch.get_num_threads()
    assert res.env["dtype"] == "float32"


def test_interleaved_rounds_share_iterations():
    a, b = Counting(), Counting()
    res = benchmark_interleaved({"a": a, "b": b}, 8, 2, "cpu", warmup=1, iters=5, rounds=2)
    assert a.calls == b.calls == 6
    assert set(res) == {"a", "b"} and res["a"].iters == 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="allowed are cpu, cuda"):
        tokenred.benchmark(Counting(), 8, device="tpu")
    with pytest.raises(ValueError, match="dtype 'float8'"):
        tokenred.benchmark(Counting(), 8, dtype="float8")
    with pytest.raises(ValueError, match="iters >= 1"):
        tokenred.benchmark(Counting(), 8, iters=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            tokenred.benchmark(Counting(), 8, device="cuda")


def test_bf16_autocast_runs():
    res = tokenred.benchmark(Counting(), 8, batch_size=2, dtype="bfloat16", amp=True, warmup=0,
                             iters=2)
    assert res.env["amp"] is True and res.env["dtype"] == "bfloat16"


@pytest.mark.gpu
def test_cuda_event_timing():
    res = tokenred.benchmark(Counting(), 8, batch_size=2, device="cuda", warmup=2, iters=5)
    assert res.env["device"].startswith("cuda") and res.median_ms > 0


def test_paired_ratio_uses_round_medians():
    from tokenred.timing import paired_ratio

    a, b = Counting(), Counting()
    res = benchmark_interleaved({"a": a, "b": b}, 8, 2, "cpu", warmup=0, iters=6, rounds=3)
    assert len(res["a"].round_medians_ms) == 3
    ratio = paired_ratio(res["a"], res["b"])
    assert ratio > 0
    with pytest.raises(ValueError, match="same benchmark_interleaved run"):
        paired_ratio(res["a"], tokenred.benchmark(b, 8, iters=2, warmup=0))


def test_compiled_timing_and_its_errors(monkeypatch):
    import torch

    from tokenred.timing import CompileError, benchmark

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ValueError, match="warmup >= 1"):
        benchmark(model, 8, warmup=0, iters=2, compile=True)

    def broken(m):
        def run(x):
            raise RuntimeError("inductor: no C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(CompileError, match="torch.compile could not run model: RuntimeError: "
                                           "inductor: no C\\+\\+ compiler$"):
        benchmark(model, 8, warmup=1, iters=2, compile=True)
    monkeypatch.undo()
    result = benchmark(model, 8, warmup=1, iters=3, compile=True)
    assert result.env["compiled"] is True and result.median_ms > 0


_FAULTS_AFTER_REALLOCATING = """
import resource, sys, torch
from tokenred.timing import environment, keep_freed_memory
described = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(5):             # 64 MiB, touched, freed: fresh pages each time unless kept
    before = faults()
    torch.ones(16 << 20)
    counts.append(faults() - before)
print(min(counts[1:]), "|", described, "|",
      environment(torch.device("cpu"), torch.float32, False)["allocator"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.parametrize("setting", ["kept", "default"])
def test_timing_keeps_freed_memory_and_records_it(setting):
    """With the setting, a 64 MiB block allocated again after its free reuses freed pages (no
    fault per 4 KiB page, at least once the heap has a hole that size); TOKENRED_MALLOC=default
    leaves glibc's own behaviour (the block is mmapped and unmapped, its 16384 pages faulted
    every time). Run in a fresh interpreter: the setting is process-wide and lasting."""
    env = {k: v for k, v in os.environ.items() if k != "TOKENRED_MALLOC"}
    if setting == "default":
        env["TOKENRED_MALLOC"] = "default"
    out = subprocess.run([sys.executable, "-c", _FAULTS_AFTER_REALLOCATING], env=env,
                         capture_output=True, text=True, check=True).stdout
    faults, described, recorded = (part.strip() for part in out.strip().split("|"))
    assert described == recorded
    if setting == "kept":
        assert "freed memory kept" in described and int(faults) < 1000
    else:
        assert described.endswith("(TOKENRED_MALLOC=default)") and int(faults) >= 16000


def test_stored_timings_are_keyed_by_the_allocator_setting():
    from tokenred.measure import Protocol
    from tokenred.timing import freed_memory_kept

    protocol = Protocol(torch.device("cpu"), torch.float32, False, 1, 1, 0, 1, 1)
    assert protocol.timing()["freed_memory_kept"] is freed_memory_kept()


def test_a_compiled_scans_build_decides_ssm_timings_but_not_vit_ones(monkeypatch):
    """A store must not hand back a timing of another kernel build (the one-thread cpp build of
    earlier sessions, a changed kernel): the build is part of an SSM's timing key."""
    from tokenred import measure
    from tokenred.measure import Keys, Protocol

    build = {"cpp": "tokenred_scan_cpu_0123456789ab"}
    monkeypatch.setattr(measure, "scan_build", lambda backend: build.get(backend))
    cpp = Protocol(torch.device("cpu"), torch.float32, False, 8, 8, 1, 2, 2, scan="cpp")
    ssm = Keys("vmamba_tiny_s1l8", 224, {"seed": 0}, cpp)
    vit = Keys("deit_small_patch16_224", 224, {"seed": 0}, cpp, scans=False)
    before = ssm.key("none", "timing")
    assert cpp.timing()["scan_build"] == build["cpp"] and "scan_build" not in cpp.timing(False)
    assert ssm.legacy("none", "timing") is None              # no older key form had a build
    build["cpp"] = "tokenred_scan_cpu_ba9876543210"         # the kernel rebuilt: timed again
    assert ssm.key("none", "timing") != before
    assert vit.key("none", "timing") == Keys("deit_small_patch16_224", 224, {"seed": 0},
                                             Protocol(torch.device("cpu"), torch.float32, False,
                                                      8, 8, 1, 2, 2, scan="torch"),
                                             scans=False).key("none", "timing")
    assert ssm.key("none", "flops") == Keys("vmamba_tiny_s1l8", 224, {"seed": 0}, cpp).key(
        "none", "flops")
    from tokenred.kernels import scan_build
    assert scan_build("torch") is None and scan_build("reference") is None
