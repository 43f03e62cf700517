"""How fast the training loader can feed a device: images/s per CPU core, and the cores 3,000 img/s need.

* (a) from the decoded cache, as training reads it: `GradeImages` + `collate_squares` ship uint8
  batches and augmentation runs on the device, so the loader's CPU work is copying squares out of the
  memory map and stacking them;
* (b) from the files themselves: decoding each one with the project's decoder and squashing it to the
  square, which is what a loader without the cache would do for every image in every epoch.

Both are measured in this one process with one torch thread, so they are per core; 3,000 img/s
(what one H100/H200 trains ResNet-50 at in bf16) divided by them is the number of cores it takes.
The cache is built once per side in the work folder (its build time is reported too: decoding with
every core, in worker processes).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench.data import ensure_dataset
from bench.report import Report

TARGET = 3000.0  # img/s a fast GPU trains at (ResNet-50, bf16)


def bench_loader(args, report: Report, work: Path, tree: Path) -> None:
    from torch.utils.data import DataLoader

    from spine_hf.config import DataConfig
    from spine_hf.data.dataset_folder import load_grade_dataset
    from spine_hf.data.imaging import is_image_file
    from spine_hf.models.preprocessing import Preprocessing
    from spine_hf.training.transforms import GradeImages, collate_squares

    split = load_grade_dataset(ensure_dataset(tree, work))["train"]
    split = split.select(range(min(args.loader_images, len(split))))
    files = sorted(str(p) for p in (tree / "train").rglob("*") if p.is_file() and is_image_file(p))[:200]
    cfg = DataConfig(cache_dir=str(work / "squares"))
    threads = torch.get_num_threads()
    print(f"\nloader: {len(split)} training images, batch {args.batch_size}, one process and one torch thread")
    torch.set_num_threads(1)
    try:
        for side in (224, 512):
            # The training dataset over the cache of this side (built here the first time).
            images = GradeImages(split, Preprocessing(side, (0.5,) * 3, (0.5,) * 3), cfg, train=False)
            build = images.decode_seconds
            loader = DataLoader(images, batch_size=args.batch_size, shuffle=True, collate_fn=collate_squares)
            cached = _rate(lambda loader=loader: _drain(loader))
            decoded = _rate(lambda side=side: _decode(files, side)) if files else None
            report.number(f"loader.cache_{side}_images_per_s_per_core", cached)
            report.number(f"loader.files_{side}_images_per_s_per_core", decoded)
            report.number(f"loader.cache_{side}_build_seconds", build if images.decoded else None)
            what = "CPU cores the cached loader needs for 3,000 img/s (augmentation on the device)"
            goal = 2.0 if side == 224 else 8.0
            report.ratio(f"loader.cores_for_3000_per_s_at_{side}", TARGET / cached, goal, "lower", what)
            shown = f"{decoded:.0f} img/s per core ({TARGET / decoded:.1f} cores for 3,000)" if decoded else "n/a"
            report.say(f"{side} px: from the cache {cached:.0f} img/s per core; from the files {shown}; cache "
                       + (f"built in {build:.1f} s" if images.decoded else "already there"))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    if files:
        report.number("loader.source_mean_megapixels", statistics.mean(_megapixels(f) for f in files))


def _drain(loader) -> int:
    count = 0
    for _, labels in loader:
        count += len(labels)
    return count


def _decode(files: list[str], side: int) -> int:
    from spine_hf.data.imaging import decode_image
    from spine_hf.models.preprocessing import square

    for file in files:
        square(decode_image(file), side)
    return len(files)


def _rate(run) -> float:
    """Images per second of `run()` (which returns how many it handled): the best of three rounds."""
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - start))
    return max(rates)


def _megapixels(path: str) -> float:
    from PIL import Image

    with Image.open(path) as image:
        return image.width * image.height / 1e6
