#!/usr/bin/env bash
# The trainings behind the bundled reference weights, as run for tokenred's shipped files: two
# lanes of one thread each on a 2-core CPU. DATA holds pbc64/{train,val,test} and
# cifar10/{train,test} (the extracted ../shared/data tarballs). Logs go to training/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-.cache/data}
PY=${PY:-.venv/bin/python}
T=training/train_reference.py
lane_a() {
  $PY $T --model deit_tiny_cifar10 --data $DATA/cifar10 --epochs 5 --time-budget 4200 > training/logs/deit_tiny_cifar10.log 2>&1
  $PY $T --model vmamba_tiny_pbc64 --data $DATA/pbc64 --epochs 8 --time-budget 1800 > training/logs/vmamba_tiny_pbc64.log 2>&1
}
lane_b() {
  $PY $T --model vmamba_tiny_cifar10 --data $DATA/cifar10 --epochs 4 --time-budget 3300 > training/logs/vmamba_tiny_cifar10.log 2>&1
  $PY $T --model medmamba_tiny_pbc64 --data $DATA/pbc64 --epochs 4 --time-budget 2400 > training/logs/medmamba_tiny_pbc64.log 2>&1
  $PY $T --model deit_tiny_pbc64 --data $DATA/pbc64 --epochs 8 --time-budget 1800 > training/logs/deit_tiny_pbc64.log 2>&1
}
lane_a & lane_b & wait
