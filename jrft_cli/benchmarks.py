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


def time_shift_step(proj: torch.nn.Module, d: int, device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """Median seconds of one z -> all-shifts forward + backward of their sum (after one warm-up call)."""
    z = torch.randn(d, device=device, requires_grad=True)
    times = []
    for _ in range(repeats + 1):
        _sync()
        start = time.perf_counter()
        proj(z).sum().backward()
        _sync()
        times.append(time.perf_counter() - start)
        z.grad = None
    return statistics.median(times[1:])


def projection_table(layers: int = 24, hidden: int = 1024, dims: tuple[int, ...] = (1024, 4096, 16384, 65536),
                     device: torch.device | str = "cpu", repeats: int = 3,
                     max_dense_bytes: float = 4e9) -> list[dict[str, Any]]:
    """Bytes held, build time and z -> shifts forward+backward time of every projection kind and d.

    Dense projections larger than `max_dense_bytes` are not allocated: their row says so
    (`skipped`) and gives the bytes they would hold."""
    from jrft_cli.projection import PROJECTION_KINDS, make_projection

    device = torch.device(device)
    rows: list[dict[str, Any]] = []
    for d in dims:
        for kind in PROJECTION_KINDS:
            row: dict[str, Any] = {"kind": kind, "d": d, "layers": layers, "hidden": hidden}
            if kind == "dense" and layers * d * hidden * 4 > max_dense_bytes:
                rows.append({**row, "bytes": layers * d * hidden * 4, "build_s": None, "shift_ms": None,
                             "skipped": f"dense matrices would exceed {max_dense_bytes / 1e9:.2g} GB"})
                continue
            start = time.perf_counter()
            proj = make_projection(kind, d, layers, hidden, seed=0, device=device)
            _sync()
            build = time.perf_counter() - start
            step = time_shift_step(proj, d, device, repeats)
            rows.append({**row, "bytes": proj.nbytes(), "build_s": build, "shift_ms": step * 1e3, "skipped": None})
            del proj
    return rows
