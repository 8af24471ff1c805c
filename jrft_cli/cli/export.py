"""`jrft export RUN_DIR --out DIR`: a run as a directory that plain transformers loads."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jrft_cli.cli import OneLineParser

HELP = "export a run as a transformers checkpoint (jr shifts folded into biases)"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="jrft export", description=HELP)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run dir (with adapter_config.json)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the export directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    return p


def main(argv: list[str]) -> int:
    from jrft_cli.core.errors import JrftError

    args = parser().parse_args(argv)
    try:
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), 4))
        from jrft_cli.serving.export import export_run

        result = export_run(args.run_dir, args.out, overwrite=args.overwrite)
    except JrftError as e:
        print(f"jrft export: error: {e}", file=sys.stderr)
        return 2
    how = "trust_remote_code=True" if result.remote_code else "a plain checkpoint"
    print(f"jrft export: wrote {result.out_dir} ({how}; max |logit diff| vs the run's model "
          f"{result.max_abs_diff:.2g})")
    return 0
