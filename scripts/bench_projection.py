"""Bytes held and z -> all-shifts time (forward + backward of a sum) for the jr projections.

RoBERTa-large shapes (L=24, H=1024) by default; prints a Markdown table. Dense sizes whose
matrices would exceed --max-dense-gb are skipped (said in the row), not allocated. The same table
is part of `jrft bench` (`jrft bench --only projection`); this script is its standalone form.

    python scripts/bench_projection.py [--device cpu] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

from jrft_cli.bench.measure import projection_table


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

    print(f"L={args.layers}, H={args.hidden}, device={args.device}, threads={args.threads}, fp32, "
          f"median of {args.repeats} after a warm-up\n")
    print("| kind | d | bytes held | build (s) | forward+backward (ms) |")
    print("|---|---:|---:|---:|---:|")
    for r in projection_table(args.layers, args.hidden, tuple(args.dims), args.device, args.repeats,
                              args.max_dense_gb * 1e9):
        if r["skipped"]:
            print(f"| {r['kind']} | {r['d']} | {r['bytes']:,} (not allocated) | skipped: {r['skipped']} | skipped |")
        else:
            print(f"| {r['kind']} | {r['d']} | {r['bytes']:,} | {r['build_s']:.2f} | {r['shift_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
