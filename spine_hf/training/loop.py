"""Fine-tune a backbone on a converted dataset with accelerate, on one CPU, one GPU or many.

    accelerate launch -m spine_hf.train --config_path configs/quickstart.yaml [--section.key=value ...]

The shape of accelerate's examples: `prepare` (model, data, optimizer, everything `accelerator.prepare`
takes) -> `fit`: an epoch loop whose evaluation runs on `gather_for_metrics` results (so N processes
score every validation image exactly once, like one process) -> the best epoch by validation QWK
saved as a Hub-ready folder in ``output_dir/best``, then the wrap-up (test split, results, push).
Resumable checkpoints go to ``output_dir/checkpoints``; the run folder's files are named in
`checkpoints`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from spine_hf.config import Config, ConfigError, save_config
from spine_hf.data.dataset_folder import load_grade_dataset
from spine_hf.data.folds import FoldRows
from spine_hf.models.build import build_model, fixed_input_size, resolve_precision, resolve_shape
from spine_hf.models.folder import load_weights, save_for_hub
from spine_hf.models.preprocessing import Preprocessing, as_shape
from spine_hf.predict.metrics import load_grading_metric
from spine_hf.publish.hub import push
from spine_hf.training.checkpoints import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOGS_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RESULTS_FILE,
    TrainState,
    resume_state,
    save_checkpoint,
)
from spine_hf.training.losses import build_loss
from spine_hf.training.optim import WarmupCosine, make_optimizer
from spine_hf.training.transforms import (
    BatchAugment,
    GradeImages,
    grade_counts,
    make_loader,
    pooled_images,
    train_shape,
)


class DivergedError(ValueError):
    """The training loss stopped being a number; the message says what to change."""


@dataclass
class Run:
    """Everything `prepare` set up for `fit`: the prepared objects and where training stands."""

    cfg: Config
    out: Path
    accelerator: Accelerator
    model: torch.nn.Module
    # What is evaluated and saved: the EMA of the weights when train.ema_decay is set, else `model`.
    scored: torch.nn.Module
    ema: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: object
    metric: object
    train_loader: torch.utils.data.DataLoader
    eval_loader: torch.utils.data.DataLoader
    # Applied to each training batch on the device, after the loader shipped it there as uint8.
    augment: BatchAugment
    # The learning-rate schedule inside `scheduler` (its length changes when a time budget sets the epochs).
    schedule: WarmupCosine
    dataset: object
    preprocessing: Preprocessing
    state: TrainState
    # When `prepare` started (time.monotonic), for train.time_budget_minutes.
    started: float
    # Whether a time budget re-fits the schedule after every epoch (a resumed run finishes the schedule it had).
    refit: bool = True
    # When `fit` started, and the epochs done by then (what saving models and checkpoints adds to each epoch).
    fit_started: float = 0.0
    fit_epoch: int = 0
    # The schedule's length a time budget last printed.
    announced: int | None = None

    @property
    def epochs(self) -> int:
        return self.state.epochs or self.cfg.train.epochs


def train(cfg: Config) -> dict:
    """Run the whole training; returns the best validation metrics (and test metrics when scored)."""
    run = prepare(cfg)
    try:
        return fit(run)
    finally:  # trackers and the processes' group (cross-validation keeps them between folds: `fit` does not end)
        run.accelerator.end_training()


def fit(run: Run, after_epoch: Callable[[Run], None] | None = None) -> dict:
    """The epoch loop, then the wrap-up: test split, results.json, push. `after_epoch(run)` is called after each
    epoch's record is kept; it may change the length of the run (`bench quality` refits the schedule there:
    set `run.state.epochs` and `run.schedule.epochs` together, as a time budget does)."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    started = run.fit_started = time.monotonic()
    run.fit_epoch = state.epoch
    while state.epoch < run.epochs:
        epoch = state.epoch
        epoch_start = time.monotonic()
        loss, out_of_time = train_epoch(run, epoch, started)
        if not math.isfinite(loss):  # every later epoch and the saved model would be worthless: stop and say so
            raise DivergedError(
                f"epoch {epoch + 1}: the training loss is {loss}; lower optim.lr or train with "
                "--train.mixed_precision=no (on CPUs, bf16 has given NaN for inputs so narrow that the backbone's "
                "feature maps are one pixel wide, e.g. resnet18 at 48 x 16)"
            )
        train_seconds = time.monotonic() - epoch_start
        metrics = _evaluate(run.scored, run.eval_loader, accelerator, run.metric, run.preprocessing, cfg)
        predictions = metrics.pop("predictions")
        record = {
            "epoch": epoch + 1,
            "step": state.step,
            "train_loss": loss,
            "lr": run.scheduler.get_last_lr()[0],
            "seconds": round(time.monotonic() - epoch_start, 1),
            "train_seconds": round(train_seconds, 2),  # the training part alone, without evaluation
            "side": max(run.augment.size),  # of the training images (data.progressive_scale); the longer one
            "shape": list(run.augment.size),  # (height, width)
            cfg.data.eval_split: metrics,
        }
        improved = state.end_epoch(record, metrics["qwk"])
        if improved:
            _save_best(run, record, predictions)
        _log_epoch(run, record, improved)
        if cfg.train.time_budget_minutes and (run.refit or state.epochs is None):
            _fit_to_budget(run)
        if after_epoch is not None:
            after_epoch(run)
        patience_over = bool(cfg.train.patience) and state.bad_epochs >= cfg.train.patience
        last = out_of_time or patience_over or epoch + 1 == run.epochs
        if last or (cfg.train.checkpoint_epochs and (epoch + 1) % cfg.train.checkpoint_epochs == 0):
            save_checkpoint(accelerator, run.out, state, cfg.train.keep_checkpoints, run.ema)
        if patience_over:
            accelerator.print(f"no better {cfg.data.eval_split} QWK for {cfg.train.patience} epochs; stopping")
        if last:
            break
    return _finish(run)


