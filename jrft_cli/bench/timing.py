"""The one timing primitive of `jrft bench`: `measure`.

Every number the bench reports comes from `measure`: each callable is warmed up in turn (its peak
memory taken over those warm-up calls), then all of them are timed in round-robin rounds, one call
of each per round, with the device synchronised before and after every call. Interleaving means load
drifting on a shared machine hits every callable alike, so ratios between them suffer less than
absolute times. Results are the median and quartiles of the per-call times, and the raw times, so a
caller can also form per-round ratios of calls timed back to back.

Memory is the peak growth over the value just before a callable's warm-up: CUDA allocated bytes on a
GPU; on CPU the process's resident set (psutil, sampled every few milliseconds), with freed heap
handed back to the OS first (`release_memory`) so one callable's garbage does not hide the next's.
"""
from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

__all__ = ["Timing", "measure", "quartiles", "PeakMemory", "release_memory", "sync"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a wall-clock interval holds all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) of `values` (all three equal for a single value)."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, statistics.median(values), q3


def release_memory() -> None:
    """Collect garbage and give freed heap back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory growth of the code inside `with`, in MiB, over the value at entry: CUDA allocated
    bytes on a GPU (`cuda_max_allocated`); on CPU the process RSS sampled every `interval` seconds
    (`rss_growth`)."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss_growth"
        self.mb = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self._proc = psutil.Process(os.getpid())
        self._start = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.mb = (self._peak - self._start) / 2**20


@dataclass
class Timing:
    """One callable's result: per-call times of the timed rounds (ms, in round order) and the peak
    memory growth over its warm-up calls (None when memory was not asked for)."""
    times_ms: list[float]
    warmup: int
    memory_mb: float | None = None
    memory_kind: str | None = None

    @property
    def median_ms(self) -> float:
        return quartiles(self.times_ms)[1]

    def stats(self) -> dict[str, Any]:
        """The report fields: median_ms, q1_ms, q3_ms, rounds, warmup, times_ms (+ memory_mb, memory_kind)."""
        q1, median, q3 = quartiles(self.times_ms)
        out: dict[str, Any] = {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "rounds": len(self.times_ms),
                               "warmup": self.warmup, "times_ms": list(self.times_ms)}
        if self.memory_kind is not None:
            out.update(memory_mb=self.memory_mb, memory_kind=self.memory_kind)
        return out


def measure(calls: Mapping[str, Callable[[], Any]], *, rounds: int, warmup: int = 1,
            device: torch.device | str = "cpu", memory: bool = False,
            before_round: Callable[[int], None] | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, Timing]:
    """Time every zero-argument callable of `calls` (see the module docstring); returns name -> Timing.

    `warmup` untimed calls of each callable run first, one callable after the other (with `memory`,
    inside PeakMemory, after `release_memory`; memory then needs warmup >= 1). Then `rounds` rounds,
    each calling every callable once in order. `before_round(r)` runs untimed with r = 0 before the
    warm-up and with r = 1..rounds before each timed round (e.g. to draw that round's batch)."""
    device = torch.device(device)
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds={rounds}, warmup={warmup}: need rounds >= 1 and warmup >= 0")
    if memory and warmup < 1:
        raise ValueError("memory is measured over the warm-up calls: need warmup >= 1")
    if before_round is not None:
        before_round(0)
    results: dict[str, Timing] = {}
    for name, fn in calls.items():
        if warmup and log:
            log(f"{name} (warm-up)")
        if memory:
            release_memory()
            with PeakMemory(device) as mem:
                for _ in range(warmup):
                    fn()
            results[name] = Timing([], warmup, mem.mb, mem.kind)
        else:
            for _ in range(warmup):
                fn()
            sync(device)
            results[name] = Timing([], warmup)
    if log:
        log(f"timing {rounds} round-robin round(s) of {len(calls)} call(s)")
    for r in range(1, rounds + 1):
        if before_round is not None:
            before_round(r)
        for name, fn in calls.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            results[name].times_ms.append((time.perf_counter() - start) * 1e3)
    return results
