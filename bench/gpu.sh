#!/usr/bin/env bash
# The benchmarks on a CUDA machine in about 5 minutes: data path vs model-only, model FLOP utilisation
# (achieved FLOP/s of the training step vs measured bf16 matmul FLOP/s), Predictor vs pipeline, convert
# vs a PIL loop (`bench all`), then time to quality against the usual recipe with a 1-minute budget.
#
#   bash bench/gpu.sh
#
# Python: $PYTHON, else .venv/bin/python, else python3 (one that has torch with CUDA). On a machine without
# internet, first run `bash bench/gpu-pack.sh` where pip works: it writes .gpu/ (wheels and a knee subset),
# which this script installs into /tmp/spine-hf-site and uses. Data: $DATA, else .gpu/knee, else
# ../shared/data/knee-kl224, else synthetic phantoms. Results: $RESULTS, else $OUT, else outputs/bench.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
WHEELS=${WHEELS:-.gpu/wheels}  # (for Python 3.12; WHEELS=none skips them)
if [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/spine-hf-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/spine-hf-site:$PYTHONPATH"
fi
DATA=${DATA:-$([ -d .gpu/knee ] && echo .gpu/knee || ([ -d ../shared/data/knee-kl224/train ] && echo ../shared/data/knee-kl224) || true)}
RESULTS=${RESULTS:-${OUT:-outputs/bench}}
WORK=${WORK:-/tmp/spine-hf-bench}
mkdir -p "$RESULTS" "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PY'
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "| " + ", ".join(
    f"{p} {m.version(p)}" for p in ("transformers", "timm", "datasets", "accelerate", "evaluate", "pyarrow")))
PY
data=(${DATA:+--data "$DATA"})
status=0
# 1, 3, 4, 5: a bigger model and batch than on a CPU, so the GPU has work to do.
timeout ${ALL_SECONDS:-170} "$PY" -m bench all --model ${MODEL:-resnet50} --image-size 224 \
  --batch-size ${BATCH:-128} --steps ${STEPS:-32} --repeats 30 --work "$WORK" "${data[@]}" \
  --json "$RESULTS/gpu-all.json" 2>&1 | tee "$RESULTS/gpu-all.log" || status=1
# 2: both recipes (the knee recipe's model and size) for the same budget of training time each.
timeout ${QUALITY_SECONDS:-200} "$PY" -m bench quality --budget-minutes ${BUDGET:-1.0} --batch-size 64 \
  --work "$WORK" "${data[@]}" --json "$RESULTS/gpu-quality.json" 2>&1 | tee "$RESULTS/gpu-quality.log" || status=1
exit $status