def prepare(cfg: Config, fold: FoldRows | None = None, teacher=None, teacher_weight: float = 0.0) -> Run:
    """Build and `accelerator.prepare` everything, resume or claim the output folder; nothing trains yet.

    With `fold`, the model trains on the fold's training rows and is scored (the best epoch chosen) on
    its held-out rows, both drawn from the dataset's splits (`folds.FoldRows`), instead of
    data.train_split and data.eval_split. With `teacher` too (grade probabilities, one row per training
    row of the fold), it learns from them as well as from the labels, `teacher_weight` to
    ``1 - teacher_weight`` (`losses.build_loss`)."""
    started = time.monotonic()
    out = Path(cfg.train.output_dir)
    if cfg.train.tensorboard:
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise ConfigError("train.tensorboard needs tensorboard: pip install 'spine-hf[track]'")
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=mixed_precision(cfg.train.mixed_precision),
        log_with="tensorboard" if cfg.train.tensorboard else None,
        project_dir=str(out / LOGS_DIR),
        # uint8 batches from pinned memory (on CUDA) travel while the previous step computes.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=torch.cuda.is_available()),
    )
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    elif accelerator.device.type == "cpu":
        # `accelerate launch` sets OMP_NUM_THREADS=1 on CPU-only machines unless told --cpu; share the
        # cores among this machine's processes instead.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local, 1)))
    set_seed(cfg.train.seed)
    accelerator.print(
        f"spine-hf train: world size {accelerator.num_processes}, device {accelerator.device}, "
        f"mixed precision {accelerator.mixed_precision}, output {out}"
    )
    load_start = time.monotonic()
    dataset = load_grade_dataset(cfg.data.dataset)
    for split in (cfg.data.train_split, cfg.data.eval_split, cfg.data.test_split):
        if split and split not in dataset:
            raise ConfigError(f"{cfg.data.dataset} has no split {split!r} (it has {sorted(dataset)})")
    load_seconds = time.monotonic() - load_start
    asked = cfg.model.aspect
    cfg = resolve_shape(cfg, dataset, cfg.data.dataset)  # model.aspect=data: the training images' median aspect
    height, width = as_shape(cfg.model.image_size)
    accelerator.print(f"model input: {height} x {width} px (height x width)"
                      + (f", the {cfg.data.train_split} images' median aspect" if asked == "data" else ""))  # fmt: skip
    model, preprocessing = build_model(cfg.model)
    if cfg.data.progressive_scale and fixed_input_size(model):
        raise ConfigError(f"{cfg.model.name} takes only {height} x {width} inputs, so it cannot train at the smaller "
                          "sizes of progressive resizing: set --data.progressive_scale=0")  # fmt: skip
    cache_start = time.monotonic()
    with accelerator.local_main_process_first():  # one process per machine decodes; the others map its cache
        if fold is None:
            train_set = GradeImages(dataset[cfg.data.train_split], preprocessing, cfg.data, train=True)
            eval_set = GradeImages(dataset[cfg.data.eval_split], preprocessing, cfg.data, train=False)
            names = cfg.data.train_split, cfg.data.eval_split
        else:
            train_set = pooled_images(dataset, fold.train, preprocessing, cfg.data, train=True, teacher=teacher)
            eval_set = pooled_images(dataset, fold.held_out, preprocessing, cfg.data, train=False)
            names = "training", f"held-out ({fold.name})"
    data_seconds, decoded = load_seconds + time.monotonic() - cache_start, train_set.decoded + eval_set.decoded
    accelerator.print(  # (`python -m bench large` reads this line)
        f"data ready in {data_seconds:.2f} s: {len(train_set)} {names[0]} + {len(eval_set)} {names[1]} images, "
        + (f"{decoded} decoded into the cache" if decoded else "mapped from the decoded cache")
    )
    train_loader = make_loader(train_set, cfg.train.batch_size, cfg.data, shuffle=True, seed=cfg.train.seed)
    eval_loader = make_loader(eval_set, cfg.train.eval_batch_size, cfg.data, shuffle=False, seed=cfg.train.seed)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if teacher is not None and fold is None:
        raise ValueError("a teacher's probabilities come with a fold's training rows")
    loss_fn = build_loss(cfg.optim, grade_counts(train_set.labels), teacher_weight if teacher is not None else 0.0)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, accelerator.device)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    # accelerate steps a prepared scheduler once per process for every optimizer step.
    steps = math.ceil(len(train_loader) / cfg.train.grad_accum) * accelerator.num_processes
    schedule = WarmupCosine(round(cfg.optim.warmup_epochs * steps), steps, cfg.train.epochs, cfg.optim.min_lr_ratio)
    scheduler = accelerator.prepare(torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))
    ema = None
    if cfg.train.ema_decay:
        from timm.utils import ModelEmaV3

        # Warmup: the average starts short and lengthens towards ema_decay, so early epochs are not
        # scored on what is mostly the random initialisation.
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.train.ema_decay, use_warmup=True)
    metric = _load_metric(accelerator)
    if cfg.train.resume:  # restores the schedule's epochs too (a LambdaLR saves its callable's attributes)
        state = resume_state(accelerator, cfg.train.resume, out, ema)
    else:
        state = TrainState()
        _claim_output_dir(accelerator, out, cfg.train.overwrite)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / CONFIG_FILE)
    if cfg.train.tensorboard:
        accelerator.init_trackers("spine_hf")
    scored = ema.module if ema is not None else model
    augment = BatchAugment(cfg.data, preprocessing)
    return Run(cfg, out, accelerator, model, scored, ema, optimizer, scheduler, loss_fn, metric, train_loader,
               eval_loader, augment, schedule, dataset, preprocessing, state, started,
               refit=not cfg.train.resume)  # fmt: skip


