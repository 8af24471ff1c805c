"""Bytes held and z -> all-shifts time (forward + backward of a sum) for the jr projections.

RoBERTa-large shapes (L=24, H=1024) by default; prints a Markdown table. Dense sizes whose
matrices would exceed --max-dense-gb are skipped (said in the row), not allocated.

    python scripts/bench_projection.py [--device cpu] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from jrft_cli.projection import PROJECTION_KINDS, make_projection


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(proj, d: int, device: torch.device, repeats: int) -> float:
    """Median seconds of one z -> shifts forward + backward of their sum."""
    z = torch.randn(d, device=device, requires_grad=True)
    times = []
    for _ in range(repeats + 1):  # first call is a warm-up
        _sync(device)
        start = time.perf_counter()
        proj(z).sum().backward()
        _sync(device)
        times.append(time.perf_counter() - start)
        z.grad = None
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dims", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-dense-gb", type=float, default=4.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    L, H = args.layers, args.hidden

    print(f"L={L}, H={H}, device={device}, threads={args.threads}, fp32, "
          f"median of {args.repeats} after a warm-up\n")
    print("| kind | d | bytes held | build (s) | forward+backward (ms) |")
    print("|---|---:|---:|---:|---:|")
    for d in args.dims:
        for kind in PROJECTION_KINDS:
            if kind == "dense" and L * d * H * 4 > args.max_dense_gb * 1e9:
                print(f"| {kind} | {d} | {L * d * H * 4:,} (not allocated) | skipped: "
                      f"> {args.max_dense_gb:g} GB | skipped |")
                continue
            start = time.perf_counter()
            proj = make_projection(kind, d, L, H, seed=0, device=device)
            _sync(device)
            build = time.perf_counter() - start
            step = time_step(proj, d, device, args.repeats)
            print(f"| {kind} | {d} | {proj.nbytes():,} | {build:.2f} | {step * 1e3:.2f} |",
                  flush=True)
            del proj


if __name__ == "__main__":
    main()
