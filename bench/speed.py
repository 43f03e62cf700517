"""Speed benchmarks: the training step and its data path, the Predictor against `pipeline()`, `convert`.

* train:   images/s of the project's training step fed by its data path vs the same step on one batch
           kept in memory; the step's achieved FLOP/s vs this machine's dense-matmul FLOP/s; and the
           usual recipe's data path (PIL decode + transforms per sample, `bench.baseline`) on the same step.
* predict: `Predictor` vs `transformers.pipeline("image-classification")` on one saved folder: PyTorch
           fp32 and bf16, and the folder exported to ONNX (fp32 and int8) on ONNX Runtime.
* cold:    whole processes: `spine-hf predict one.png` (torch, onnx) vs a plain pipeline() script.
* convert: grade folders -> saved DatasetDict, images/s vs a plain PIL decode loop over the same files.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.data import ensure_dataset, random_model_folder, recipe_config, validation_folder
from bench.report import Report, forward_flops, matmul_flops_per_second, median_seconds
from spine_hf.grades import GRADE_NAMES
from spine_hf.models.preprocessing import as_shape, shape_name


class ProjectStep:
    """The project's training step (`training.loop.training_step`) on its prepared model, optimizer and loss."""

    def __init__(self, cfg):
        from accelerate import Accelerator

        from spine_hf.models.build import build_model
        from spine_hf.training.loop import mixed_precision, training_step
        from spine_hf.training.losses import build_loss
        from spine_hf.training.optim import make_optimizer
        from spine_hf.training.transforms import BatchAugment

        self.cfg = cfg
        fresh_accelerator_state()
        self.accelerator = Accelerator(mixed_precision=mixed_precision(cfg.train.mixed_precision))
        model, self.preprocessing = build_model(cfg.model)
        if cfg.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, self.accelerator.device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.loss_fn = build_loss(cfg.optim, [1] * 5)
        self.augment = BatchAugment(cfg.data, self.preprocessing)  # on the device, as in training
        self._step = training_step

    def batches(self, loader):
        """The training loop's input, endlessly: the loader's uint8 batches moved to the device and augmented there."""
        device = self.accelerator.device
        for images, labels in forever(loader):
            yield self.augment(images.to(device, non_blocking=True)), labels

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


def images_per_second(step: Callable, batches, steps: int, warmup: int = 2) -> float:
    iterator = iter(batches)
    for _ in range(warmup):
        step(*next(iterator))
    images, start = 0, time.perf_counter()
    for _ in range(steps):
        pixels, labels = next(iterator)
        step(pixels, labels)
        images += len(labels)
    return images / (time.perf_counter() - start)


def paired_images_per_second(step: Callable, batches, fixed, steps: int, warmup: int = 2) -> tuple[float, float]:
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


def forever(loader):
    while True:
        yield from loader


def project_training(args, dataset_dir: Path, output_dir: Path, batches: int, *overrides: str):
    """The project's step and its training data path over the first `batches` batches of the train split:
    (step, dataset, loader, seconds spent decoding and caching the squares)."""
    from spine_hf.data.dataset_folder import load_grade_dataset
    from spine_hf.training.transforms import GradeImages, make_loader

    cfg = recipe_config(args, dataset_dir, output_dir, *overrides, f"--data.max_samples={args.batch_size * batches}")
    step = ProjectStep(cfg)
    split = load_grade_dataset(dataset_dir)[cfg.data.train_split]
    start = time.perf_counter()
    images = GradeImages(split, step.preprocessing, cfg.data, train=True)
    fill_seconds = time.perf_counter() - start  # decoding and caching the squares
    return step, images, make_loader(images, cfg.train.batch_size, cfg.data, shuffle=True, seed=0), fill_seconds