def train_epoch(run: Run, epoch: int, started: float) -> tuple[float, bool]:
    """One pass over the training split (or what is left of it after a resume); returns the mean loss
    over all processes and whether train.time_limit_minutes ran out."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    run.model.train()
    run.train_loader.set_epoch(epoch)
    run.augment.size = shape(cfg, epoch, run.epochs)
    batches = run.train_loader
    if state.batches_in_epoch:  # resumed mid-epoch: the same order, minus what was done
        batches = accelerator.skip_first_batches(run.train_loader, state.batches_in_epoch)
    losses, out_of_time = [], False
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{run.epochs}", disable=not accelerator.is_main_process)
    for images, labels, *teacher in bar:  # a teacher's probabilities come third, when the run has one
        pixels = run.augment(images)
        loss = training_step(accelerator, run.model, run.loss_fn, run.optimizer, run.scheduler, pixels, labels, cfg,
                             *teacher)  # fmt: skip
        state.batches_in_epoch += 1
        losses.append(loss.item())
        if accelerator.sync_gradients:
            state.step += 1
            if run.ema is not None:
                run.ema.update(accelerator.unwrap_model(run.model), step=state.step)
            if cfg.train.checkpoint_steps and state.step % cfg.train.checkpoint_steps == 0:
                save_checkpoint(accelerator, run.out, state, cfg.train.keep_checkpoints, run.ema)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if cfg.train.time_limit_minutes and time.monotonic() - started > 60 * cfg.train.time_limit_minutes:
            out_of_time = True
            accelerator.print(f"time limit of {cfg.train.time_limit_minutes} min reached; stopping")
            break
    mean = torch.tensor(np.mean(losses or [np.nan]), device=accelerator.device)
    return float(accelerator.gather(mean).mean()), out_of_time


def _save_best(run: Run, record: dict, predictions: list[int]) -> None:
    """The best epoch so far: its model folder and its validation prediction for every image."""
    weights = run.accelerator.get_state_dict(run.scored)  # every rank: FSDP/DeepSpeed gather here
    if run.accelerator.is_main_process:
        best = {"epoch": record["epoch"], "split": run.cfg.data.eval_split, "predictions": predictions}
        (run.out / PREDICTIONS_FILE).write_text(json.dumps(best) + "\n")
        model = run.accelerator.unwrap_model(run.scored)
        save_for_hub(model, run.cfg, run.preprocessing, run.out / BEST_DIR, metrics=record, state_dict=weights)


def _log_epoch(run: Run, record: dict, improved: bool) -> None:
    """The epoch's line, its tensorboard scalars and metrics.json."""
    cfg, accelerator = run.cfg, run.accelerator
    metrics = record[cfg.data.eval_split]
    accelerator.print(
        f"epoch {record['epoch']}: loss {record['train_loss']:.4f}  {cfg.data.eval_split} QWK {metrics['qwk']:.4f} "
        f"acc {metrics['accuracy']:.4f} MAE {metrics['mae']:.4f} ({metrics['count']} images)"
        + ("  * best" if improved else "")
    )
    if cfg.train.tensorboard:
        scalars = {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, float)}
        accelerator.log({"train_loss": record["train_loss"], **scalars}, step=run.state.step)
    if accelerator.is_main_process:
        (run.out / METRICS_FILE).write_text(json.dumps(run.state.history, indent=2) + "\n")


