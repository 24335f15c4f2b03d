#!/usr/bin/env bash
# second, low-learning-rate stages (one epoch from the first stage's weights) for the CIFAR-10
# models whose first stage the time budget cut short
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; T=training/train_reference.py; DATA=.cache/data; W=tokenred/weights
while kill -0 "$1" 2>/dev/null; do sleep 20; done
$PY $T --model vmamba_tiny_cifar10 --data $DATA/cifar10 --epochs 1 --lr 3e-4 --warmup-epochs 0 \
  --init $W/vmamba_tiny_cifar10.safetensors > training/logs/vmamba_tiny_cifar10.stage2.log 2>&1
top=$($PY -c "import json; print(json.load(open('$W/cards.json'))['deit_tiny_cifar10']['test_top1'])")
if $PY -c "import sys; sys.exit(0 if $top < 62 else 1)"; then
  $PY $T --model deit_tiny_cifar10 --data $DATA/cifar10 --epochs 1 --lr 3e-4 --warmup-epochs 0 \
    --init $W/deit_tiny_cifar10.safetensors > training/logs/deit_tiny_cifar10.stage2.log 2>&1
fi
