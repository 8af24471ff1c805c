"""`jrft serve TARGET... [--host H] [--port P]`: one backbone, every given task, over HTTP.

TARGETs are `NAME=RUN_DIR` (or a bare RUN_DIR, named after its directory) of jr / jr_warp runs on one base
model. Endpoints and limits: see jrft_cli.serving.server.
"""
from __future__ import annotations

import argparse
import sys

from jrft_cli.cli import OneLineParser

HELP = "HTTP server: one backbone serving many jr / jr_warp tasks, micro-batched across tasks"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="jrft serve", description=HELP)
    p.add_argument("targets", nargs="+", metavar="TARGET", help="NAME=RUN_DIR (or RUN_DIR) of a jr / jr_warp run")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch-size", type=int, default=64, help="rows per forward pass (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more rows once it has one (default 5)")
    p.add_argument("--max-rows", type=int, default=1024, help="texts per request (default 1024)")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text (default 10000)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice, at most 4)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    return p


def main(argv: list[str]) -> int:
    from jrft_cli.core.errors import JrftError

    args = parser().parse_args(argv)
    try:
        for key in ("port", "max_batch_size", "max_rows", "max_chars"):
            value = getattr(args, key)
            if value <= 0 or key == "port" and value > 65535:
                raise JrftError(f"--{key.replace('_', '-')}={value} is not valid; it must be a positive integer"
                                + (" up to 65535" if key == "port" else ""))
        if args.max_wait_ms < 0:
            raise JrftError(f"--max-wait-ms={args.max_wait_ms} is not valid; it must be >= 0")
        import torch

        from jrft_cli.serving.multitask import MultiTaskModel
        from jrft_cli.serving.server import Limits, serve

        torch.set_num_threads(args.threads or min(torch.get_num_threads(), 4))
        model = MultiTaskModel.load(args.targets)
    except JrftError as e:
        print(f"jrft serve: error: {e}", file=sys.stderr)
        return 2
    limits = Limits(args.max_batch_size, args.max_wait_ms, args.max_rows, args.max_chars)
    print(f"jrft serve: {len(model.tasks)} task(s) ({', '.join(model.tasks)}) on {model.base_model.get('name')}; "
          f"http://{args.host}:{args.port} (POST /predict, GET /tasks, GET /health)", file=sys.stderr, flush=True)
    serve(model, args.host, args.port, limits, args.log_level)
    return 0
