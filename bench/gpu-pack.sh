#!/usr/bin/env bash
# Packs what bench/gpu.sh needs on a lent GPU machine that has torch but no internet and no copy of the
# data: the pure-Python wheels spine-hf needs beyond that machine's image, and an evenly spaced subset of
# the knee data (every grade, train and val kept apart, real files byte for byte). Writes .gpu/ (ignored).
#
#   bash bench/gpu-pack.sh [TRAIN_IMAGES] [VAL_IMAGES]     (defaults 900 and 250: about 41 MB of PNGs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/wheels
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
  datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0 timm==1.0.31 \
  draccus==0.11.6 mergedeep==1.3.4 toml==0.10.2
"$PY" - "${1:-900}" "${2:-250}" <<'PY'
import shutil, sys
from pathlib import Path

source, out = Path("../shared/data/knee-kl224"), Path(".gpu/knee")
for split, want in (("train", int(sys.argv[1])), ("val", int(sys.argv[2]))):
    files = sorted(p for p in (source / split).rglob("*.png"))
    step = len(files) / want
    picked = [files[int(i * step)] for i in range(want)]  # sorted by grade folder, so every grade keeps its share
    for path in picked:
        target = out / split / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    print(split, len(picked), "images")
PY
du -sh .gpu/wheels .gpu/knee
