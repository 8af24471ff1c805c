"""One module per `jrft` subcommand (see jrft_cli/__main__.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`jrft <cmd>: error: ...`, exit 2), without the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def write_output(text: str, out: Path | None, note: str) -> None:
    """`text` to the file `out` (folders made; `note` goes to stderr), or to stdout without one."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(note, file=sys.stderr)
    else:
        sys.stdout.write(text)
