#!/usr/bin/env bash
# The benchmarks on a CUDA machine, in under 5 minutes: data path vs model-only, model FLOP
# utilisation (achieved FLOP/s of the training step vs measured bf16 matmul FLOP/s), Predictor vs
# pipeline, convert vs a PIL loop, and time to quality against the usual recipe with a short budget.
#
#   bash bench/gpu.sh            (run from anywhere; writes outputs/bench/gpu-*.json)
#
# Uses ../shared/data/knee-kl224 when it is there, else synthetic phantoms.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/spine-hf ]; then
  python3 -m venv .venv && .venv/bin/pip install -q -e .
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
OUT=outputs/bench
mkdir -p "$OUT"
# 1, 3, 4, 5: a bigger model and batch than on a CPU, so the GPU has work to do.
timeout 150 .venv/bin/spine-hf bench all --model resnet50 --image-size 224 --batch-size 128 --steps 24 \
  --repeats 30 --json "$OUT/gpu-all.json"
# 2: both recipes for 1.2 minutes of training each (the knee recipe's model and size).
timeout 170 .venv/bin/spine-hf bench quality --budget-minutes 1.2 --batch-size 64 --json "$OUT/gpu-quality.json"
