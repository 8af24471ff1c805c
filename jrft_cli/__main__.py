"""`jrft <command> ...`: a thin dispatcher; each command lives in its own small module.

A command module exposes `main(argv: list[str]) -> int | None` and a one-line `HELP`.
Modules are imported lazily so `jrft --help` stays fast and one command's heavy imports
(torch, transformers) never slow another.
"""
from __future__ import annotations

import importlib
import sys

# command name -> module path
COMMANDS: dict[str, str] = {
    "train": "jrft_cli.cli.train",
    "eval": "jrft_cli.cli.eval",
    "predict": "jrft_cli.cli.predict",
    "export": "jrft_cli.cli.export",
    "table": "jrft_cli.cli.table",
    "bench": "jrft_cli.cli.bench",
    "dp-noise": "jrft_cli.cli.dp_noise",
    "search-d": "jrft_cli.cli.search_d",
    "serve": "jrft_cli.cli.serve",
}


def usage() -> str:
    lines = ["usage: jrft <command> [args...]", "", "commands:"]
    for name, mod in COMMANDS.items():
        help_line = getattr(importlib.import_module(mod), "HELP", "")
        lines.append(f"  {name:<10} {help_line}")
    lines += ["", "`jrft <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from jrft_cli import __version__

        print(f"jrft {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"jrft: unknown command {cmd!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    rc = importlib.import_module(COMMANDS[cmd]).main(rest)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
