"""`jrft dp-noise`: the DP-SGD noise multiplier for a target (epsilon, delta).

Prints the settings, then the noise multiplier alone on the last line, so scripts can take
`jrft dp-noise ... | tail -n 1`.
"""
from __future__ import annotations

import argparse
import sys

from jrft_cli.cli import OneLineParser

HELP = "noise multiplier for a target (epsilon, delta) under Poisson-sampled DP-SGD"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="jrft dp-noise", description=HELP)
    p.add_argument("--epsilon", type=float, required=True, help="target epsilon (> 0)")
    p.add_argument("--delta", type=float, default=None, help="target delta in (0, 1); default 1/(2N)")
    p.add_argument("--n", type=int, required=True, help="training set size N")
    p.add_argument("--batch-size", type=int, required=True, help="expected logical batch size B (q = B/N)")
    p.add_argument("--epochs", type=float, required=True, help="epochs; steps = round(epochs / q)")
    p.add_argument("--accountant", default="prv", help="prv (default, tighter) or rdp")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # torch/opacus load here, not at import, so `jrft --help` stays fast
    from jrft_cli.dp import accounting as privacy

    try:
        delta = privacy.default_delta(args.n) if args.delta is None else args.delta
        q = privacy.sample_rate(args.batch_size, args.n)
        steps = privacy.steps_for(args.epochs, q)
        privacy.validate(
            epsilon=args.epsilon, delta=delta, noise_multiplier=None, q=q, steps=steps,
            accountant=args.accountant, n=args.n,
        )
        sigma = privacy.noise_multiplier_for(args.epsilon, delta, q, steps, args.accountant)
        spent = privacy.epsilon_for(sigma, q, steps, delta, args.accountant)
    except privacy.PrivacyError as e:
        print(f"jrft dp-noise: error: {e}", file=sys.stderr)
        return 2
    print(f"N={args.n} batch_size={args.batch_size} q={q:.6g} epochs={args.epochs:g} steps={steps}")
    print(f"target epsilon={args.epsilon:g} delta={delta:.6g} accountant={args.accountant}")
    print(f"achieved epsilon={spent:.4f}")
    print(repr(sigma))  # full precision: the last line is the number alone
    return 0
