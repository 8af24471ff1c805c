"""One module per `jrft` subcommand (see jrft_cli/__main__.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`jrft <cmd>: error: ...`, exit 2), without the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def check_output_path(out: Path | None, flag: str = "--out") -> None:
    """An output file path must not name a directory (checked before any work is done)."""
    from jrft_cli.core.errors import JrftError

    if out is not None and Path(out).is_dir():
        raise JrftError(f"{flag} {str(out)!r} is a directory; give a file path (e.g. {Path(out) / 'out.tsv'})")


def write_output(text: str, out: Path | None, note: str) -> None:
    """`text` to the file `out` (folders made; `note` goes to stderr), or to stdout without one.
    A path that cannot be written is one JrftError."""
    if out:
        from jrft_cli.core.errors import JrftError

        check_output_path(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        except OSError as e:
            raise JrftError(f"--out {str(out)!r} cannot be written ({e.strerror or e})") from None
        print(note, file=sys.stderr)
    else:
        sys.stdout.write(text)
