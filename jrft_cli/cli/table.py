"""`jrft table PATHS...`: paper-style tables (md/latex/csv) and plots from run directories."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jrft_cli.cli import OneLineParser, write_output

HELP = "paper-style tables (md/latex/csv) and plots from run directories"


def parser() -> argparse.ArgumentParser:
    from jrft_cli.reporting.table import FORMATS, SNAPSHOTS

    p = OneLineParser(prog="jrft table", description=HELP)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="run dirs, sweep dirs or any folders (searched recursively for results.json)")
    p.add_argument("--format", default="md", choices=FORMATS, help="output format (default: md)")
    p.add_argument("--out", type=Path, help="write the table to this file instead of stdout")
    p.add_argument("--plot", type=Path, metavar="DIR", help="also write PNG plots into DIR")
    p.add_argument("--metric", default="main", metavar="main|NAME",
                   help="'main' = each task's main metric (default), or a metric name for every task")
    p.add_argument("--snapshot", default="best", choices=list(SNAPSHOTS),
                   help="best = best dev checkpoint (best_dev, default); final = last evaluation (dev)")
    p.add_argument("--relative-to", metavar="ROW",
                   help="show scores as %% of this row's non-private mean per task, e.g. full (the plots stay absolute)")
    return p


def main(argv: list[str]) -> int:
    from jrft_cli.cli import check_output_path
    from jrft_cli.core.errors import JrftError
    from jrft_cli.reporting.table import build_tables, collect, plot, relative_to, render

    args = parser().parse_args(argv)
    try:
        check_output_path(args.out)
        if args.plot is not None and args.plot.exists() and not args.plot.is_dir():
            raise JrftError(f"--plot {str(args.plot)!r} is a file; give a directory for the PNG plots")
    except JrftError as e:
        print(f"jrft table: error: {e}", file=sys.stderr)
        return 2
    runs, skipped = collect(args.paths)
    for path, reason in skipped:
        print(f"jrft table: skipped {path}: {reason}", file=sys.stderr)
    metric_name = None if args.metric == "main" else args.metric
    tables = build_tables(runs, args.snapshot, metric_name)
    if not tables:
        what = f" with metric {metric_name!r}" if metric_name and runs else ""
        print(f"jrft table: no completed runs{what} under: {' '.join(args.paths)}", file=sys.stderr)
        return 1
    if args.relative_to is not None:
        try:
            tables, left_out = relative_to(tables, args.relative_to, metric_name)
        except ValueError as e:
            print(f"jrft table: error: {e}", file=sys.stderr)
            return 2
        for what in left_out:
            print(f"jrft table: left out {what}", file=sys.stderr)
        if not tables:
            print(f"jrft table: nothing to show relative to {args.relative_to!r}", file=sys.stderr)
            return 1
    text = render(tables, args.format)
    try:
        write_output(text, args.out, f"jrft table: wrote {args.out}")
    except JrftError as e:
        print(f"jrft table: error: {e}", file=sys.stderr)
        return 2
    if args.plot:
        for path in plot(runs, args.plot, args.snapshot, metric_name):
            print(f"jrft table: wrote {path}", file=sys.stderr)
    return 0
