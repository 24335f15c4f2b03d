#!/usr/bin/env bash
# The GPU checks and benchmarks, as one script for a lent GPU machine (see benchmarks/README.md).
# Usage: OUT=results_dir bash benchmarks/gpu_run.sh   (needs torch with CUDA and timm installed)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/gpu-results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1 \
  || { cat "$OUT/install.txt"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
SHARED_LINK=0
if [ ! -e ../shared ] && [ -d .gpu_shared ]; then ln -s "$PWD/.gpu_shared" ../shared && SHARED_LINK=1; fi
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
[ "$SHARED_LINK" = 1 ] && rm -f ../shared
timeout 200 python3 benchmarks/selective_scan.py --device cuda --batch-size 128 \
  --json "$OUT/scan_cuda_b128.json" 2>&1 | tee "$OUT/scan_cuda_b128.txt"
timeout 150 python3 benchmarks/vmamba_vs_deit.py --device cuda --batch-size 128 \
  --json "$OUT/vmamba_vs_deit_cuda_b128.json" 2>&1 | tee "$OUT/vmamba_vs_deit_cuda_b128.txt"
timeout 150 python3 benchmarks/vit_overhead_and_tome.py --device cuda --batch-size 256 \
  --json "$OUT/vit_tome_cuda_b256.json" 2>&1 | tee "$OUT/vit_tome_cuda_b256.txt"
timeout 300 python3 benchmarks/grid_methods.py --device cuda --batch-size 128 --where \
  --json "$OUT/grid_methods_cuda_b128.json" 2>&1 | tee "$OUT/grid_methods_cuda_b128.txt"
# torch.compile against eager on CUDA (the scan op's layout contract made SSM compiles possible)
timeout 420 python3 benchmarks/compile_vs_eager.py --device cuda --batch-size 128 \
  --pairs vmamba_tiny_s1l8=none,vmamba_tiny_s1l8=quartermap,medmamba_tiny=none,deit_small_patch16_224=tome:r=13 \
  --json "$OUT/compile_vs_eager_cuda_b128.json" 2>&1 | tee "$OUT/compile_vs_eager_cuda_b128.txt"
