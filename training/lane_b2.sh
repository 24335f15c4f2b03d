#!/usr/bin/env bash
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; T=training/train_reference.py; DATA=.cache/data
$PY $T --model deit_tiny_pbc64 --data $DATA/pbc64 --epochs 8 --time-budget 1800 > training/logs/deit_tiny_pbc64.log 2>&1
$PY $T --model medmamba_tiny_pbc64 --data $DATA/pbc64 --epochs 4 --time-budget 1800 > training/logs/medmamba_tiny_pbc64.log 2>&1