def _finish(run: Run) -> dict:
    """Score the best model on the test split, write results.json, push when asked."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    accelerator.wait_for_everyone()
    result = {"best_epoch": state.best_epoch, "epochs": run.epochs,  # the schedule's length (a budget may set it)
              cfg.data.eval_split: state.best_record().get(cfg.data.eval_split)}  # fmt: skip
    if cfg.data.test_split:
        best = accelerator.unwrap_model(run.scored)
        load_weights(best, run.out / BEST_DIR)
        with accelerator.local_main_process_first():
            test_set = GradeImages(run.dataset[cfg.data.test_split], run.preprocessing, cfg.data, train=False)
        test_loader = accelerator.prepare(make_loader(test_set, cfg.train.eval_batch_size, cfg.data, False, 0))
        result[cfg.data.test_split] = _evaluate(best, test_loader, accelerator, run.metric, run.preprocessing, cfg)
        result[cfg.data.test_split].pop("predictions")
    if accelerator.is_main_process:
        (run.out / RESULTS_FILE).write_text(json.dumps(result, indent=2) + "\n")
        if cfg.hub.repo_id:
            push(run.out / BEST_DIR, cfg.hub.repo_id, private=cfg.hub.private)
    return result


def training_step(accelerator, model, loss_fn, optimizer, scheduler, pixels, labels, cfg: Config,
                  teacher: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """One optimizer step (or one accumulation micro-step): the step `bench train` times too."""
    if cfg.model.channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with accelerator.accumulate(model):
        loss = loss_fn(model(pixels), labels) if teacher is None else loss_fn(model(pixels), labels, teacher)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.optim.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return loss


def mixed_precision(precision: str) -> str | None:
    """accelerate's mixed-precision mode for `train.mixed_precision`: "auto" becomes bf16 where the device
    computes it natively, else "no"; "" leaves it to `accelerate launch --mixed_precision`."""
    if not precision:
        return None
    resolved = resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu")
    return "no" if resolved == "fp32" else resolved


def _fit_to_budget(run: Run) -> None:
    """After each epoch: the schedule laid over the epochs that fit in what is left of train.time_budget_minutes, at
    the pace measured so far, for the scheduler and the loop. An epoch at a shape already trained at is assumed to
    cost what such epochs cost on average; one at a larger shape (progressive resizing) the cost of the nearest
    smaller one scaled with the pixels, an upper bound that the next re-fit replaces with what it measures. Between
    train.min_epochs and train.epochs; a schedule that has reached its last epoch is never lengthened (its
    learning rate is at its floor)."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    budget = 60 * cfg.train.time_budget_minutes
    left = budget - (time.monotonic() - run.started)
    history = state.history
    eval_seconds = float(np.mean([record["seconds"] - record["train_seconds"] for record in history]))
    test_rows = len(run.dataset[cfg.data.test_split]) if cfg.data.test_split else 0
    # The wrap-up scores the test split (at the validation split's pace) and writes results (a few seconds).
    wrap_up = 2 * eval_seconds * test_rows / max(len(run.eval_loader.dataset), 1) + min(5.0, 0.02 * budget)
    paces: dict[tuple[int, int], list[float]] = {}
    for record in history:
        paces.setdefault(record_shape(record), []).append(record["train_seconds"])
    measured = {shape: float(np.mean(seconds)) for shape, seconds in paces.items()}
    # Saving the best model and checkpoints happens outside an epoch's seconds: spread it over them.
    recorded = sum(record["seconds"] for record in history[run.fit_epoch :])
    overhead = max(1.0, (time.monotonic() - run.fit_started) / recorded) if recorded > 0 else 1.0

    def seconds_at(shape: tuple[int, int]) -> float:
        if shape in measured:
            return 1.02 * overhead * (measured[shape] + eval_seconds)  # 2 %: epochs vary
        pixels = shape[0] * shape[1]
        below = [s for s in measured if s[0] * s[1] <= pixels] or list(measured)
        nearest = max(below, key=lambda s: s[0] * s[1])
        return 1.05 * overhead * (measured[nearest] * pixels / (nearest[0] * nearest[1]) + eval_seconds)

    done, before = state.epoch, run.epochs
    epochs = max(fitting_epochs(cfg, seconds_at, left - wrap_up, done), min(cfg.train.min_epochs, cfg.train.epochs))
    if done >= before:  # the schedule has ended: its last epoch trained at the floor learning rate
        epochs = before
    # Every process must train the same epochs: take the smallest answer.
    epochs = int(accelerator.gather(torch.tensor([epochs], device=accelerator.device)).min())
    state.epochs = run.schedule.epochs = epochs
    if run.announced is None or abs(epochs - run.announced) > max(1, 0.1 * run.announced):  # not every small move
        run.announced = epochs
        accelerator.print(
            f"time budget {cfg.train.time_budget_minutes:g} min: after {done} epochs ({history[-1]['seconds']:.1f} s "
            f"the last), {left / 60:.1f} min are left: the schedule runs over {epochs} epochs "
            f"(train.min_epochs {cfg.train.min_epochs}, train.epochs {cfg.train.epochs})"
        )


