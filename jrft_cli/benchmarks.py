"""Timing helpers shared by the benchmark scripts and `jrft bench`."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def inference_latency(models: dict[str, Callable[[], Any]], repeats: int = 30, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median / quartile latency (ms) of each zero-argument forward in `models`.

    The models run round-robin (one call of each per round) so drift in machine load hits all of
    them alike; the first `warmup` rounds are discarded."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + repeats):
        for name, fn in models.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            if r >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[name] = {"median_ms": statistics.median(ts), "q1_ms": q[0], "q3_ms": q[2], "repeats": len(ts)}
    return out