def bench_train(args, report: Report, work: Path, tree: Path) -> None:
    from bench.baseline import load_imagefolder, make_loaders

    print(
        f"\ntrain: {args.model} at {shape_name(as_shape(args.image_size))} px, batch {args.batch_size}, "
        f"{args.steps} timed steps per arm"
    )
    step, images, loader, fill_seconds = project_training(
        args, ensure_dataset(tree, work), work / "train-run", args.steps + 4
    )
    fixed = next(step.batches(loader))  # model-only: one real batch, already augmented, fed again and again
    data_ips, model_ips = paired_images_per_second(step, step.batches(loader), fixed, args.steps)
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
    baseline_batches = ((b["pixel_values"], b["labels"]) for b in forever(baseline_loader))
    baseline_ips = images_per_second(step, baseline_batches, args.steps // 2)
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


def bench_predict(args, report: Report, work: Path, tree: Path) -> None:
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from spine_hf.models.build import native_bf16
    from spine_hf.predict.inference import Predictor

    hf_logging.disable_progress_bar()
    folder = Path(args.model_dir) if args.model_dir else random_model_folder(args, work)
    files = [str(p) for p in sorted(validation_folder(tree).rglob("*.png"))[:64]]
    if not files:
        raise ValueError(f"bench predict needs PNG files under {validation_folder(tree)}")
    files = (files * math.ceil(64 / len(files)))[:64]  # a small validation split is reused to fill the batch
    exported = onnx_folders(folder, tree, work)
    print(f"\npredict: {folder} (one image: median of {args.repeats}; 64 images: median of 3)")
    ours = {"fp32": Predictor(folder, batch_size=64), "bf16": Predictor(folder, batch_size=64, precision="bf16"),
            **{name: Predictor(path, batch_size=64) for name, path in exported.items()}}  # fmt: skip
    # The same device for both (pipeline() alone would stay on the CPU of a GPU machine).
    classify = pipeline("image-classification", model=str(folder), top_k=5, device=ours["fp32"].device)
    arms = {"pipeline": classify, **{name: predictor.predict for name, predictor in ours.items()}}
    for warm in arms.values():
        warm(files[:2])
    one = {name: [] for name in arms}
    for _ in range(args.repeats):  # interleaved, one call each in turn
        for name, call in arms.items():
            start = time.perf_counter()
            call(files[0] if name == "pipeline" else files[:1])
            one[name].append(time.perf_counter() - start)
    one_ms = {name: 1e3 * statistics.median(times) for name, times in one.items()}
    batch = {"pipeline": median_seconds(lambda: classify(files, batch_size=64), 3)}
    batch |= {name: median_seconds(lambda predictor=predictor: predictor.predict(files), 3)
              for name, predictor in ours.items()}  # fmt: skip
    probabilities = {name: np.asarray([p.probabilities for p in predictor.predict(files)])
                     for name, predictor in ours.items()}  # fmt: skip
    exact = probabilities["fp32"]
    piped = classify(files, batch_size=64)
    pipe_probs = np.asarray([[{d["label"]: d["score"] for d in row}[n] for n in GRADE_NAMES] for row in piped])
    report.number("predict.one_image_ms", one_ms)
    report.number("predict.batch64_images_per_s", {k: 64 / v for k, v in batch.items()})
    report.number("predict.fp32_vs_pipeline_max_probability_difference", float(np.abs(exact - pipe_probs).max()))
    differences = {name: float(np.abs(probabilities[name] - exact).max()) for name in ("bf16", *exported)}
    same = {name: float((probabilities[name].argmax(1) == exact.argmax(1)).mean()) for name in ("bf16", *exported)}
    for name in differences:
        report.number(f"predict.{name}_vs_fp32_max_probability_difference", differences[name])
        report.number(f"predict.{name}_vs_fp32_same_grade", same[name])
    report.ratio("predict.one_image_speedup", one_ms["pipeline"] / one_ms["fp32"], 3.0, "higher",
                 "pipeline() time / Predictor time for one image file, both fp32")  # fmt: skip
    report.ratio("predict.one_image_speedup_bf16", one_ms["pipeline"] / one_ms["bf16"], 3.0, "higher",
                 "the same with Predictor(precision='bf16')")  # fmt: skip
    report.ratio("predict.batch64_speedup", batch["pipeline"] / batch["fp32"], 1.0, "higher",
                 "pipeline(batch_size=64) time / Predictor time for 64 files, both fp32")  # fmt: skip
    for name, what in (("onnx", "the exported fp32 graph on ONNX Runtime"), ("int8", "the int8 graph")):
        report.ratio(f"predict.one_image_speedup_{name}", one_ms["pipeline"] / one_ms[name], 3.0, "higher",
                     f"pipeline() time / Predictor time for one image file, Predictor running {what}")  # fmt: skip
        report.ratio(f"predict.batch64_speedup_{name}", batch["pipeline"] / batch[name], 1.0, "higher",
                     "the same for 64 files")  # fmt: skip
    report.say(
        "one image: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in one_ms.items())
        + "; 64 images: "
        + ", ".join(f"{k} {64 / v:.1f} img/s" for k, v in batch.items())
        + f"; fp32 probabilities within {np.abs(exact - pipe_probs).max():.1e} of pipeline's; against fp32: "
        + ", ".join(f"{k} within {differences[k]:.1e} (same grade {same[k]:.0%})" for k in differences)
    )
    # How close pipeline() already is to the machine: the one-image forward against dense matmul.
    model, device = ours["fp32"].model, ours["fp32"].device
    flops = forward_flops(model, ours["fp32"].preprocessing.size, device)
    peaks = {"fp32": matmul_flops_per_second(torch.float32, device)}
    if native_bf16(device):
        peaks["bf16"] = matmul_flops_per_second(torch.bfloat16, device)
    best = max(peaks, key=peaks.get)
    pipeline_seconds = one_ms["pipeline"] / 1e3
    report.number("predict.forward_gflops_per_image", flops / 1e9)
    report.number("predict.pipeline_one_image_vs_fp32_matmul", flops / pipeline_seconds / peaks["fp32"])
    report.number("predict.one_image_speedup_ceiling", pipeline_seconds * peaks[best] / flops)
    report.say(f"one image is {flops / 1e9:.2f} GFLOP of forward: pipeline() computes it at "
               f"{flops / pipeline_seconds / peaks['fp32']:.2f} of this machine's fp32 matmul rate; at its {best} "
               f"matmul rate it would take {1e3 * flops / peaks[best]:.1f} ms, so no PyTorch Predictor can beat "
               f"pipeline() by more than {pipeline_seconds * peaks[best] / flops:.1f}x here")  # fmt: skip


# Exports made in this process: `bench all` runs predict and then cold on the same folder.
_EXPORTED: dict[tuple[Path, str], Path] = {}


def onnx_folders(folder: Path, tree: Path, work: Path, kinds: tuple[str, ...] = ("onnx", "int8")) -> dict[str, Path]:
    """`folder` exported by `spine-hf export` in fp32 ("onnx") and/or int8 ("int8", ranges from the tree's train
    split), made once per bench process (the export checks itself against PyTorch on the validation split)."""
    from spine_hf.publish.export import export_onnx

    out = {}
    for name in kinds:
        key = (folder.resolve(), name)
        if key not in _EXPORTED:
            path = work / f"{folder.name}-{name}"
            report = export_onnx(folder, path, int8=name == "int8", calibration_data=ensure_dataset(tree, work),
                                 overwrite=True)  # fmt: skip
            check = report["check"]
            print(f"export {name}: {check['count']} validation images, max |dp| "
                  f"{check['max_abs_probability_difference']:.1e}, same grade {check['same_grade_share']:.2%} "
                  f"({report['seconds']:.0f} s)")  # fmt: skip
            _EXPORTED[key] = path
        out[name] = _EXPORTED[key]
    return out


COLD_SCRIPT = """import sys
from transformers import pipeline
classify = pipeline("image-classification", model=sys.argv[1])
print(classify(sys.argv[2]))
"""


def bench_cold(args, report: Report, work: Path, tree: Path) -> None:
    """Whole processes, as a user runs them: `spine-hf predict one.png` (torch, and onnx on the exported
    folder) against a plain script that loads the same folder with pipeline() and classifies the same file."""
    import subprocess
    import sys

    folder = Path(args.model_dir) if args.model_dir else random_model_folder(args, work)
    exported = onnx_folders(folder, tree, work, kinds=("onnx",))["onnx"]
    image = str(sorted(validation_folder(tree).rglob("*.png"))[0])
    script = work / "plain_pipeline.py"
    script.write_text(COLD_SCRIPT)
    command = Path(sys.executable).with_name("spine-hf")
    cli = [str(command)] if command.is_file() else [sys.executable, "-m", "spine_hf.cli"]
    arms = {"pipeline": [sys.executable, str(script), str(folder), image],
            "torch": [*cli, "predict", "--model", str(folder), image],
            "onnx": [*cli, "predict", "--model", str(exported), "--backend", "onnx", image]}  # fmt: skip
    print(f"\ncold start: {folder} and {exported}, {image}; {args.cold_runs} runs of each, interleaved")
    seconds = {name: [] for name in arms}
    for _ in range(args.cold_runs):
        for name, argv in arms.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    report.number("cold.seconds", seconds)
    report.number("cold.median_seconds", median)
    report.ratio("cold.torch_vs_pipeline", median["torch"] / median["pipeline"], 0.9, "lower",
                 "`spine-hf predict one.png` wall time / plain pipeline() script, medians")  # fmt: skip
    report.ratio("cold.onnx_vs_pipeline", median["onnx"] / median["pipeline"], 0.25, "lower",
                 "the same with --backend onnx on the exported folder")  # fmt: skip
    report.say("median wall: " + ", ".join(f"{k} {v:.2f} s" for k, v in median.items()))


def bench_convert(args, report: Report, work: Path, tree: Path) -> None:
    from PIL import Image

    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.imaging import is_image_file

    files = sorted(p for p in tree.rglob("*") if p.is_file() and is_image_file(p))
    print(f"\nconvert: {len(files)} images in {tree}")
    for path in files:  # both arms read from the page cache
        path.read_bytes()

    def plain_loop() -> None:
        for path in files:
            with Image.open(path) as image:
                image.load()

    pil_seconds = median_seconds(plain_loop, 2)
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
