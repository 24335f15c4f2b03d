#!/usr/bin/env bash
# After the trainings: record the default run's sample numbers in the cards, evaluate every
# reference model x every method on the full test splits, regenerate the example report.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; DATA=${DATA:-.cache/data}
$PY training/card_sample.py
.venv/bin/tokenred compare --preset pbc64 --data $DATA/pbc64/test --batch-size 64 --out reports/pbc64 --no-progress
.venv/bin/tokenred compare --preset cifar10 --data $DATA/cifar10/test --batch-size 64 --out reports/cifar10 --no-progress
