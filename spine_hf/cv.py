"""Cross-validation, launched as accelerate expects a script (the library code is
`spine_hf.training.cross_validation`).

    spine-hf cv --config_path configs/knee-cpu.yaml --folds 5 [--seed 42] [--fold K] [--distill [W]] [--key=value ...]
    accelerate launch -m spine_hf.cv --config_path FILE --folds 5      # the same on N processes
"""

from __future__ import annotations

import argparse
import sys

from spine_hf.config import parse_config, report_error


def build_parser() -> argparse.ArgumentParser:
    """The fold options; everything else is the training configuration (`spine_hf.config`)."""
    parser = argparse.ArgumentParser(prog="spine-hf cv", add_help=False, allow_abbrev=False)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fold", type=int)
    parser.add_argument("--group-regex")
    parser.add_argument("--distill", type=float, nargs="?", const=0.5)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the fold options and the training configuration, cross-validate, print the out-of-fold metrics."""
    from spine_hf import setup_logging
    from spine_hf.predict.out_of_fold import OOF_FILE
    from spine_hf.training.cross_validation import CV_METRICS_FILE, ENSEMBLE_DIR, SCALARS, cross_validate

    args, rest = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(rest):
        print("spine-hf cv --config_path FILE [--folds 5] [--seed 42] [--fold K] [--group-regex RE] [--distill [W]] "
              "[--section.key=value ...]\n  --folds: how many folds; --seed: which patients go to which fold "
              "(training randomness is --train.seed); --fold K: train fold K (0-based) alone; --group-regex: "
              "patient id from the file name, for datasets without a patient column; --distill: once the folds "
              "are done, also train one network on the best fold's rows that learns from the out-of-fold "
              "probabilities with weight W (default 0.5) beside the labels, and make it the ensemble's own "
              "network if it grades that fold's held-out images better. The training configuration "
              "follows:\n")  # fmt: skip
    setup_logging()
    try:
        result = cross_validate(parse_config(rest), folds=args.folds, seed=args.seed, only=args.fold,
                                group_regex=args.group_regex, distill=args.distill)  # fmt: skip
    except (ValueError, OSError) as err:  # a ConfigError is a ValueError
        return report_error(err)
    from accelerate import PartialState  # only once a run is over: `--help` and bad settings need no torch

    if not PartialState().is_main_process:
        return 0
    for warning in result.folds.warnings:
        print(f"WARNING {warning}")
    if result.missing:
        print(f"folds done: {result.folds.count - len(result.missing)} of {result.folds.count}; still to train: "
              f"{', '.join(map(str, result.missing))} (run cv again, or --fold K for each)")  # fmt: skip
        return 0
    metrics = result.metrics
    print(f"out-of-fold over {metrics['count']} images of {metrics['patients']} patients, {metrics['folds']} folds "
          f"(95% intervals by patient):")  # fmt: skip
    for name in SCALARS:
        entry, spread = metrics["metrics"][name], metrics["fold_spread"][name]
        print(f"  {name:18s} {entry['value']:.4f}  [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}]   folds "
              f"{spread['min']:.4f}..{spread['max']:.4f} (sd {spread['std']:.4f})")  # fmt: skip
    if "distilled" in metrics:
        distilled, fold = metrics["distilled"], metrics["distilled"]["fold"]
        print(f"distilled network: held-out QWK {distilled['held_out_qwk']['distilled']:.4f} on fold_{fold}'s images "
              f"against fold_{fold}'s {distilled['held_out_qwk'][f'fold_{fold}']:.4f}")  # fmt: skip
    print(f"wrote {OOF_FILE}, {CV_METRICS_FILE} and the fold ensemble {result.out / ENSEMBLE_DIR} (its own network, "
          f"what pipeline() and timm load: {metrics['ensemble']['single_network']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
