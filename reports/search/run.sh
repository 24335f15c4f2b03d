#!/usr/bin/env bash
# The site searches whose fronts the README shows: each method on the reference models, searched
# on 256 calibration images of the full test split, the front's points evaluated on the next 1024
# (validation), the cheapest point within 0.9 validation top-1 points (QuarterMap's < 0.9-point
# claim) recommended and evaluated on the rest (held out).
# DATA holds pbc64/test and cifar10/test (the extracted ../shared/data tarballs).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-.cache/data}
TR=${TR:-.venv/bin/tokenred}
run() {  # name backbone method data [extra...]
  local name=$1 backbone=$2 method=$3 data=$4; shift 4
  $TR search --backbone "$backbone" --method "$method" --data "$data" --max-drop 0.9 \
    --out reports/search/$name --no-progress "$@" > reports/search/$name.log 2>&1
}
run quartermap_vmamba_tiny_pbc64 vmamba_tiny_pbc64 quartermap $DATA/pbc64/test
run quartermap_medmamba_tiny_pbc64 medmamba_tiny_pbc64 quartermap $DATA/pbc64/test
run quartermap_vmamba_tiny_cifar10 vmamba_tiny_cifar10 quartermap $DATA/cifar10/test
run tome_deit_tiny_pbc64 deit_tiny_pbc64 tome $DATA/pbc64/test --rates r=4,8
run evit_deit_tiny_pbc64 deit_tiny_pbc64 evit $DATA/pbc64/test
run tome_deit_tiny_cifar10 deit_tiny_cifar10 tome $DATA/cifar10/test --rates r=4,8
run evit_deit_tiny_cifar10 deit_tiny_cifar10 evit $DATA/cifar10/test
