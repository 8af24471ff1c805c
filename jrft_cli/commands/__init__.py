"""One module per `jrft` subcommand (see jrft_cli/__main__.py)."""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`jrft <cmd>: error: ...`, exit 2), without the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")
