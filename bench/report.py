"""What every benchmark reports, and the measurements they share.

A `Ratio` is one result with its goal; a `Report` prints each as it comes and writes them, with the
numbers behind them, as JSON. The helpers time a call (medians: the machines are noisy), measure the
machine's dense-matmul FLOP/s and count a forward pass's FLOPs with `torch.utils.flop_counter`
(2 per multiply-add, the same convention as 2·n³ for an n×n matmul).
"""

from __future__ import annotations

import functools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from spine_hf.models.build import native_bf16, resolve_precision
from spine_hf.models.preprocessing import as_shape


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


def median_seconds(function: Callable[[], object], repeats: int) -> float:
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
        once = median_seconds(product, 1)
        repeats = max(3, min(20, int(1.5 / max(once, 1e-6))))  # about 1.5 s per size
        best = max(best, 2 * n**3 / median_seconds(product, repeats))
    return best


def forward_flops(model: torch.nn.Module, shape, device: torch.device) -> float:
    """FLOPs of one forward pass on one image of `shape` (height, width; torch's counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, *as_shape(shape), device=device))
    model.train(was_training)
    return float(counter.get_total_flops())


CPU_ISA = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"}


def machine_context(args) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and device == "cpu":
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "device": device,
        "device_name": name,
        # What the CPU computes natively: bf16 (training, bf16 inference) and int8 dot products (int8 ONNX).
        "cpu_isa": sorted(flags & CPU_ISA),
        "native_bf16": native_bf16(device),
        # What the project's recipe (mixed_precision: auto) computes in under `--precision`; the usual recipe: fp32.
        "project_precision": resolve_precision(
            "auto" if getattr(args, "precision", "auto") == "auto" else "fp32", device
        ),  # fmt: skip
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
