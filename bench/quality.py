"""Time to quality: the usual recipe vs the project's (``configs/knee-cpu.yaml``), one after the other on the
same data and model, each for the same budget of training time: wall time to reach the usual recipe's
best validation QWK, training speed, and the best QWK each reaches within the budget.

`bench levers` measures what each of the recipe's speed-to-quality levers does: the recipe as it
stood before them, each lever alone on top of that, and all of them together, each against one run of the
usual recipe; plus two levers that need no training run to judge: `torch.compile` of the training step
(compile time against the time it saves) and test-time flip averaging of each arm's best model.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from bench.data import RECIPE, ensure_dataset, recipe_config, validation_folder
from bench.report import Report
from bench.speed import forever, fresh_accelerator_state, images_per_second, project_training

# Timed steps of the project's speed probes, at each side it trains at (6 read 57 and 78 img/s for the same
# step in one run). The usual recipe's probe times a whole epoch instead: 12 and 20 steps read it 4-17 %
# slow (40.2, 44.0 and 44.8 img/s in three probes in a row against 48.3 trained), an epoch short.
PROBE_STEPS = 20

# The recipe without the levers (the knee recipe before them), then each lever as overrides on top of it.
LEVER_BASE = (
    "--data.progressive_scale=0",
    "--data.full_side_min_scale=0",
    "--data.full_side_rotate=-1",
    "--optim.lr=0.002",
    "--optim.warmup_epochs=1",
    "--optim.label_smoothing=0",
)
PROGRESSIVE = ("--data.progressive_scale=0.75",)
LEVERS = {
    "progressive": PROGRESSIVE,
    # The light crop at full side acts only with progressive resizing, so this lever brings it along.
    "crop": (*PROGRESSIVE, "--data.full_side_min_scale=0.85"),
    "rotate": (*PROGRESSIVE, "--data.full_side_rotate=5"),  # the same: a lighter rotation at full side
    "lr": ("--optim.lr=0.004", "--optim.warmup_epochs=0.3", "--optim.label_smoothing=0.1"),
    "blurpool": ("--model.name=resnetblur18",),
}


def bench_quality(args, report: Report, work: Path, tree: Path) -> None:
    budget = 60 * args.budget_minutes
    dataset_dir = ensure_dataset(tree, work)
    precision = {"usual": "fp32", "project": report.context["project_precision"]}
    print(f"\nquality: {args.budget_minutes} min of training each, {train_count(tree)} training images; "
          f"usual recipe first (fp32), then the project's ({RECIPE}, {precision['project']}; native bf16 here: "
          f"{report.context['native_bf16']})")  # fmt: skip
    report.number("quality.precision", precision)
    usual = usual_arm(args, dataset_dir, work, tree, budget)
    project = project_arm(args, dataset_dir, work, tree, budget)
    best_base, time_base = usual["best"], usual["seconds_to_best"]
    time_project = seconds_to(project["curve"], best_base)
    report.number("quality.budget_minutes", args.budget_minutes)
    report.number("quality.usual_recipe_curve_seconds_qwk", usual["curve"])
    report.number("quality.project_curve_seconds_qwk", project["curve"])
    report.number("quality.project_epochs_and_sides", project["sides"])
    report.number("quality.project_schedule_length_after_each_epoch", project["schedule_lengths"])
    report.number("quality.usual_recipe_best_qwk", best_base)
    report.number("quality.project_best_qwk_within_budget", project["best"])
    report.number("quality.usual_recipe_seconds_to_its_best", time_base)
    report.number("quality.project_seconds_to_usual_best", time_project)
    report.ratio("quality.time_to_usual_best_qwk", None if time_project is None else time_project / time_base, 0.5,
                 "lower", "project's time to reach the usual recipe's best validation QWK / the usual recipe's time "
                 "to reach it")  # fmt: skip
    report.ratio("quality.training_step_speedup", project["train_ips"] / usual["train_ips"], 1.0, "higher",
                 "training img/s of the project's recipe / the usual recipe's, in these two runs")  # fmt: skip
    report.say(f"best validation QWK within {args.budget_minutes} min of training: usual recipe {best_base:.3f}, "
               f"project {project['best']:.3f}")  # fmt: skip
    check_sizing(report, "quality", budget, usual=usual, project=project)


def check_sizing(report: Report, prefix: str, budget: float, **arms: dict) -> None:
    """Each arm's training seconds, and a warning where an arm trained much less than the budget (its speed
    probe read slow, a busy machine): its comparison with the others is then not like with like; or much more
    (its probe read fast): its epochs past the budget are not counted, and its schedule ended later."""
    for name, arm in arms.items():
        report.number(f"{prefix}.{name}_trained_seconds", arm["trained"])
        minutes = f"{name} trained {arm['trained'] / 60:.1f} of {budget / 60:g} min"
        if arm["trained"] < 0.9 * budget:
            report.say(f"WARNING: {minutes} (its speed probe read slow): not a like-for-like comparison; rerun on a "
                       "quiet machine")  # fmt: skip
        elif arm.get("epochs", 0) != arm.get("epochs_at_its_speed", 0):
            report.say(f"WARNING: {name}'s schedule ended at {arm['epochs']} epochs, but at the speed it trained "
                       f"{arm['epochs_at_its_speed']} would have filled the budget: not a like-for-like comparison; "
                       "rerun on a quiet machine")  # fmt: skip
        elif arm["trained"] > 1.1 * budget:
            report.say(f"note: {minutes} (its speed probe read fast): what it reached after the budget is not "
                       "counted, and its schedule was laid over more epochs than fitted")  # fmt: skip


def bench_levers(args, report: Report, work: Path, tree: Path) -> None:
    budget = 60 * args.budget_minutes
    dataset_dir = ensure_dataset(tree, work)
    names = [name.strip() for name in args.levers.split(",") if name.strip()]
    unknown = sorted(set(names) - set(LEVERS) - {"compile"})
    if unknown:
        raise SystemExit(f"--levers: unknown {unknown}; choose from {sorted(LEVERS)} and compile")
    chosen = [name for name in names if name in LEVERS]
    arms = {"before": (), **{name: LEVERS[name] for name in chosen}}
    if len(chosen) > 1:
        arms["together"] = tuple(override for name in chosen for override in LEVERS[name])
    print(f"\nlevers: {args.budget_minutes} min of training per arm, {train_count(tree)} training images, the project "
          f"computes in {report.context['project_precision']}; arms: {', '.join(arms)}")  # fmt: skip
    report.number("levers.budget_minutes", args.budget_minutes)
    report.number("levers.arms", {name: list(overrides) for name, overrides in arms.items()})
    if "compile" in names:
        compile_probe(args, dataset_dir, work, report)
    usual = usual_arm(args, dataset_dir, work, tree, budget)
    report.number("levers.usual_recipe_curve_seconds_qwk", usual["curve"])
    check_sizing(report, "levers", budget, usual=usual)
    rows = []
    for name, overrides in arms.items():
        arm = project_arm(args, dataset_dir, work, tree, budget, *LEVER_BASE, *overrides)
        to_usual = seconds_to(arm["curve"], usual["best"])
        plain, flipped = flip_qwk(arm["cfg"], Path(arm["cfg"].train.output_dir) / "best")
        ratio = None if to_usual is None else to_usual / usual["seconds_to_best"]
        report.number(f"levers.{name}", {"curve_seconds_qwk": arm["curve"], "epochs_and_sides": arm["sides"],
                                         "train_images_per_s": arm["train_ips"], "best_qwk": arm["best"],
                                         "time_to_usual_best": ratio, "best_model_qwk": plain,
                                         "best_model_qwk_with_flip": flipped})  # fmt: skip
        rows.append((name, ratio, arm["best"], arm["train_ips"], len(arm["sides"]), flipped - plain))
        check_sizing(report, "levers", budget, **{name: arm})
    report.number("levers.usual_recipe_best_qwk", usual["best"])
    report.say(f"usual recipe: best QWK {usual['best']:.3f} at {usual['seconds_to_best'] / 60:.1f} min, "
               f"{usual['train_ips']:.1f} img/s")  # fmt: skip
    for name, ratio, best, ips, epochs, flip in rows:
        report.say(f"{name:>12}: time to the usual best {'never' if ratio is None else f'{ratio:.2f}'}, best QWK "
                   f"{best:.3f} ({best - usual['best']:+.3f}), {ips:.1f} img/s, {epochs} epochs, flip TTA "
                   f"{flip:+.3f} QWK")  # fmt: skip


def train_count(tree: Path) -> int:
    return sum(1 for p in (tree / "train").rglob("*") if p.is_file())


def seconds_to(curve: list[tuple[float, float]], qwk: float) -> float | None:
    return next((t for t, q in curve if q >= qwk), None)


def score(predictions: np.ndarray, references: np.ndarray) -> float:
    from spine_hf.predict.metrics import compute_grading_metrics

    return float(compute_grading_metrics(predictions, references)["qwk"])


def usual_arm(args, dataset_dir: Path, work: Path, tree: Path, budget: float) -> dict:
    """The usual recipe with a schedule that ends with the budget, from its own measured speed."""
    from bench.baseline import run_baseline
    from spine_hf.models.build import build_model

    images = train_count(tree)
    cfg = recipe_config(args, dataset_dir, work / "quality-project")
    ips = baseline_probe(args, cfg, tree)
    # The nearest whole number of epochs, not the most that fit: flooring 13.97 to 13 left 2 of 19 min
    # untrained. Its schedule may then run past the budget, where the hard stop scores the cut epoch. The
    # count is refitted after every epoch to the pace it trains at (`fit_epochs`).
    epochs = max(1, round(budget * ips / images))
    print(f"  usual recipe: {ips:.1f} img/s in a probe -> {epochs} epochs", flush=True)
    fresh_accelerator_state()
    baseline = run_baseline(
        lambda: build_model(cfg.model), tree / "train", validation_folder(tree), batch_size=args.batch_size,
        lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, epochs=epochs, budget_seconds=budget, score=score,
        fit_epochs=True,
    )  # fmt: skip
    curve = [(baseline.setup_seconds + t, q) for t, q in baseline.curve]
    print("  usual recipe: " + ", ".join(f"{t / 60:.1f} min QWK {q:.3f}" for t, q in curve), flush=True)
    best = max(q for _, q in curve)
    # The epochs its budget held at the speed it trained at: where its schedule ended with another count (a
    # pace that changed in its last epochs), its best QWK, which depends on the count, is not the budget's.
    at_its_speed = max(1, round(budget * baseline.images_per_second / images))
    return {"curve": curve, "best": best, "seconds_to_best": seconds_to(curve, best), "epochs": baseline.epochs,
            "epochs_at_its_speed": at_its_speed, "train_ips": baseline.images_per_second,
            "trained": baseline.curve[-1][0]}  # fmt: skip


def project_arm(args, dataset_dir: Path, work: Path, tree: Path, budget: float, *overrides: str) -> dict:
    """The project's recipe (with `overrides`), its epochs fitted to the budget from probes at every side it
    trains at and refitted after every epoch from the time its epochs took (`refit`), not by the recipe's own
    time budget (which counts the evaluations too)."""
    from spine_hf.models.preprocessing import shape_name
    from spine_hf.training.checkpoints import METRICS_FILE
    from spine_hf.training.loop import fit, fitting_epochs, prepare, shape

    images = train_count(tree)
    run = work / "quality-project"
    sizing = recipe_config(args, dataset_dir, run, *overrides, "--train.epochs=1000")
    sides = sorted({shape(sizing, epoch, 1000) for epoch in range(1000)})  # (height, width) of each size trained at
    ips = project_probe(args, dataset_dir, work, tree, sides, *overrides)
    epochs = max(1, fitting_epochs(sizing, lambda s: images / ips[s], budget))
    print(f"  project: {', '.join(f'{ips[s]:.1f} img/s at {shape_name(s)} px' for s in sides)} in a probe -> "
          f"{epochs} epochs",
          flush=True)  # fmt: skip
    shutil.rmtree(run, ignore_errors=True)
    cfg = recipe_config(args, dataset_dir, run, *overrides, f"--train.epochs={epochs}", "--train.time_budget_minutes=0",
                        f"--train.time_limit_minutes={1.25 * budget / 60}")  # fmt: skip
    fresh_accelerator_state()
    setup_start = time.monotonic()  # model, data cache: paid once per run, counted in the project's time
    prepared = prepare(cfg)
    setup = time.monotonic() - setup_start
    lengths: list[int] = []  # the schedule's length after each epoch, as refitted

    def after_epoch(training) -> None:
        refit(training, sizing, ips, images, budget)
        lengths.append(training.state.epochs)

    fit(prepared, after_epoch)
    history = json.loads((run / METRICS_FILE).read_text())
    elapsed, curve = setup, []
    for record in history:
        elapsed += record["train_seconds"]
        curve.append((elapsed, record[cfg.data.eval_split]["qwk"]))
    print("  project: " + ", ".join(f"{t / 60:.1f} min QWK {q:.3f}" for t, q in curve), flush=True)
    # Within the same budget of training time (the project's run may stop a little later).
    best = max([q for t, q in curve if t - setup <= 1.02 * budget] or [float("nan")])
    train_ips = images * len(history) / max(sum(r["train_seconds"] for r in history), 1e-9)
    return {"cfg": cfg, "curve": curve, "best": best, "train_ips": train_ips, "trained": elapsed - setup,
            "sides": [r["side"] for r in history], "schedule_lengths": lengths}  # fmt: skip


def refit(run, sizing, ips: dict[int, float], images: int, budget: float) -> None:
    """After each epoch of the project's arm: the rest of its schedule laid over the epochs that fit in what is
    left of the budget, at the pace its epochs have trained at so far (the probes' ratios between the sides for
    the sides it has not trained at yet). On a 2-core machine whose speed moves 10-20 % from minute to minute,
    probes taken before the run left its schedule 17 % short or 8 % long; the usual recipe has its hard stop."""
    from spine_hf.training.loop import fitting_epochs, record_shape

    history = run.state.history
    trained = sum(record["train_seconds"] for record in history)
    pace = trained / sum(images / ips[record_shape(record)] for record in history)  # measured / probed seconds
    epochs = fitting_epochs(sizing, lambda s: pace * images / ips[s], budget - trained, len(history))
    run.state.epochs = run.schedule.epochs = max(epochs, len(history))


def baseline_probe(args, cfg, tree: Path) -> float:
    from accelerate import Accelerator

    from bench.baseline import load_imagefolder, make_loaders, make_optimizer, train_step
    from spine_hf.models.build import build_model

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

    # A whole epoch, as its training then runs (the first steps of a process read slow).
    return images_per_second(step, ((b["pixel_values"], b["labels"]) for b in forever(loader)), len(loader), 3)


def project_probe(
    args, dataset_dir: Path, work: Path, tree: Path, sides: list[tuple[int, int]], *overrides: str
) -> dict[int, float]:
    """The project's training img/s at each side it will train at: its step and, as in training, the update
    of the weight average after it, which a training step pays too. Short probes give the ratios between the
    sides; a whole epoch at the first side, after them, gives the level (a short probe read the same step at 92
    and 131 img/s a minute apart)."""
    batches = math.ceil(train_count(tree) / args.batch_size)
    step, _, loader, _ = project_training(args, dataset_dir, work / "probe", batches, *overrides)
    timed = step
    if step.cfg.train.ema_decay:
        from timm.utils import ModelEmaV3

        model = step.accelerator.unwrap_model(step.model)
        ema = ModelEmaV3(model, decay=step.cfg.train.ema_decay, use_warmup=True)
        counter = itertools.count(1)

        def timed(pixels, labels):
            step(pixels, labels)
            ema.update(model, step=next(counter))

    speeds = {}
    for side in sides:
        step.augment.size = side
        speeds[side] = images_per_second(timed, step.batches(loader), PROBE_STEPS, 3)
    step.augment.size = sides[0]
    level = images_per_second(timed, step.batches(loader), len(loader), 0) / speeds[sides[0]]
    return {side: level * speed for side, speed in speeds.items()}


def compile_probe(args, dataset_dir: Path, work: Path, report: Report) -> None:
    """`torch.compile` of the model in the project's training step: what compiling costs, what a step gains,
    and after how much training the saving has paid the compile back (a run at several sides compiles again
    at each)."""
    step, _, loader, _ = project_training(args, dataset_dir, work / "probe", 2)
    fixed = next(step.batches(loader))  # one full batch again and again: a new shape would compile again
    eager = images_per_second(step, itertools.repeat(fixed), 6)
    step.model = torch.compile(step.model)
    start = time.perf_counter()
    step(*fixed)
    step(*fixed)
    compile_seconds = time.perf_counter() - start
    compiled = images_per_second(step, itertools.repeat(fixed), 6)
    eager_again = images_per_second(step_eager(step), itertools.repeat(fixed), 6)
    speedup = compiled / ((eager + eager_again) / 2)
    payback = compile_seconds / (1 - 1 / speedup) if speedup > 1 else None  # training seconds to break even
    report.number("levers.compile", {"compile_seconds": compile_seconds, "compiled_images_per_s": compiled,
                                     "eager_images_per_s": [eager, eager_again],
                                     "payback_training_seconds": payback})  # fmt: skip
    report.say(
        f"torch.compile of the model: {compile_seconds:.0f} s to compile, {compiled:.1f} img/s against "
        f"{eager:.1f}/{eager_again:.1f} eager (x{speedup:.2f}): "
        + ("never pays back" if payback is None else f"pays back after {payback / 60:.1f} min of training")
    )


def step_eager(step):
    """The same step with the compiled model's original module (same weights and optimizer)."""
    step.model = getattr(step.model, "_orig_mod", step.model)
    return step


@torch.inference_mode()
def flip_qwk(cfg, folder: Path) -> tuple[float, float]:
    """Validation QWK of a saved model as trained, and with its probabilities averaged over the image and its
    mirror (test-time flip)."""
    from spine_hf.data.dataset_folder import load_grade_dataset
    from spine_hf.models.folder import ModelFolder
    from spine_hf.training.transforms import GradeImages, make_loader

    saved = ModelFolder.read(folder)
    model, preprocessing = saved.load_model().eval(), saved.preprocessing
    images = GradeImages(load_grade_dataset(cfg.data.dataset)[cfg.data.eval_split], preprocessing, cfg.data, False)
    plain, flipped, labels = [], [], []
    for batch, grades in make_loader(images, cfg.train.eval_batch_size, cfg.data, shuffle=False, seed=0):
        pixels = preprocessing.normalise(batch)
        probabilities = model(pixels).softmax(1)
        plain.append(probabilities.argmax(1))
        flipped.append((probabilities + model(pixels.flip(-1)).softmax(1)).argmax(1))
        labels.append(grades)
    references = torch.cat(labels).numpy()
    return score(torch.cat(plain).numpy(), references), score(torch.cat(flipped).numpy(), references)
