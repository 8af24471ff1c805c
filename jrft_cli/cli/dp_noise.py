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
    from jrft_cli.dp import PrivacyError
    from jrft_cli.dp.accounting import epsilon_for
    from jrft_cli.dp.plan import Naming, resolve_plan

    settings = {"epsilon": args.epsilon, "delta": args.delta, "noise_multiplier": None,
                "accountant": args.accountant, "batch_size": args.batch_size, "epochs": args.epochs}
    try:  # the plan `jrft train` would resolve for these settings; errors name this command's options
        plan = resolve_plan(settings, args.n, names=Naming(prefix="--", dashes=True, unset="omitted", n="--n"))
        spent = epsilon_for(plan.noise_multiplier, plan.sample_rate, plan.steps, plan.delta, plan.accountant)
    except PrivacyError as e:
        print(f"jrft dp-noise: error: {e}", file=sys.stderr)
        return 2
    print(f"N={args.n} batch_size={args.batch_size} q={plan.sample_rate:.6g} epochs={args.epochs:g} steps={plan.steps}")
    print(f"target epsilon={args.epsilon:g} delta={plan.delta:.6g} accountant={plan.accountant}")
    print(f"achieved epsilon={spent:.4f}")
    print(repr(plan.noise_multiplier))  # full precision: the last line is the number alone
    return 0
