"""`python -m bench`: spine-hf's benchmarks, from a checkout of the repository.

    python -m bench all     [--data DIR] [--model resnet18] [--image-size 224] [--batch-size 32] [--json FILE]
    python -m bench train | predict | cold | convert | loader | quality | large
    python -m bench levers  --data DIR [--levers progressive,lr] [--budget-minutes 8] [--precision fp32]
    python -m bench trust --data DIR --model-dir MODEL
    python -m bench cv    --data DIR [--folds 5] [--budget-minutes 11] [--hold-out 0.15] [--reuse-runs] [--distill]
    python -m bench audit --data DIR [--flip 0.05] [--folds 5] [--budget-minutes 6] [--reuse-runs]
    python -m bench shapes --data DIR [--image-size 128] [--folds 3] [--budget-minutes 4] [--reuse-runs]

* train, predict, cold, convert: `bench.speed`; loader: `bench.loader`; quality and levers (what each
  of the recipe's levers does to time to quality, alone and together): `bench.quality`;
  large: `bench.large` (full-size radiographs, two training processes); trust: `bench.trust`
  (grade ranges' coverage and the referral, for a model trained on DIR); cv: `bench.cv`
  (cross-validation against one split, the fold ensemble, its calibration, its cost); audit:
  `bench.cv` too (the label audit against labels moved on purpose); shapes: `bench.shapes` (tall films
  squashed into a square against their own aspect, out of fold, at one time budget); all: convert,
  train, predict and loader.

Every arm runs in this process, on this machine, one after the other, so the ratios compare like with
like on a noisy machine; absolute numbers are printed for context only. DIR is a split tree of grade
folders (e.g. ``../shared/data/knee-kl224``); without it the benchmarks run on synthetic phantoms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.cv import bench_audit, bench_cv
from bench.data import prepare_tree
from bench.large import bench_large
from bench.loader import bench_loader
from bench.quality import LEVERS, bench_levers, bench_quality
from bench.report import Report, machine_context
from bench.shapes import bench_shapes
from bench.speed import bench_cold, bench_convert, bench_predict, bench_train
from bench.trust import bench_trust

COMMANDS = {"train": bench_train, "predict": bench_predict, "cold": bench_cold, "convert": bench_convert,
            "quality": bench_quality, "levers": bench_levers, "loader": bench_loader, "large": bench_large,
            "trust": bench_trust, "cv": bench_cv, "audit": bench_audit, "shapes": bench_shapes}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what",
        choices=[
            "train",
            "predict",
            "cold",
            "convert",
            "loader",
            "quality",
            "levers",
            "large",
            "trust",
            "cv",
            "audit",
            "shapes",
            "all",
        ],
        help="all = convert, train, predict, cold and loader (quality takes about 45 minutes on its own; "
        "large about 30 the first time, 10 once its data exist)",
    )
    parser.add_argument("--data", help="split tree of grade folders to run on (default: synthetic phantoms)")
    parser.add_argument("--model", default="resnet18", help="timm or transformers model name (default resnet18)")
    parser.add_argument("--image-size", type=_image_size,
                        help="one side, or HEIGHTxWIDTH for a tall input (512x192); default 224 "
                             "(quality: the recipe's, 128)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32"],
        default="auto",
        help="what the project's recipe computes in (train, quality): auto = its own setting, bf16 where the "
        "device computes bf16 natively; fp32 = as on a CPU without native bf16, on any machine. The usual "
        "recipe always computes in fp32",
    )
    parser.add_argument("--json", help="also write the ratios and the numbers behind them to this JSON file")
    parser.add_argument("--work", default="outputs/bench", help="scratch folder (datasets, model folders)")
    parser.add_argument("--steps", type=int, default=32, help="timed training steps per arm (train)")
    parser.add_argument("--repeats", type=int, default=20, help="timed one-image predictions per arm (predict)")
    parser.add_argument("--cold-runs", type=int, default=5, help="whole-process runs per arm (cold)")
    parser.add_argument("--model-dir", help="a saved model folder for predict (default: random weights); "
                        "for trust, a model trained on --data (required)")  # fmt: skip
    parser.add_argument("--halvings", type=int, default=20, help="random halvings of validation by patient (trust)")
    parser.add_argument("--budget-minutes", type=float, default=19.0,
                        help="training minutes per recipe (quality) or arm (levers)")  # fmt: skip
    parser.add_argument("--levers", default=",".join([*LEVERS, "compile"]),
                        help=f"levers to run alone and together, and whether to time torch.compile (levers; default "
                        f"all: {', '.join([*LEVERS, 'compile'])})")  # fmt: skip
    parser.add_argument("--loader-images", type=int, default=2000, help="training images the loader bench uses")
    parser.add_argument(
        "--large-images",
        type=int,
        default=3000,
        help="full-size training radiographs `large` makes (and a tenth of that for validation)",
    )
    parser.add_argument("--phantoms-per-grade", type=int, default=120, help="phantoms made when there is no --data")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (cv)")
    parser.add_argument("--hold-out", type=float, default=0.15,
                        help="share of patients held back from train and validation as a test split (cv)")  # fmt: skip
    parser.add_argument("--group-regex", default=r"^(\d+)",
                        help="patient id from the file name (cv; default: the knee files' leading digits)")  # fmt: skip
    parser.add_argument("--flip", type=float, default=0.05,
                        help="audit: share of the pool's labels moved one grade (default 0.05)")  # fmt: skip
    parser.add_argument("--reuse-runs", action="store_true",
                        help="cv: measure the runs an earlier call left in --work again, training nothing")  # fmt: skip
    parser.add_argument("--distill", type=float, nargs="?", const=0.5,
                        help="cv: also a network distilled from the folds (`spine-hf cv --distill`, the teacher's "
                             "weight; trained unless an earlier call left it) against the best fold")  # fmt: skip
    return parser


def _image_size(text: str) -> int | list[int]:
    """`--image-size`: 224, or 512x192 (height x width)."""
    sides = [int(side) for side in text.lower().split("x")]
    if len(sides) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: give one side (224) or HEIGHTxWIDTH (512x192)")
    return sides[0] if len(sides) == 1 else sides


def run(args) -> Report:
    """Run `args.what` ("all" = convert, train, predict, cold, loader) and print/write the report."""
    import datasets
    import torch

    datasets.disable_progress_bars()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tree, described = prepare_tree(args, work)
    # quality, levers: the recipe's size; trust: the model folder's own
    if args.image_size is None and args.what not in ("quality", "levers", "trust", "cv", "audit", "shapes"):
        args.image_size = 224
    report = Report({**machine_context(args), "data": described})
    print(f"spine-hf bench {args.what}: {report.context['device_name']} ({report.context['device']}; "
          f"{' '.join(report.context['cpu_isa']) or 'no AVX2'}; native bf16: {report.context['native_bf16']}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; data: {described}; the project's recipe "
          f"computes in {report.context['project_precision']}, the usual recipe in fp32")  # fmt: skip
    start = time.perf_counter()
    for name in ("convert", "train", "predict", "cold", "loader") if args.what == "all" else (args.what,):
        COMMANDS[name](args, report, work, tree)
    report.number("total_seconds", time.perf_counter() - start)
    print(f"\nsummary ({time.perf_counter() - start:.0f} s):")
    for ratio in report.ratios:
        print(ratio.line())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


def main(argv: list[str] | None = None) -> int:
    from spine_hf import setup_logging

    setup_logging()
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
