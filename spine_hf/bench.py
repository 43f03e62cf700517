"""`spine-hf bench`: ratios measured side by side in one process run, printed beside their goals.

    spine-hf bench all     [--model resnet18] [--image-size 224] [--batch-size 32] [--data DIR] [--json FILE]
    spine-hf bench train | predict | convert | quality

* train:   images/s of the project's training step fed by its data path vs the same step on one batch
           kept in memory; the step's achieved FLOP/s vs this machine's dense-matmul FLOP/s; and the
           usual recipe's data path (PIL decode + transforms per sample, `bench_baseline`) on the same step.
* predict: `Predictor` vs `transformers.pipeline("image-classification")` on one saved folder.
* convert: grade folders -> saved DatasetDict, images/s vs a plain PIL decode loop over the same files.
* quality: the usual recipe vs the project's recipe (`configs/knee-cpu.yaml`), one after the other
           on the same data and model, each for the same training-time budget: wall time to reach the
           baseline's best validation QWK.
* all:     train, predict and convert.

Every arm runs in this process, on this machine, one after the other, so the ratios compare like with
like on a noisy machine; absolute numbers are printed for context only. FLOPs are counted with
`torch.utils.flop_counter` (2 per multiply-add, the same convention as 2·n³ for an n×n matmul).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_DATA = Path("../shared/data/knee-kl224")
RECIPE = "knee-cpu.yaml"


@dataclass
class Ratio:
    """One benchmark ratio with its goal."""

    key: str
    value: float | None
    goal: float
    # "higher" when the ratio should be at least the goal, "lower" when at most.
    better: str
    what: str

    @property
    def meets(self) -> bool | None:
        if self.value is None or not math.isfinite(self.value):
            return None
        return self.value >= self.goal if self.better == "higher" else self.value <= self.goal

    def line(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.2f}"
        sign = ">=" if self.better == "higher" else "<="
        verdict = {True: "meets goal", False: "MISSES goal", None: "not measured"}[self.meets]
        return f"  {self.key:38s} {shown:>7s}   goal {sign} {self.goal:<5g} {verdict}   ({self.what})"


class Report:
    """Ratios and the numbers behind them, printed as they come and written as JSON."""

    def __init__(self, context: dict):
        self.context = context
        self.ratios: list[Ratio] = []
        self.numbers: dict[str, float | str | list] = {}

    def ratio(self, key: str, value: float | None, goal: float, better: str, what: str) -> None:
        item = Ratio(key, value, goal, better, what)
        self.ratios.append(item)
        print(item.line(), flush=True)

    def number(self, key: str, value) -> None:
        self.numbers[key] = value

    def say(self, text: str) -> None:
        print(f"    {text}", flush=True)

    def to_json(self) -> dict:
        return {
            "context": self.context,
            "ratios": {
                r.key: {"value": r.value, "goal": r.goal, "better": r.better, "meets_goal": r.meets, "what": r.what}
                for r in self.ratios
            },
            "numbers": self.numbers,
        }


# --------------------------------------------------------------------------------------- helpers


def _median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@functools.cache  # measured once per run: `bench all` uses it for training and for inference
def matmul_flops_per_second(dtype: torch.dtype, device: torch.device) -> float:
    """Dense matmul throughput (2·n³ FLOPs per n×n product): the best median over a few sizes."""
    best = 0.0
    for n in (4096, 8192) if device.type == "cuda" else (1024, 2048, 4096):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)

        def product(a=a, b=b) -> None:
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()

        product()
        once = _median_seconds(product, 1)
        repeats = max(3, min(20, int(1.5 / max(once, 1e-6))))  # about 1.5 s per size
        best = max(best, 2 * n**3 / _median_seconds(product, repeats))
    return best


def forward_flops(model: torch.nn.Module, side: int, device: torch.device) -> float:
    """FLOPs of one forward pass on one image (torch's counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, side, side, device=device))
    model.train(was_training)
    return float(counter.get_total_flops())


def machine_context(args) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    if device == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "device": device,
        "device_name": name,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


# ------------------------------------------------------------------------------------------ data


def prepare_tree(args, work: Path) -> tuple[Path, str]:
    """The image folder to benchmark on: --data, else the knee data beside the repo, else phantoms."""
    if args.data:
        return Path(args.data), f"{args.data}"
    if (DEFAULT_DATA / "train").is_dir():
        return DEFAULT_DATA, f"real knee radiographs ({DEFAULT_DATA})"
    from spine_hf.dataset_tools import split_dataset
    from spine_hf.phantoms import make_phantoms

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
    from spine_hf.data import convert_to_dataset

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


# ----------------------------------------------------------------------------------------- train


class ProjectStep:
    """The project's training step (`train.training_step`) on its prepared model, optimizer and loss."""

    def __init__(self, cfg):
        from accelerate import Accelerator

        from spine_hf.losses import build_loss
        from spine_hf.model import build_model
        from spine_hf.train import make_optimizer, resolve_precision, training_step

        self.cfg = cfg
        fresh_accelerator_state()
        self.accelerator = Accelerator(mixed_precision=resolve_precision(cfg.train.mixed_precision))
        model, self.preprocessing = build_model(cfg.model)
        if cfg.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, self.accelerator.device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.loss_fn = build_loss(cfg.optim, [1] * 5)
        self._step = training_step

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> None:
        device = self.accelerator.device
        pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = self._step(self.accelerator, self.model, self.loss_fn, self.optimizer, self.scheduler, pixels, labels,
                          self.cfg)  # fmt: skip
        loss.item()  # the real loop reads the loss every step (and this waits for the GPU)


def fresh_accelerator_state() -> None:
    """Forget the process-wide accelerate state, so the next arm may use another mixed precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _images_per_second(step: Callable, batches, steps: int, warmup: int = 2) -> float:
    iterator = iter(batches)
    for _ in range(warmup):
        step(*next(iterator))
    images, start = 0, time.perf_counter()
    for _ in range(steps):
        pixels, labels = next(iterator)
        step(pixels, labels)
        images += len(labels)
    return images / (time.perf_counter() - start)


def _paired_images_per_second(step: Callable, batches, fixed, steps: int, warmup: int = 2) -> tuple[float, float]:
    """img/s of `step` fed from `batches` (fetching included) and fed `fixed`, one step of each in turn,
    as medians of per-step rates: a burst of load from elsewhere on the machine hits both arms alike
    and moves neither median (rounds of several steps per arm read 0.85 to 1.17 for the same code)."""
    iterator = iter(batches)
    fed, alone = [], []
    for index in range(warmup + steps):
        start = time.perf_counter()
        pixels, labels = next(iterator)
        step(pixels, labels)
        middle = time.perf_counter()
        step(*fixed)
        end = time.perf_counter()
        if index >= warmup:
            fed.append(len(labels) / (middle - start))
            alone.append(len(fixed[1]) / (end - middle))
    return statistics.median(fed), statistics.median(alone)


def _forever(loader):
    while True:
        yield from loader


def bench_train(args, report: Report, work: Path, tree: Path) -> None:
    from spine_hf.bench_baseline import load_imagefolder, make_loaders

    print(f"\ntrain: {args.model} at {args.image_size} px, batch {args.batch_size}, {args.steps} timed steps per arm")
    step, images, loader, fill_seconds = _project_training(
        args, ensure_dataset(tree, work), work / "train-run", args.steps + 4
    )
    fixed = next(iter(loader))  # model-only: one real batch, already in memory, fed again and again
    data_ips, model_ips = _paired_images_per_second(step, _forever(loader), fixed, args.steps)
    report.number("train.project_data_path_images_per_s", data_ips)
    report.number("train.model_only_images_per_s", model_ips)
    report.number("train.decode_cache_fill_seconds", fill_seconds)
    report.number("train.precision", step.accelerator.mixed_precision)
    report.ratio("train.data_path_vs_model_only", data_ips / model_ips, 0.95, "higher",
                 "img/s of the training step fed by the project's data path / on one batch in memory")  # fmt: skip
    report.say(f"project data path {data_ips:.1f} img/s, model only "
                  f"{model_ips:.1f} img/s, precision {step.accelerator.mixed_precision}, decode cache filled in "
                  f"{fill_seconds:.1f} s for {len(images)} images")  # fmt: skip

    # The usual recipe's data path (PIL decode + transforms per sample, default DataLoader) on the same step.
    folder = load_imagefolder(tree / "train", validation_folder(tree))
    baseline_loader, _ = make_loaders(folder, step.preprocessing.size, step.preprocessing.mean,
                                      step.preprocessing.std, args.batch_size, args.batch_size)  # fmt: skip
    baseline_batches = ((b["pixel_values"], b["labels"]) for b in _forever(baseline_loader))
    baseline_ips = _images_per_second(step, baseline_batches, args.steps // 2)
    report.number("train.usual_recipe_data_path_images_per_s", baseline_ips)
    report.number("train.usual_recipe_data_path_vs_model_only", baseline_ips / model_ips)
    report.say(f"the usual recipe's data path on the same step: {baseline_ips:.1f} img/s "
             f"({baseline_ips / model_ips:.2f} of model-only)")  # fmt: skip

    # Step efficiency: the step's achieved FLOP/s against dense matmul in the precision it computes in.
    device = step.accelerator.device
    flops = forward_flops(step.accelerator.unwrap_model(step.model), step.preprocessing.size, device)
    achieved = 3 * flops * data_ips
    peaks = {"fp32": matmul_flops_per_second(torch.float32, device)}
    if step.accelerator.mixed_precision == "bf16":
        peaks["bf16"] = matmul_flops_per_second(torch.bfloat16, device)
    compute = "bf16" if "bf16" in peaks else "fp32"
    report.number("train.forward_gflops_per_image", flops / 1e9)
    report.number("train.achieved_gflops_per_s", achieved / 1e9)
    for name, peak in peaks.items():
        report.number(f"train.matmul_{name}_gflops_per_s", peak / 1e9)
    report.ratio("train.step_flop_utilisation", achieved / peaks[compute], 0.5, "higher",
                 f"3 x forward FLOPs x img/s / dense {compute} matmul FLOP/s")  # fmt: skip
    report.say(f"forward {flops / 1e9:.2f} GFLOP/image, step achieves "
                  f"{achieved / 1e9:.0f} GFLOP/s; matmul " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s"
                  for k, v in peaks.items()) + f" (vs fp32 matmul: {achieved / peaks['fp32']:.2f})")  # fmt: skip
    report.number("train.step_flop_utilisation_vs_fp32_matmul", achieved / peaks["fp32"])


# --------------------------------------------------------------------------------------- predict


def bench_predict(args, report: Report, work: Path, tree: Path) -> None:
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from spine_hf.inference import Predictor
    from spine_hf.model import native_bf16

    hf_logging.disable_progress_bar()
    folder = Path(args.model_dir) if args.model_dir else _random_model_folder(args, work)
    files = [str(p) for p in sorted(validation_folder(tree).rglob("*.png"))[:64]]
    if not files:
        raise ValueError(f"bench predict needs PNG files under {validation_folder(tree)}")
    files = (files * math.ceil(64 / len(files)))[:64]  # a small validation split is reused to fill the batch
    print(f"\npredict: {folder} (one image: median of {args.repeats}; 64 images: median of 3)")
    ours = Predictor(folder, batch_size=64)
    ours_bf16 = Predictor(folder, batch_size=64, precision="bf16")
    # The same device for both (pipeline() alone would stay on the CPU of a GPU machine).
    classify = pipeline("image-classification", model=str(folder), top_k=5, device=ours.device)
    for warm in (ours.predict, ours_bf16.predict, classify):
        warm(files[:2])
    one = {"pipeline": [], "fp32": [], "bf16": []}
    for _ in range(args.repeats):  # interleaved, one call each in turn
        for name, call in (("pipeline", lambda: classify(files[0])), ("fp32", lambda: ours.predict(files[:1])),
                           ("bf16", lambda: ours_bf16.predict(files[:1]))):  # fmt: skip
            start = time.perf_counter()
            call()
            one[name].append(time.perf_counter() - start)
    one_ms = {name: 1e3 * statistics.median(times) for name, times in one.items()}
    batch = {
        "pipeline": _median_seconds(lambda: classify(files, batch_size=64), 3),
        "fp32": _median_seconds(lambda: ours.predict(files), 3),
        "bf16": _median_seconds(lambda: ours_bf16.predict(files), 3),
    }
    exact = np.asarray([p.probabilities for p in ours.predict(files)])
    piped = classify(files, batch_size=64)
    names = list(ours.model.config.id2label.values())
    pipe_probs = np.asarray([[{d["label"]: d["score"] for d in row}[n] for n in names] for row in piped])
    low = np.asarray([p.probabilities for p in ours_bf16.predict(files)])
    report.number("predict.one_image_ms", one_ms)
    report.number("predict.batch64_images_per_s", {k: 64 / v for k, v in batch.items()})
    report.number("predict.fp32_vs_pipeline_max_probability_difference", float(np.abs(exact - pipe_probs).max()))
    report.number("predict.bf16_vs_fp32_max_probability_difference", float(np.abs(low - exact).max()))
    report.number("predict.bf16_vs_fp32_same_grade", float((low.argmax(1) == exact.argmax(1)).mean()))
    report.ratio("predict.one_image_speedup", one_ms["pipeline"] / one_ms["fp32"], 3.0, "higher",
                 "pipeline() time / Predictor time for one image file, both fp32")  # fmt: skip
    report.ratio("predict.one_image_speedup_bf16", one_ms["pipeline"] / one_ms["bf16"], 3.0, "higher",
                 "the same with Predictor(precision='bf16')")  # fmt: skip
    report.ratio("predict.batch64_speedup", batch["pipeline"] / batch["fp32"], 1.0, "higher",
                 "pipeline(batch_size=64) time / Predictor time for 64 files, both fp32")  # fmt: skip
    report.say("one image: pipeline {pipeline:.1f} ms, Predictor {fp32:.1f} ms, bf16 "
                  "{bf16:.1f} ms; ".format(**one_ms) + "64 images: " + ", ".join(f"{k} {64 / v:.1f} img/s"
                  for k, v in batch.items()) + f"; fp32 probabilities within {np.abs(exact - pipe_probs).max():.1e}"
                  f" of pipeline's, bf16 within {np.abs(low - exact).max():.1e} of fp32")  # fmt: skip
    # How close pipeline() already is to the machine: the one-image forward against dense matmul.
    flops = forward_flops(ours.model, ours.preprocessing.size, ours.device)
    peaks = {"fp32": matmul_flops_per_second(torch.float32, ours.device)}
    if native_bf16(ours.device):
        peaks["bf16"] = matmul_flops_per_second(torch.bfloat16, ours.device)
    best = max(peaks, key=peaks.get)
    pipeline_seconds = one_ms["pipeline"] / 1e3
    report.number("predict.forward_gflops_per_image", flops / 1e9)
    report.number("predict.pipeline_one_image_vs_fp32_matmul", flops / pipeline_seconds / peaks["fp32"])
    report.number("predict.one_image_speedup_ceiling", pipeline_seconds * peaks[best] / flops)
    report.say(f"one image is {flops / 1e9:.2f} GFLOP of forward: pipeline() computes it at "
               f"{flops / pipeline_seconds / peaks['fp32']:.2f} of this machine's fp32 matmul rate; at its {best} "
               f"matmul rate it would take {1e3 * flops / peaks[best]:.1f} ms, so no Predictor can beat pipeline() "
               f"by more than {pipeline_seconds * peaks[best] / flops:.1f}x here")  # fmt: skip


def _random_model_folder(args, work: Path) -> Path:
    """A model folder of the benchmark's architecture (random weights: speed does not depend on them)."""
    from spine_hf.config import parse_config
    from spine_hf.hub import save_for_hub
    from spine_hf.model import build_model

    out = work / f"predict-{args.model.replace('/', '_')}-{args.image_size}"
    if not (out / "config.json").is_file():
        cfg = parse_config(["--config_path", str(REPO_CONFIGS / RECIPE), f"--model.name={args.model}",
                            f"--model.image_size={args.image_size}"])  # fmt: skip
        model, preprocessing = build_model(cfg.model)
        save_for_hub(model, cfg, preprocessing, out)
    return out


# --------------------------------------------------------------------------------------- convert


def bench_convert(args, report: Report, work: Path, tree: Path) -> None:
    from PIL import Image

    from spine_hf.data import convert_to_dataset
    from spine_hf.imaging import is_image_file

    files = sorted(p for p in tree.rglob("*") if p.is_file() and is_image_file(p))
    print(f"\nconvert: {len(files)} images in {tree}")
    for path in files:  # both arms read from the page cache
        path.read_bytes()

    def plain_loop() -> None:
        for path in files:
            with Image.open(path) as image:
                image.load()

    pil_seconds = _median_seconds(plain_loop, 2)
    shutil.rmtree(work / "dataset", ignore_errors=True)  # not timed: deleting an old dataset is not converting
    start = time.perf_counter()
    convert_to_dataset(tree, work / "dataset", overwrite=True)
    convert_seconds = time.perf_counter() - start
    (work / "dataset" / "bench_source.txt").write_text(str(tree.resolve()))
    report.number("convert.images", len(files))
    report.number("convert.images_per_s", len(files) / convert_seconds)
    report.number("convert.plain_pil_images_per_s", len(files) / pil_seconds)
    report.ratio("convert.vs_plain_pil_loop", pil_seconds / convert_seconds, 0.8, "higher",
                 "images/s of `data convert` (decode, check, write Arrow) / a plain PIL open+load loop")  # fmt: skip
    report.say(f"convert {len(files) / convert_seconds:.0f} img/s, plain PIL loop "
                  f"{len(files) / pil_seconds:.0f} img/s")  # fmt: skip


# --------------------------------------------------------------------------------------- quality


def bench_quality(args, report: Report, work: Path, tree: Path) -> None:
    from spine_hf.bench_baseline import run_baseline
    from spine_hf.metrics import compute_grading_metrics
    from spine_hf.model import build_model
    from spine_hf.train import train

    budget = 60 * args.budget_minutes
    dataset_dir = ensure_dataset(tree, work)
    cfg = recipe_config(args, dataset_dir, work / "quality-project")
    train_images = sum(1 for p in (tree / "train").rglob("*") if p.is_file())
    print(f"\nquality: {args.budget_minutes} min of training each, {train_images} training images; "
          f"usual recipe first, then the project's ({RECIPE})")  # fmt: skip

    def score(predictions: np.ndarray, references: np.ndarray) -> float:
        return float(compute_grading_metrics(predictions, references)["qwk"])

    # Each recipe gets a schedule that ends with its budget, from its own measured speed.
    baseline_ips = _baseline_probe(args, cfg, tree)
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

    project_ips = _project_probe(args, dataset_dir, work)
    project_epochs = max(1, int(budget * project_ips / train_images))
    print(f"  project: {project_ips:.1f} img/s in a probe -> {project_epochs} epochs", flush=True)
    run = work / "quality-project"
    shutil.rmtree(run, ignore_errors=True)
    cfg = recipe_config(args, dataset_dir, run, f"--train.epochs={project_epochs}",
                        f"--train.time_limit_minutes={1.25 * args.budget_minutes}")  # fmt: skip
    fresh_accelerator_state()
    train(cfg)
    history = json.loads((run / "metrics.json").read_text())
    setup = json.loads((run / "timing.json").read_text())["setup_seconds"]
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


def _baseline_probe(args, cfg, tree: Path) -> float:
    from accelerate import Accelerator

    from spine_hf.bench_baseline import load_imagefolder, make_loaders, make_optimizer, train_step
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

    return _images_per_second(step, ((b["pixel_values"], b["labels"]) for b in _forever(loader)), 6)


def _project_training(args, dataset_dir: Path, output_dir: Path, batches: int):
    """The project's step and its training data path over the first `batches` batches of the train split:
    (step, dataset, loader, seconds spent decoding and caching the squares)."""
    from spine_hf.data import load_grade_dataset
    from spine_hf.transforms import GradeImages, make_loader

    cfg = recipe_config(args, dataset_dir, output_dir, f"--data.max_samples={args.batch_size * batches}")
    step = ProjectStep(cfg)
    split = load_grade_dataset(dataset_dir)[cfg.data.train_split]
    start = time.perf_counter()
    images = GradeImages(split, step.preprocessing, cfg.data, train=True)
    fill_seconds = time.perf_counter() - start  # decoding and caching the squares
    return step, images, make_loader(images, cfg.train.batch_size, cfg.data, shuffle=True, seed=0), fill_seconds


def _project_probe(args, dataset_dir: Path, work: Path) -> float:
    step, _, loader, _ = _project_training(args, dataset_dir, work / "probe", 10)
    return _images_per_second(step, _forever(loader), 6)


# ------------------------------------------------------------------------------------------- run

COMMANDS = {"train": bench_train, "predict": bench_predict, "convert": bench_convert, "quality": bench_quality}


def run(args) -> Report:
    """Run `args.what` ("all" = convert, train, predict) and print/write the report."""
    import datasets

    datasets.disable_progress_bars()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tree, described = prepare_tree(args, work)
    if args.image_size is None and args.what != "quality":
        args.image_size = 224
    report = Report({**machine_context(args), "data": described})
    print(f"spine-hf bench {args.what}: {report.context['device_name']} ({report.context['device']}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; data: {described}")  # fmt: skip
    start = time.perf_counter()
    for name in ("convert", "train", "predict") if args.what == "all" else (args.what,):
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