def shape(cfg: Config, epoch: int, epochs: int) -> tuple[int, int]:
    """(height, width) of the training images in `epoch` of `epochs` (data.progressive_scale: rising to
    model.image_size)."""
    data = cfg.data
    return train_shape(epoch, epochs, as_shape(cfg.model.image_size), data.progressive_scale, data.progressive_until,
                       data.progressive_max_epochs)  # fmt: skip


def record_shape(record: dict) -> tuple[int, int]:
    """(height, width) an epoch record of metrics.json trained at (records written before inputs could be tall hold
    only their side)."""
    return tuple(record["shape"]) if "shape" in record else (record["side"], record["side"])


def fitting_epochs(cfg: Config, seconds_at, seconds: float, done: int = 0) -> int:
    """The most epochs (at least `done`, at most train.epochs) whose epochs after the first `done` fit in
    `seconds`, when an epoch at shape s (height, width) takes `seconds_at(s)` (the shapes depend on the epoch count)."""
    fitting, cheapest = done, seconds_at(shape(cfg, 0, cfg.train.epochs))  # the first epoch's shape is the smallest
    for epochs in range(done + 1, cfg.train.epochs + 1):
        if (epochs - done) * cheapest > seconds:  # no longer schedule can fit
            break
        if sum(seconds_at(shape(cfg, epoch, epochs)) for epoch in range(done, epochs)) <= seconds:
            fitting = epochs
    return fitting


