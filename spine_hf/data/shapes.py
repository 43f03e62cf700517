"""The shapes of a dataset's images, and the model input shape chosen from them.

Spine films are not square: a full-spine AP film is about 2.6:1 (height:width), a lateral lumbar film
1.2-1.5:1, a knee crop 1:1. `spine-hf data convert` records each split's image sizes in the dataset
folder (``image_sizes.json``: median, smallest and largest height:width, height and width), `verify`
warns when one split mixes very different aspects (AP and lateral films together: one input shape
squashes one kind), and ``model.aspect: data`` turns one side into the training split's median
aspect at about the same pixel count, each side a multiple of the backbone's stride or patch size
(`shape_for`; `models.build.resolve_shape` applies it): 128 on 2.6:1 films gives 208 x 80.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

SIZES_FILE = "image_sizes.json"
# A split whose aspects (height:width) spread more than this between its 5th and 95th percentile mixes kinds
# of film (AP 2.6:1 beside lateral 1.3:1 is 2x); the spread within one kind of film is well below it.
MIXED_ASPECT_RATIO = 1.5
# A convolutional backbone (ResNet, ConvNeXt, EfficientNet) takes any size; sides in steps of 16 keep its feature
# maps even down to stride 16 without forcing a 2.6:1 aspect at small sizes into steps of 32 (192 x 64 is 3:1).
CNN_STEP = 16


def summarise(sizes: list[tuple[int, int]]) -> dict:
    """What `image_sizes.json` holds for one split, from (height, width) per image."""
    heights, widths = np.array([s[0] for s in sizes], float), np.array([s[1] for s in sizes], float)
    aspects = heights / widths
    return {
        "images": len(sizes),
        "aspect": {"median": _round(np.median(aspects)), "min": _round(aspects.min()), "max": _round(aspects.max()),
                   "p05": _round(np.percentile(aspects, 5)), "p95": _round(np.percentile(aspects, 95))},
        "height": {"median": int(np.median(heights)), "min": int(heights.min()), "max": int(heights.max())},
        "width": {"median": int(np.median(widths)), "min": int(widths.min()), "max": int(widths.max())},
    }  # fmt: skip


def _round(value: float) -> float:
    return round(float(value), 3)


def write_sizes(folder: str | os.PathLike, splits: dict[str, list[tuple[int, int]]]) -> dict:
    """Write ``image_sizes.json`` (split -> `summarise`) into a dataset folder; returns what it wrote."""
    summary = {split: summarise(sizes) for split, sizes in splits.items() if sizes}
    text = json.dumps({"note": "height:width of the images as converted, per split", "splits": summary}, indent=2)
    (Path(folder) / SIZES_FILE).write_text(text + "\n", encoding="utf-8")
    return summary


def read_sizes(folder: str | os.PathLike) -> dict | None:
    """split -> `summarise` from a dataset folder's ``image_sizes.json``, or None for a folder converted without it."""
    path = Path(folder) / SIZES_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))["splits"]


def split_sizes(split) -> list[tuple[int, int]]:
    """(height, width) of every row of a converted split, from the image headers (nothing is decoded)."""
    import io

    from datasets import Image as ImageFeature
    from PIL import Image

    sizes = []
    for cell in split.cast_column("image", ImageFeature(decode=False))["image"]:
        source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
        with Image.open(source) as image:
            sizes.append((image.height, image.width))
    return sizes


def mixed_aspect(summary: dict) -> str | None:
    """A warning's text when one split's aspects spread like two kinds of film (`MIXED_ASPECT_RATIO`), else None."""
    aspect = summary["aspect"]
    if aspect["p95"] / aspect["p05"] <= MIXED_ASPECT_RATIO:
        return None
    return (f"its images' height:width ranges from {aspect['p05']:.2f} to {aspect['p95']:.2f} (5th to 95th "
            f"percentile; median {aspect['median']:.2f}): different kinds of film (AP and lateral?) in one split. One "
            "input shape squashes some of them; train one model per kind, or choose the shape with care (README: "
            "how to pick a shape)")  # fmt: skip


def shape_for(side: int, aspect: float, step: int) -> tuple[int, int]:
    """(height, width), each a multiple of `step` (at least one), whose height:width is nearest `aspect` and whose
    pixels nearest side x side (the aspect weighs twice the pixel count)."""

    def near(target: float) -> list[int]:
        middle = round(target / step)
        return [step * n for n in range(max(1, middle - 2), middle + 3)]

    def cost(shape: tuple[int, int]) -> float:
        height, width = shape
        return abs(math.log(height / width / aspect)) + 0.5 * abs(math.log(height * width / side**2))

    pairs = [(h, w) for h in near(side * math.sqrt(aspect)) for w in near(side / math.sqrt(aspect))]
    return min(pairs, key=cost)
