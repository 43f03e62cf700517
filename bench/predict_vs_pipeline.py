"""Predictor vs transformers.pipeline("image-classification") on the same saved model and files.

    python bench/predict_vs_pipeline.py MODEL_DIR IMAGE_DIR [--repeats 30]

Both go from file path to grade probabilities; both run in this process, one after the other, so the
printed ratios compare like with like on a noisy machine (absolute times mean little).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    from transformers import pipeline
    from transformers.utils import logging

    from spine_hf.inference import Predictor

    logging.disable_progress_bar()
    files = [str(p) for p in sorted(Path(args.images).rglob("*.png"))[:64]]
    if len(files) < 64:
        raise SystemExit(f"need 64 PNG files under {args.images}, found {len(files)}")
    predictor = Predictor(args.model, batch_size=64)
    classify = pipeline("image-classification", model=args.model, top_k=5)
    predictor.predict(files[:2])
    classify(files[:2])  # warm up both
    print(f"model {args.model}, torch threads {torch.get_num_threads()}, {args.repeats} repeats (median)")
    one_ours = median_seconds(lambda: predictor.predict(files[:1]), args.repeats)
    one_pipe = median_seconds(lambda: classify(files[0]), args.repeats)
    many = max(3, args.repeats // 10)
    batch_ours = median_seconds(lambda: predictor.predict(files), many)
    batch_pipe = median_seconds(lambda: classify(files, batch_size=64), many)
    ratio = one_pipe / one_ours
    print(f"one image : Predictor {one_ours * 1e3:7.1f} ms, pipeline {one_pipe * 1e3:7.1f} ms -> {ratio:.2f}x")
    print(f"64 images : Predictor {64 / batch_ours:7.1f} img/s, pipeline {64 / batch_pipe:7.1f} img/s"
          f" -> {batch_pipe / batch_ours:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