def _load_metric(accelerator: Accelerator):
    with accelerator.main_process_first():  # evaluate copies the module into its cache once
        return load_grading_metric()


@torch.inference_mode()
def _evaluate(model, loader, accelerator: Accelerator, metric, preprocessing: Preprocessing, cfg: Config) -> dict:
    model.eval()
    predictions, references = [], []
    for images, labels in loader:
        pixels = preprocessing.normalise(images)
        if cfg.model.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        logits = model(pixels)
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        predictions.append(logits.argmax(dim=1).cpu())
        references.append(labels.cpu())
    model.train()
    predictions, references = torch.cat(predictions).numpy(), torch.cat(references).numpy()
    expected = len(loader.dataset)
    if len(references) != expected:
        raise RuntimeError(f"evaluated {len(references)} images, expected {expected}")
    metrics = metric.compute(predictions=predictions, references=references)
    # In dataset order (gather_for_metrics keeps it): lets runs be compared image by image.
    metrics["predictions"] = predictions.tolist()
    return metrics


def _claim_output_dir(accelerator: Accelerator, out: Path, overwrite: bool) -> None:
    """A fresh run must not mix with (or silently replace) an earlier run in the same folder."""
    earlier = [name for name in (CONFIG_FILE, BEST_DIR, CHECKPOINTS_DIR, METRICS_FILE) if (out / name).exists()]
    accelerator.wait_for_everyone()  # every process has looked before any of them writes
    if not earlier:
        return
    if not overwrite:
        raise ConfigError(
            f"{out} holds an earlier run ({', '.join(earlier)}): continue it with --train.resume=true, replace it "
            "with --train.overwrite=true, or choose another --train.output_dir"
        )
    if accelerator.is_main_process:
        shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)  # never resume into the old run by mistake
        for name in (METRICS_FILE, RESULTS_FILE, PREDICTIONS_FILE):
            (out / name).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
