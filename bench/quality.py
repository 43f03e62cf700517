"""Time to quality: the usual recipe vs the project's (``configs/knee-cpu.yaml``), one after the other on the
same data and model, each for the same budget of training time: wall time to reach the usual recipe's
best validation QWK, training speed, and the best QWK each reaches within the budget.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from bench.data import RECIPE, ensure_dataset, recipe_config, validation_folder
from bench.report import Report
from bench.speed import forever, fresh_accelerator_state, images_per_second, project_training


def bench_quality(args, report: Report, work: Path, tree: Path) -> None:
    from bench.baseline import run_baseline
    from spine_hf.checkpoints import METRICS_FILE
    from spine_hf.metrics import compute_grading_metrics
    from spine_hf.model import build_model
    from spine_hf.train import fit, prepare

    budget = 60 * args.budget_minutes
    dataset_dir = ensure_dataset(tree, work)
    cfg = recipe_config(args, dataset_dir, work / "quality-project")
    train_images = sum(1 for p in (tree / "train").rglob("*") if p.is_file())
    precision = {"usual": "fp32", "project": report.context["project_precision"]}
    print(f"\nquality: {args.budget_minutes} min of training each, {train_images} training images; "
          f"usual recipe first (fp32), then the project's ({RECIPE}, {precision['project']}; native bf16 here: "
          f"{report.context['native_bf16']})")  # fmt: skip
    report.number("quality.precision", precision)

    def score(predictions: np.ndarray, references: np.ndarray) -> float:
        return float(compute_grading_metrics(predictions, references)["qwk"])

    # Each recipe gets a schedule that ends with its budget, from its own measured speed.
    baseline_ips = baseline_probe(args, cfg, tree)
    baseline_epochs = max(1, int(budget * baseline_ips / train_images))
    print(f"  usual recipe: {baseline_ips:.1f} img/s in a probe -> {baseline_epochs} epochs", flush=True)
    fresh_accelerator_state()
    baseline = run_baseline(
        lambda: build_model(cfg.model), tree / "train", validation_folder(tree), batch_size=args.batch_size,
        lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, epochs=baseline_epochs, budget_seconds=budget,
        score=score,
    )  # fmt: skip
    base_curve = [(baseline.setup_seconds + t, q) for t, q in baseline.curve]
    print("  usual recipe: " + ", ".join(f"{t / 60:.1f} min QWK {q:.3f}" for t, q in base_curve), flush=True)

    project_ips = project_probe(args, dataset_dir, work)
    project_epochs = max(1, int(budget * project_ips / train_images))
    print(f"  project: {project_ips:.1f} img/s in a probe -> {project_epochs} epochs", flush=True)
    run = work / "quality-project"
    shutil.rmtree(run, ignore_errors=True)
    # The benchmark sizes the run itself (from the probe, as for the usual recipe), not the recipe's budget.
    cfg = recipe_config(args, dataset_dir, run, f"--train.epochs={project_epochs}", "--train.time_budget_minutes=0",
                        f"--train.time_limit_minutes={1.25 * args.budget_minutes}")  # fmt: skip
    fresh_accelerator_state()
    setup_start = time.monotonic()  # model, data cache: paid once per run, counted in the project's time
    prepared = prepare(cfg)
    setup = time.monotonic() - setup_start
    fit(prepared)
    history = json.loads((run / METRICS_FILE).read_text())
    elapsed, project_curve = setup, []
    for record in history:
        elapsed += record["train_seconds"]
        project_curve.append((elapsed, record[cfg.data.eval_split]["qwk"]))
    print("  project: " + ", ".join(f"{t / 60:.1f} min QWK {q:.3f}" for t, q in project_curve), flush=True)

    best_base = max(q for _, q in base_curve)
    time_base = next(t for t, q in base_curve if q >= best_base)
    # Within the same budget of training time (the project's run may stop a little later).
    best_project = max([q for t, q in project_curve if t - setup <= 1.02 * budget] or [float("nan")])
    time_project = next((t for t, q in project_curve if q >= best_base), None)
    project_train_ips = train_images * len(history) / max(sum(r["train_seconds"] for r in history), 1e-9)
    report.number("quality.budget_minutes", args.budget_minutes)
    report.number("quality.usual_recipe_curve_seconds_qwk", base_curve)
    report.number("quality.project_curve_seconds_qwk", project_curve)
    report.number("quality.usual_recipe_best_qwk", best_base)
    report.number("quality.project_best_qwk_within_budget", best_project)
    report.number("quality.usual_recipe_seconds_to_its_best", time_base)
    report.number("quality.project_seconds_to_usual_best", time_project)
    report.ratio("quality.time_to_usual_best_qwk", None if time_project is None else time_project / time_base, 0.5,
                 "lower", "project's time to reach the usual recipe's best validation QWK / the usual recipe's time "
                 "to reach it")  # fmt: skip
    report.ratio("quality.training_step_speedup", project_train_ips / baseline.images_per_second, 1.0, "higher",
                 "training img/s of the project's recipe / the usual recipe's, in these two runs")  # fmt: skip
    report.say(f"best validation QWK within {args.budget_minutes} min of training: usual recipe {best_base:.3f}, "
               f"project {best_project:.3f}")  # fmt: skip


def baseline_probe(args, cfg, tree: Path) -> float:
    from accelerate import Accelerator

    from bench.baseline import load_imagefolder, make_loaders, make_optimizer, train_step
    from spine_hf.model import build_model

    fresh_accelerator_state()
    accelerator = Accelerator()
    model, prep = build_model(cfg.model)
    loader, _ = make_loaders(load_imagefolder(tree / "train", validation_folder(tree)), prep.size, prep.mean,
                             prep.std, args.batch_size, args.batch_size)  # fmt: skip
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    def step(pixels, labels):
        train_step(model, {"pixel_values": pixels, "labels": labels}, optimizer, scheduler, accelerator)

    return images_per_second(step, ((b["pixel_values"], b["labels"]) for b in forever(loader)), 6)


def project_probe(args, dataset_dir: Path, work: Path) -> float:
    step, _, loader, _ = project_training(args, dataset_dir, work / "probe", 10)
    return images_per_second(step, step.batches(loader), 6)


# ------------------------------------------------------------------------------------------- run
