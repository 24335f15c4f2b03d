#!/usr/bin/env bash
# The GPU checks and benchmarks, as one script for a lent GPU machine (see benchmarks/README.md).
# Usage: OUT=results_dir bash benchmarks/gpu_run.sh [core|rest|all]   (needs torch with CUDA and
# timm installed; triton comes with torch's CUDA wheels)
#   core (~8 min): the GPU tests (the Triton scan against float64 and torch on CUDA), the scan
#                  microbenchmark (torch / triton / mamba_ssm), VMamba-T at batch 128 fp32 and
#                  bf16 AMP against the official 1686 img/s (A100)
#   rest (~9 min): VMamba-S/B (official 877 / 646 img/s), ToMe on DeiT-S at batch 256, the
#                  reduction grids on VMamba-T and MedMamba-T, torch.compile against eager
# A device call runs at most 10 minutes: run `core` and `rest` as two calls.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/gpu-results}
PART=${1:-all}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1 \
  || { cat "$OUT/install.txt"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
python3 -c "import triton; print('triton', triton.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

bench() {   # bench NAME TIMEOUT SCRIPT ARGS...: text and JSON results under $OUT
  local name=$1 limit=$2 script=$3
  shift 3
  timeout "$limit" python3 "benchmarks/$script" "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt"
}

if [ "$PART" = core ] || [ "$PART" = all ]; then
  SHARED_LINK=0
  if [ ! -e ../shared ] && [ -d .gpu_shared ]; then ln -s "$PWD/.gpu_shared" ../shared && SHARED_LINK=1; fi
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
  [ "$SHARED_LINK" = 1 ] && rm -f ../shared
  bench scan_cuda_b128 150 selective_scan.py --device cuda --batch-size 128
  bench vmamba_vs_deit_cuda_b128 120 vmamba_vs_deit.py --device cuda --batch-size 128
  bench vmamba_vs_deit_cuda_b128_bf16amp 120 vmamba_vs_deit.py --device cuda --batch-size 128 --dtype bfloat16 --amp
fi
if [ "$PART" = rest ] || [ "$PART" = all ]; then
  bench vmamba_small_vs_deit_cuda_b128 90 vmamba_vs_deit.py --device cuda --batch-size 128 --ssm vmamba_small_s2l15
  bench vmamba_base_vs_deit_cuda_b128 90 vmamba_vs_deit.py --device cuda --batch-size 128 --ssm vmamba_base_s2l15
  bench vit_tome_cuda_b256 90 vit_overhead_and_tome.py --device cuda --batch-size 256
  bench grid_methods_cuda_b128 120 grid_methods.py --device cuda --batch-size 128 --where
  bench grid_methods_medmamba_cuda_b128 90 grid_methods.py --device cuda --batch-size 128 --backbone medmamba_tiny
  # torch.compile against eager on CUDA (the scan op's layout contract made SSM compiles possible)
  bench compile_vs_eager_cuda_b128 240 compile_vs_eager.py --device cuda --batch-size 128 \
    --pairs vmamba_tiny_s1l8=none,vmamba_tiny_s1l8=quartermap,medmamba_tiny=none,deit_small_patch16_224=tome:r=13
fi
