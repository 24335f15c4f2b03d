#!/usr/bin/env bash
# MedMamba: a second one-epoch stage at a lower learning rate when the budget-shortened first
# stage ends below 91% (the issue's floor is 90%); $1: the first stage's pid
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; T=training/train_reference.py; DATA=.cache/data; W=tokenred/weights
while kill -0 "$1" 2>/dev/null; do sleep 15; done
top=$($PY -c "import json; print(json.load(open('$W/cards.json'))['medmamba_tiny_pbc64']['test_top1'])")
if $PY -c "import sys; sys.exit(0 if $top < 91 else 1)"; then
  $PY $T --model medmamba_tiny_pbc64 --data $DATA/pbc64 --epochs 1 --lr 3e-4 --warmup-epochs 0 \
    --init $W/medmamba_tiny_pbc64.safetensors > training/logs/medmamba_tiny_pbc64.stage2.log 2>&1
fi
