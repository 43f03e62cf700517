"""`python -m bench trust`: are the grade ranges' coverage and the referral what they promise?

    python -m bench trust --data ../shared/data/knee-kl224 --model-dir outputs/knee/run/best

On the validation split of `--data` (by patient: the patient id is the leading digits of a file name,
else the file name), repeated over `--halvings` random halvings: the temperature, the grade ranges
and the referral threshold are fitted on one half, exactly as `spine-hf calibrate` fits them, and
measured on the other. Coverage and width at 80, 90 and 95 %, for the shipped score (the mass before
a grade) and for the first version's (its own mass too, the most probable grade always kept).

Referral: three scores, each higher for less familiar images, are compared by their AUROC of the
validation images (in distribution) against five kinds of images the model was not trained on:
(a) synthetic spine phantoms, (b) photographs (crops of scikit-learn's two sample photographs),
(c) the validation images inverted (MONOCHROME1 read as MONOCHROME2), (d) rotated by 90 degrees,
(e) blank and noise frames. The scores: max-softmax (Hendrycks & Gimpel 2017), energy (Liu et al.
2020), and the Mahalanobis distance of the penultimate features to the training images' (Lee et al.
2018; `spine_hf.models.referral`, described on the training split).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy.special import logsumexp, softmax

from bench.data import ensure_dataset
from bench.report import Report

COVERAGES = (0.8, 0.9, 0.95)
RATES = (0.01, 0.02, 0.05)
PATIENT = re.compile(r"^(\d+)")
# AUROC goals: far from radiographs 0.99, inverted / rotated radiographs 0.95.
KINDS = {"phantoms": 0.99, "photos": 0.99, "inverted": 0.95, "rotated": 0.95, "blank_noise": 0.99}


def bench_trust(args, report: Report, work: Path, tree: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from spine_hf.data.dataset_folder import decode_split, load_grade_split
    from spine_hf.models.referral import DEFAULT_RATE, distances, fit_description
    from spine_hf.predict.calibration import DESCRIBE_LIMIT
    from spine_hf.predict.inference import Predictor

    if not args.model_dir:
        raise SystemExit("bench trust needs --model-dir: a model trained on --data (e.g. with configs/knee-cpu.yaml)")
    print("\n== trust: conformal grade ranges and out-of-distribution referral ==", flush=True)
    dataset = ensure_dataset(tree, work)
    predictor = Predictor(args.model_dir, batch_size=64)
    report.number("trust.model", {"folder": str(args.model_dir), "image_size": predictor.preprocessing.size})
    start = time.perf_counter()
    val_rows, train_rows = load_grade_split(dataset, "validation"), load_grade_split(dataset, "train")
    if len(train_rows) > DESCRIBE_LIMIT:  # the sample `spine-hf calibrate` takes
        train_rows = train_rows.select(np.sort(np.random.default_rng(0).choice(len(train_rows), DESCRIBE_LIMIT, False)))
    val_images = decode_split(val_rows)
    labels = np.asarray(val_rows["label"])
    patients = np.array([_patient(name) for name in val_rows["file"]])
    val_features, val_logits = predictor.features(val_images)
    train_features, _ = predictor.features(decode_split(train_rows))
    outside = {name: predictor.features(images) for name, images in _outside_images(val_images, work).items()}
    counts = {"validation": len(val_images), "patients": len(set(patients)), "train_described": len(train_rows),
              **{kind: len(features) for kind, (features, _) in outside.items()}}  # fmt: skip
    report.say(f"features of {counts}: {time.perf_counter() - start:.0f} s")
    report.number("trust.counts", counts)

    # Referral scores, higher = less like the training data.
    means, precision = fit_description(train_features, np.asarray(train_rows["label"]))
    methods = {
        "max_softmax": lambda features, logits: -softmax(logits, axis=1).max(axis=1),
        "energy": lambda features, logits: -logsumexp(logits, axis=1),
        "mahalanobis": lambda features, logits: distances(features, means, precision),
    }
    inside = {name: method(val_features, val_logits) for name, method in methods.items()}
    away = {kind: {name: method(*outside[kind]) for name, method in methods.items()} for kind in outside}
    aurocs = {name: {} for name in methods}
    for kind in outside:
        for name in methods:
            truth = np.r_[np.zeros(len(inside[name])), np.ones(len(away[kind][name]))]
            aurocs[name][kind] = float(roc_auc_score(truth, np.concatenate([inside[name], away[kind][name]])))
    report.say("AUROC, validation images against each kind of outside image:")
    report.say(f"{'score':12s} " + " ".join(f"{kind:>11s}" for kind in KINDS))
    for name in methods:
        report.say(f"{name:12s} " + " ".join(f"{aurocs[name][kind]:11.4f}" for kind in KINDS))
    report.number("trust.auroc", aurocs)
    for kind, goal in KINDS.items():
        report.ratio(f"trust.auroc_{kind}", aurocs["mahalanobis"][kind], goal, "higher",
                     f"AUROC of the shipped score (Mahalanobis): knee validation vs {kind}")  # fmt: skip

    # Halvings by patient: fit on one half as `calibrate` does, measure on the other.
    from spine_hf.models.conformal import coverage_report, fit_grade_ranges
    from spine_hf.models.referral import outlier_threshold
    from spine_hf.predict.calibration import fit_temperature

    rng = np.random.default_rng(0)
    unique = np.unique(patients)
    ranges_seen = {(variant, c): [] for variant in ("shipped", "first_version") for c in COVERAGES}
    referral_seen = {rate: {"validation": [], **{kind: [] for kind in outside}} for rate in RATES}
    for _ in range(args.halvings):
        first = np.isin(patients, rng.permutation(unique)[: len(unique) // 2])
        fit, held = first, ~first
        temperature = fit_temperature(val_logits[fit], labels[fit])
        probabilities = softmax(val_logits / temperature, axis=1)
        for coverage in COVERAGES:
            ranges = fit_grade_ranges(probabilities[fit], labels[fit], coverage, "half").ranges(probabilities[held])
            ranges_seen["shipped", coverage].append(coverage_report(ranges, labels[held]))
            old = _first_version_ranges(probabilities[fit], labels[fit], probabilities[held], coverage)
            ranges_seen["first_version", coverage].append(coverage_report(old, labels[held]))
        for rate in RATES:
            try:
                threshold = outlier_threshold(inside["mahalanobis"][fit], rate)
            except ValueError:  # too few images in a half for this rate: not measured
                continue
            referral_seen[rate]["validation"].append(float((inside["mahalanobis"][held] > threshold).mean()))
            for kind in outside:
                referral_seen[rate][kind].append(float((away[kind]["mahalanobis"] > threshold).mean()))

    report.say(f"grade ranges over {args.halvings} halvings by patient (fitted on one half, measured on the other):")
    summary = {}
    for (variant, coverage), seen in ranges_seen.items():
        mean_coverage = float(np.mean([s["coverage"] for s in seen]))
        per_grade_cov = np.nanmean([[np.nan if c is None else c for c in s["per_grade_coverage"]] for s in seen], 0)
        per_grade_width = np.nanmean([[np.nan if w is None else w for w in s["per_grade_mean_width"]] for s in seen], 0)
        summary[f"{variant}@{coverage}"] = {
            "mean_coverage": mean_coverage,
            "min_coverage": float(np.min([s["coverage"] for s in seen])),
            "max_coverage": float(np.max([s["coverage"] for s in seen])),
            "mean_width": float(np.mean([s["mean_width"] for s in seen])),
            "per_grade_coverage": per_grade_cov.round(4).tolist(),
            "per_grade_mean_width": per_grade_width.round(3).tolist(),
        }
        row = summary[f"{variant}@{coverage}"]
        report.say(f"{variant:13s} {coverage:.0%}: coverage {mean_coverage:.3f} (halves {row['min_coverage']:.3f}-"
                   f"{row['max_coverage']:.3f}), width {row['mean_width']:.2f}; per grade coverage "
                   f"{_fmt(row['per_grade_coverage'], 2)}, width {_fmt(row['per_grade_mean_width'], 2)}")  # fmt: skip
    report.number("trust.ranges", summary)
    for coverage in COVERAGES:
        gap = abs(summary[f"shipped@{coverage}"]["mean_coverage"] - coverage)
        report.ratio(f"trust.coverage_gap_{int(coverage * 100)}", gap, 0.01, "lower",
                     f"|mean coverage - {coverage:.0%}| of the shipped ranges over the held-out halves")  # fmt: skip

    report.say("referral at the threshold fitted on one half (share of each kind referred, mean over halvings):")
    referral_summary = {
        rate: {kind: float(np.mean(v)) for kind, v in seen.items()}
        for rate, seen in referral_seen.items()
        if seen["validation"]
    }
    for rate, shares in referral_summary.items():
        report.say(f"rate {rate:.0%}: " + ", ".join(f"{kind} {share:.3f}" for kind, share in shares.items()))
    report.number("trust.referred", {str(rate): shares for rate, shares in referral_summary.items()})
    shipped = referral_summary.get(DEFAULT_RATE, {}).get("validation")
    what = f"share of held-out validation images referred at the shipped rate ({DEFAULT_RATE:.0%})"
    report.ratio("trust.referred_validation", shipped, 0.05, "lower", what)


def _patient(name: str) -> str:
    stem = Path(name).name
    match = PATIENT.match(stem)
    return match.group(1) if match else stem


def _fmt(values, digits: int) -> str:
    return "[" + ", ".join("-" if v is None or v != v else f"{v:.{digits}f}" for v in values) + "]"


def _first_version_ranges(fit_probs, fit_labels, probabilities, coverage) -> np.ndarray:
    """The first version's ranges: a grade's score counts its own mass, the most probable grade is always kept."""
    import math

    from spine_hf.models.conformal import growth_order, score

    scores = np.sort([score(p, y) + p[y] for p, y in zip(fit_probs, fit_labels, strict=True)])
    threshold = scores[math.ceil((len(scores) + 1) * coverage) - 1]
    out = []
    for p in probabilities:
        order = growth_order(p)
        cumulative = np.cumsum(p[order])
        members = [order[0]] + [g for g, mass in zip(order[1:], cumulative[1:], strict=True) if mass <= threshold]
        out.append((min(members), max(members)))
    return np.array(out)


def _outside_images(val_images: list, work: Path) -> dict[str, list[Image.Image]]:
    """The five kinds of images the model was not trained on, as canonical images."""
    from sklearn.datasets import load_sample_images

    from spine_hf.data.imaging import decode_image, to_canonical
    from spine_hf.data.phantoms import make_phantoms

    rng = np.random.default_rng(1)
    folder = work / "trust-phantoms"
    if not folder.is_dir():
        make_phantoms(folder, per_grade=40, seed=7, size=256)
    phantoms = [decode_image(p) for p in sorted(folder.rglob("*.png"))]
    photos = []
    for photo in load_sample_images().images:  # china.jpg and flower.jpg, 427 x 640 RGB
        height, width = photo.shape[:2]
        photos.append(to_canonical(photo))
        for _ in range(99):  # crops of 30-100 % of the shorter side, any aspect
            h = int(rng.uniform(0.3, 1.0) * height)
            w = min(width, int(h * rng.uniform(0.6, 1.6)))
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            crop = to_canonical(photo[top : top + h, left : left + w])
            photos.append(ImageOps.mirror(crop) if rng.random() < 0.5 else crop)
    inverted = [ImageOps.invert(image) for image in val_images]
    rotated = [image.transpose(Image.Transpose.ROTATE_90 if i % 2 else Image.Transpose.ROTATE_270)
               for i, image in enumerate(val_images)]  # fmt: skip
    frames = []
    for i in range(100):
        side = int(rng.integers(200, 520))
        kind = i % 5
        if kind == 0:  # blank at any level
            pixels = np.full((side, side), rng.integers(0, 256), np.float64)
        elif kind == 1:  # Gaussian noise
            pixels = rng.normal(rng.uniform(40, 215), rng.uniform(5, 60), (side, side))
        elif kind == 2:  # uniform noise
            pixels = rng.uniform(0, 255, (side, side))
        elif kind == 3:  # smooth blobs: a mis-windowed, out-of-focus frame
            small = rng.uniform(0, 255, (8, 8)).astype(np.uint8)
            pixels = np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC), np.float64)
        else:  # a near-blank frame: a ramp of a few grey levels with sensor noise
            ramp = np.linspace(rng.uniform(0, 200), rng.uniform(0, 200), side)[None, :].repeat(side, 0)
            pixels = ramp + rng.normal(0, 2, (side, side))
        frames.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return {"phantoms": phantoms, "photos": photos, "inverted": inverted, "rotated": rotated, "blank_noise": frames}
