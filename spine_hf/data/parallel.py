"""Run a CPU-bound function (image decoding) over many items on every core.

Pillow holds the GIL while it inflates a PNG, so threads barely help: decoding the 4,826 knee PNGs
with the project's decoder took 2.7 s in one thread, 2.3 s in two threads and 1.4 s in two forked
processes on the 2-core machine of BENCHMARKS.md. Forked workers inherit the
parent's memory, so `fn` may be any module-level function and needs no `__main__` guard in the
caller's script; its arguments and results travel pickled, so they should be small (paths, facts),
not pixels. Where fork does not exist (Windows, macOS' default), or for a handful of items, threads.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

R = TypeVar("R")

# Below this many items a process pool costs more to start than it saves.
MIN_ITEMS_FOR_PROCESSES = 64


def map_cpu(fn: Callable[..., R], *iterables: Iterable, workers: int | None = None) -> list[R]:
    """`list(map(fn, *iterables))`, spread over `workers` (default: one per CPU), in order."""
    columns = [list(items) for items in iterables]
    count = min((len(column) for column in columns), default=0)
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1 or count == 0:
        return list(map(fn, *columns))
    if count >= MIN_ITEMS_FOR_PROCESSES and "fork" in multiprocessing.get_all_start_methods():
        chunk = max(1, min(64, count // (8 * workers)))  # small enough to balance, big enough to amortise
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(fn, *columns, chunksize=chunk))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, *columns))
