"""The data and configuration every benchmark runs on.

The image folder is `--data` (a split tree of grade folders, e.g. ``../shared/data/knee-kl224``),
or, without it, synthetic phantoms made once in the work folder. The project's recipe is
``configs/knee-cpu.yaml`` of this checkout, with the benchmark's model and sizes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from spine_hf.models.preprocessing import as_shape, shape_name

# The checkout's configs (bench/ lives beside them; it is not part of the installed package).
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPE = "knee-cpu.yaml"


def prepare_tree(args, work: Path) -> tuple[Path, str]:
    """The image folder to benchmark on: --data, else synthetic phantoms (made once in `work`)."""
    if args.data:
        if not (Path(args.data) / "train").is_dir():
            raise FileNotFoundError(f"--data {args.data}: expected a split tree with train/ and val/ grade folders")
        return Path(args.data), f"{args.data}"
    from spine_hf.data.phantoms import make_phantoms
    from spine_hf.data.split import split_dataset

    tree = work / "phantoms" / "split"
    if not tree.is_dir():
        shutil.rmtree(work / "phantoms", ignore_errors=True)
        make_phantoms(work / "phantoms" / "pool", per_grade=args.phantoms_per_grade, seed=0, size=256)
        split_dataset(work / "phantoms" / "pool", tree, ratios=(0.7, 0.3, 0.0), seed=0)
    return tree, f"synthetic phantoms ({tree}, 256 px)"


def validation_folder(tree: Path) -> Path:
    for name in ("val", "validation", "valid"):
        if (tree / name).is_dir():
            return tree / name
    raise FileNotFoundError(f"{tree} has no val/ or validation/ folder")


def ensure_dataset(tree: Path, work: Path) -> Path:
    """The converted dataset of `tree` (built once per work folder and tree)."""
    from spine_hf.data.convert import convert_to_dataset

    out = work / "dataset"
    stamp = out / "bench_source.txt"
    if not (stamp.is_file() and stamp.read_text() == str(tree.resolve())):
        convert_to_dataset(tree, out, overwrite=True)
        stamp.write_text(str(tree.resolve()))
    return out


def recipe_config(args, dataset: Path, output_dir: Path, *extra: str):
    """The project's recipe for this data (`configs/knee-cpu.yaml`) with the benchmark's model and sizes."""
    from spine_hf.config import parse_config

    size = [f"--model.image_size={args.image_size}"] if args.image_size else []
    if getattr(args, "precision", "auto") == "fp32":  # as on a CPU without native bf16, on any machine
        size.append("--train.mixed_precision=no")
    if torch.cuda.is_available():  # a GPU outruns one CPU process preparing batches: use the machine's cores
        size.append(f"--data.num_workers={min(8, max(1, (os.cpu_count() or 2) - 2))}")
    return parse_config(
        [
            "--config_path", str(REPO_CONFIGS / RECIPE),
            f"--data.dataset={dataset}", f"--train.output_dir={output_dir}", "--train.overwrite=true",
            f"--model.name={args.model}", f"--train.batch_size={args.batch_size}", "--data.test_split=",
            *size, *extra,
        ]
    )  # fmt: skip


def random_model_folder(args, work: Path) -> Path:
    """A model folder of the benchmark's architecture (random weights: speed does not depend on them)."""
    from spine_hf.config import parse_config
    from spine_hf.models.build import build_model
    from spine_hf.models.folder import save_for_hub

    out = work / f"predict-{args.model.replace('/', '_')}-{shape_name(as_shape(args.image_size))}"
    if not (out / "config.json").is_file():
        cfg = parse_config(["--config_path", str(REPO_CONFIGS / RECIPE), f"--model.name={args.model}",
                            f"--model.image_size={args.image_size}"])  # fmt: skip
        model, preprocessing = build_model(cfg.model)
        save_for_hub(model, cfg, preprocessing, out)
    return out
