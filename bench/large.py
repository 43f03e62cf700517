"""Training on full-size radiographs: data setup of a first and a second run, memory of two processes, epoch time.

    python -m bench large --data ../shared/data/knee-kl224 [--large-images 3000] [--json FILE]

1. Makes a split tree of full-size radiographs once in the work folder: each knee image of --data
   enlarged to at least 2,000 x 2,400 px with film grain and sensor noise added, every other one a
   16-bit PNG (alternately 12-bit values, as many CR exports store them, and the full 16-bit range),
   the rest 8-bit; the patient ids stay in the file names. Without --data, the synthetic phantoms.
2. Converts it (`spine-hf data convert`, once; its seconds are reported).
3. Trains one epoch of `configs/knee-cpu.yaml` (the benchmark's model, size and batch) with
   ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``, twice: the first run
   decodes the splits into the decoded cache, the second maps it. Data setup seconds are what
   `train` prints ("data ready in ..."). While each run trains, every 0.2 s this process reads the
   two training processes' memory from /proc: peak RSS, peak anonymous (private heap) memory, and
   the resident part of the cache file mapped into each.
4. A third launch (`model_only` below, the same 2-process setup) times the training step fed by the
   loader and on one batch kept on the device, in turn, then one whole epoch of the training loop
   (`training.loop.train_epoch`) and as many steps on the one batch, back to back (goal >= 0.95; separate
   launches differ by up to 20 % in speed on these machines, so both arms run in one). Then each
   process reads every image once and reports how much its private (anonymous) memory grew: a copy
   of the images per process would add the cache's size (goal: the second process adds at most 10 %
   of it). The peaks of whole training runs are printed too, but they move by a few hundred MB
   between identical runs (allocator and oneDNN scratch space), more than the cache weighs at
   224 px, so they cannot show that difference.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.data import RECIPE, REPO_CONFIGS
from bench.report import Report

MIN_WIDTH, MIN_HEIGHT = 2000, 2400


# ---------------------------------------------------------------------------------------------------- the data


def make_large_tree(source: Path, out: Path, train_images: int, val_images: int) -> dict:
    """`out`/{train,val}/<grade>/*.png: full-size radiographs made from the images of `source` (made once)."""
    from spine_hf.data.imaging import is_image_file
    from spine_hf.data.parallel import map_cpu
    from spine_hf.outputs import staged_folder

    stamp = out / "bench_large.json"
    wanted = {"source": str(source.resolve()), "train": train_images, "val": val_images, "version": 1}
    if stamp.is_file() and json.loads(stamp.read_text()).get("made") == wanted:
        return json.loads(stamp.read_text())
    start = time.perf_counter()
    with staged_folder(out, overwrite=True) as staging:
        jobs = []
        for split, count in (("train", train_images), ("val", val_images)):
            folder = source / split if (source / split).is_dir() else source / "validation"
            files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
            if not files:
                raise FileNotFoundError(f"{folder}: no images to enlarge")
            # Every k-th file keeps the grades' proportions; wrap around when asked for more than there are.
            picked = [files[round(i * len(files) / count) % len(files)] for i in range(count)]
            for index, file in enumerate(picked):
                name = f"{file.stem}-{index:05d}.png" if count > len(files) else f"{file.stem}.png"
                target = staging / split / file.parent.name / name
                jobs.append((str(file), str(target), len(jobs)))
        for _, target, _ in jobs:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        sizes = map_cpu(_enlarge, *zip(*jobs, strict=True))
        made = {"made": wanted, "images": len(jobs), "bytes": int(sum(sizes)), "sixteen_bit": len(jobs) // 2,
                "seconds": time.perf_counter() - start}  # fmt: skip
        (staging / stamp.name).write_text(json.dumps(made, indent=2) + "\n")
    return made


def _enlarge(source: str, target: str, index: int) -> int:
    """One full-size radiograph from a small one: upscaled, with grain and noise; 8- or 16-bit. Its bytes."""
    from PIL import Image

    from spine_hf.data.imaging import decode_image

    rng = np.random.default_rng(index)
    width, height = MIN_WIDTH + 64 * (index % 4), MIN_HEIGHT + 96 * (index % 3)
    big = np.asarray(decode_image(source).resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255
    # Film grain: coarse noise, upsampled; then fine sensor noise per pixel.
    coarse = rng.standard_normal((height // 8, width // 8)).astype(np.float32)
    grain = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    big += 0.03 * grain + 0.015 * rng.standard_normal((height, width), dtype=np.float32)
    np.clip(big, 0, 1, out=big)
    if index % 2 == 0:
        image = Image.fromarray((big * 255 + 0.5).astype(np.uint8))
    else:
        top = 4095 if index % 4 == 1 else 65535  # 12-bit values in a 16-bit file, or the full range
        image = Image.fromarray((big * top + 0.5).astype(np.uint16))
    image.save(target, format="PNG", compress_level=1)
    return os.path.getsize(target)


# ---------------------------------------------------------------------------------------------- memory of a run


@dataclass
class ProcessMemory:
    """Peaks of one training process, in bytes, as read from /proc while it ran."""

    rank: int
    peak_rss: int = 0  # VmHWM: everything resident, the cache's pages mapped into it included
    peak_anonymous: int = 0  # RssAnon: its private heap (model, optimizer, batches; a copy of the images would be here)
    peak_cache_resident: int = 0  # resident pages of the decoded cache files mapped into it (shared page cache)
    peak_cache_proportional: int = 0  # the same, shared pages divided among the processes mapping them (Pss)

    def megabytes(self) -> dict:
        return {key: round(value / 2**20, 1) for key, value in vars(self).items() if key != "rank"}


@dataclass
class MemoryWatch:
    """Samples the memory of every training process below `root` (a `accelerate launch` process) until stopped."""

    root: int
    module: str
    processes: dict[int, ProcessMemory] = field(default_factory=dict)  # pid -> peaks
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MemoryWatch:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def by_rank(self) -> list[ProcessMemory]:
        return sorted(self.processes.values(), key=lambda memory: memory.rank)

    def _loop(self) -> None:
        sample = 0
        while not self._stop.wait(0.2):
            for pid in _descendants(self.root):
                try:
                    memory = self.processes.get(pid) or self._track(pid)
                    if memory is None:
                        continue
                    status = _status(pid)
                    memory.peak_rss = max(memory.peak_rss, status.get("VmHWM", 0))
                    memory.peak_anonymous = max(memory.peak_anonymous, status.get("RssAnon", 0))
                    if sample % 5 == 0:  # smaps is slower to read: once a second
                        resident, proportional = _cache_mapping(pid)
                        memory.peak_cache_resident = max(memory.peak_cache_resident, resident)
                        memory.peak_cache_proportional = max(memory.peak_cache_proportional, proportional)
                except (FileNotFoundError, ProcessLookupError, PermissionError):  # it just ended
                    continue
            sample += 1

    def _track(self, pid: int) -> ProcessMemory | None:
        """A new training process (one that runs `module` with a RANK), or None for anything else (the
        launcher, or the worker processes a training process forks to decode the cache)."""
        if self.module not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return None
        rank = _environ(pid).get("RANK")
        if rank is None or "RANK" in _environ(_parent(pid)):
            return None
        self.processes[pid] = ProcessMemory(int(rank))
        return self.processes[pid]


def _environ(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in text.split("\0") if "=" in item)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = _parent(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _cache_mapping(pid: int) -> tuple[int, int]:
    """Resident and proportional bytes of the decoded cache files (``squares/*.npy``) mapped into `pid`."""
    resident = proportional = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line: address range ... path
            inside = "/squares/" in line and line.rstrip().endswith(".npy")
        elif inside and first == "Rss:":
            resident += int(line.split()[1]) * 1024
        elif inside and first == "Pss:":
            proportional += int(line.split()[1]) * 1024
    return resident, proportional


# ------------------------------------------------------------------------------------------------------- the runs


@dataclass
class LaunchResult:
    seconds: float
    log: str
    memory: list[ProcessMemory]

    def data_ready(self) -> tuple[float, bool]:
        """`train`'s data setup seconds and whether it decoded (False: it mapped the cache)."""
        found = re.search(r"data ready in ([0-9.]+) s: .*?(decoded into|mapped from)", self.log)
        if not found:
            raise RuntimeError(f"no 'data ready' line in the training log:\n{self.log[-3000:]}")
        return float(found.group(1)), found.group(2) == "decoded into"


def launch(module: str, arguments: list[str], log: Path) -> LaunchResult:
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m MODULE ARGS``, its memory watched."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", module, *arguments,
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(REPO_CONFIGS.parent), os.environ.get("PYTHONPATH")]))  # finds bench/
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": path}  # fmt: skip
    start = time.perf_counter()
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment)
        with MemoryWatch(process.pid, module) as watch:
            code = process.wait()
    text = log.read_text()
    if code:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); its log, {log}, ends:\n{text[-3000:]}")
    return LaunchResult(time.perf_counter() - start, text, watch.by_rank())


def model_only(argv: list[str]) -> None:
    """In each launched process: the training loop's step fed by the loader vs on one batch kept on the device,
    then the private memory that reading every image of the splits adds.

    `training.loop.prepare` sets everything up exactly as a training run does (the cache mapped, DDP over
    the processes); then each step of the loop (`training_step` plus the EMA update) runs fed from
    the loader (uint8 batch -> device -> `BatchAugment`) and on one augmented batch, in turn
    (`bench.speed.paired_images_per_second`). Then every process reads every image of the training and
    evaluation datasets once, as the loader does, and reports how much its anonymous memory grew
    (where a copy of the images would go) and how much of the cache is resident in it, shared or not.
    Rank 0 prints one JSON line.
    """
    from accelerate.utils import gather_object

    from bench.speed import paired_images_per_second
    from spine_hf.config import parse_config
    from spine_hf.training.loop import prepare, train_epoch, training_step

    run = prepare(parse_config(argv))
    device = run.accelerator.device

    def step(pixels, labels) -> None:
        loss = training_step(run.accelerator, run.model, run.loss_fn, run.optimizer, run.scheduler, pixels, labels,
                             run.cfg)  # fmt: skip
        if run.ema is not None:
            run.ema.update(run.accelerator.unwrap_model(run.model))
        loss.item()

    def fed():
        while True:
            for images, labels in run.train_loader:  # prepared: already on the device
                yield run.augment(images), labels

    images, labels = next(iter(run.train_loader))
    fixed = (run.augment(images.to(device)), labels.to(device))
    steps = min(24, len(run.train_loader))
    data_path, alone = paired_images_per_second(step, fed(), fixed, steps)
    # A whole epoch of the training loop, then as many steps on the fixed batch, back to back.
    start = time.perf_counter()
    train_epoch(run, 0, time.monotonic())
    epoch_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(len(run.train_loader)):
        step(*fixed)
    fixed_seconds = time.perf_counter() - start

    before = _status(os.getpid())["RssAnon"]
    for dataset in (run.train_loader.dataset, run.eval_loader.dataset):
        for index in range(len(dataset)):
            dataset[index]
    run.accelerator.wait_for_everyone()  # every process has read everything: the pages are shared now
    resident, proportional = _cache_mapping(os.getpid())
    memory = {"rank": run.accelerator.process_index, "anonymous_added": _status(os.getpid())["RssAnon"] - before,
              "cache_resident": resident, "cache_proportional": proportional}  # fmt: skip
    found = {"data_path_images_per_s": data_path, "model_only_images_per_s": alone, "batch": len(labels),
             "steps": steps, "epoch_seconds": epoch_seconds, "epoch_steps": len(run.train_loader),
             "model_only_epoch_seconds": fixed_seconds, "memory": gather_object([memory])}  # fmt: skip
    if run.accelerator.is_main_process:
        print("model-only " + json.dumps(found), flush=True)
    run.accelerator.end_training()


# -------------------------------------------------------------------------------------------------- the benchmark


def bench_large(args, report: Report, work: Path, tree: Path) -> None:
    import shutil

    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.dataset_folder import load_grade_dataset

    base = work / "large"
    base.mkdir(parents=True, exist_ok=True)
    print(f"\nlarge: {args.large_images} training + {args.large_images // 10} validation radiographs of at least "
          f"{MIN_WIDTH} x {MIN_HEIGHT} px in {base}")  # fmt: skip
    made = make_large_tree(tree, base / "tree", args.large_images, max(1, args.large_images // 10))
    report.number("large.images", made["images"])
    report.number("large.sixteen_bit_images", made["sixteen_bit"])
    report.number("large.png_gigabytes", made["bytes"] / 1e9)
    report.say(f"{made['images']} PNGs ({made['sixteen_bit']} of them 16-bit), {made['bytes'] / 1e9:.1f} GB, "
               f"made in {made['seconds']:.0f} s")  # fmt: skip

    dataset, stamp = base / "dataset", base / "dataset.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == made):
        start = time.perf_counter()
        converted = convert_to_dataset(base / "tree", dataset, overwrite=True)
        report.number("large.convert_seconds", time.perf_counter() - start)
        report.say(f"converted in {time.perf_counter() - start:.0f} s ({converted.reencoded} re-encoded to 8-bit)")
        stamp.write_text(json.dumps(made))
    splits = load_grade_dataset(dataset)
    train_rows, eval_rows = len(splits["train"]), len(splits["validation"])
    shutil.rmtree(dataset / "squares", ignore_errors=True)  # the first run below decodes

    def arguments(name: str) -> list[str]:
        return [
            "--config_path", str(REPO_CONFIGS / RECIPE), f"--data.dataset={dataset}", "--data.test_split=",
            f"--train.output_dir={base / name}", "--train.overwrite=true", "--train.epochs=1",
            "--train.time_budget_minutes=0", f"--model.name={args.model}", f"--model.image_size={args.image_size}",
            f"--train.batch_size={args.batch_size}",
        ]  # fmt: skip

    runs = {}
    for name, module in (("first", "spine_hf.train"), ("second", "spine_hf.train"), ("model_only", "bench.large")):
        runs[name] = result = launch(module, arguments(f"run-{name}"), base / f"run-{name}.log")
        if name == "first":  # the caches it built
            cache_bytes = sum(path.stat().st_size for path in (dataset / "squares").glob("*.npy"))
        shown = ", ".join(f"rank {m.rank}: peak RSS {m.peak_rss / 2**20:.0f} MB, anonymous "
                          f"{m.peak_anonymous / 2**20:.0f} MB, cache resident {m.peak_cache_resident / 2**20:.0f} MB"
                          for m in result.memory)  # fmt: skip
        report.number(f"large.{name}.memory_mb", [m.megabytes() | {"rank": m.rank} for m in result.memory])
        report.number(f"large.{name}.seconds", result.seconds)
        report.say(f"{name} run: {result.seconds:.0f} s; {shown}")

    first, first_decoded = runs["first"].data_ready()
    second, second_decoded = runs["second"].data_ready()
    report.number("large.first_data_setup_seconds", first)
    report.number("large.second_data_setup_seconds", second)
    report.number("large.cache_megabytes", cache_bytes / 2**20)
    how = {True: "decoded", False: "mapped the cache"}
    report.say(f"data setup: first run {first:.1f} s ({how[first_decoded]}), second {second:.2f} s "
               f"({how[second_decoded]}); cache {cache_bytes / 2**20:.0f} MB")  # fmt: skip
    report.ratio("large.second_setup_seconds", second, 2.0, "lower", "data setup seconds of the second run")
    report.ratio("large.second_vs_first_setup", second / first, 0.05, "lower", "second run's data setup / first's")

    # Epoch time against the model-only step rate.
    history = json.loads((base / "run-second" / "metrics.json").read_text())
    train_seconds = history[0]["train_seconds"]
    found = re.search(r"model-only (\{.*\})", runs["model_only"].log)
    if not found:
        raise RuntimeError(f"no model-only line in {base / 'run-model_only.log'}")
    rates = json.loads(found.group(1))
    # What reading every image adds to each process's private memory (a per-process copy would add the cache).
    for memory in rates["memory"]:
        report.number(f"large.rank{memory['rank']}_read_all_anonymous_added_mb", memory["anonymous_added"] / 2**20)
        mb = {key: value / 2**20 for key, value in memory.items()}
        report.say(f"rank {memory['rank']}: reading all {train_rows} + {eval_rows} images added "
                   f"{mb['anonymous_added']:.1f} MB of private memory; the cache is resident in it "
                   f"{mb['cache_resident']:.0f} MB, proportionally {mb['cache_proportional']:.0f} MB "
                   "(shared pages divided among the processes mapping them)")  # fmt: skip
    added = max(rates["memory"], key=lambda memory: memory["rank"])["anonymous_added"]
    report.ratio("large.second_process_adds_vs_cache", max(0, added) / cache_bytes, 0.10, "lower",
                 "private memory reading every image adds to the second process / the cache's size")  # fmt: skip
    report.number("large.second_run_epoch_train_seconds", train_seconds)
    report.number("large.epoch_seconds", rates["epoch_seconds"])
    report.number("large.model_only_epoch_seconds", rates["model_only_epoch_seconds"])
    report.number("large.model_only_images_per_s_per_process", rates["model_only_images_per_s"])
    report.number("large.data_path_images_per_s_per_process", rates["data_path_images_per_s"])
    report.say(f"epoch of {train_rows} images ({rates['epoch_steps']} steps per process): the training loop "
               f"{rates['epoch_seconds']:.1f} s, the same steps on one batch {rates['model_only_epoch_seconds']:.1f} s "
               f"(the second run's epoch: {train_seconds:.1f} s); paired steps: data path "
               f"{rates['data_path_images_per_s']:.1f}, model only {rates['model_only_images_per_s']:.1f} img/s per "
               "process")  # fmt: skip
    report.ratio("large.epoch_vs_model_only", rates["model_only_epoch_seconds"] / rates["epoch_seconds"], 0.95,
                 "higher", "steps of an epoch on one batch / that epoch of the training loop (one launch)")  # fmt: skip
    paired = rates["data_path_images_per_s"] / rates["model_only_images_per_s"]
    report.ratio("large.data_path_vs_model_only", paired, 0.95, "higher",
                 "paired steps in one launch: fed by the loader / on one batch on the device")  # fmt: skip


if __name__ == "__main__":
    model_only(sys.argv[1:])
