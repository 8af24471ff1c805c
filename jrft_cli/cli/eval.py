"""`jrft eval TARGET [task=NAME] [split=NAME] [data.dir=DIR] [data.limit_eval=N] [batch_size=N] [out=FILE]`.

TARGET is a run dir or an export dir. Prints the dev metrics and writes them as JSON
(default: TARGET/eval_<split>.json).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HELP = "dev metrics of a run dir or an export dir"
KEYS = ("task", "split", "data.dir", "data.limit_eval", "batch_size", "out")
USAGE = "usage: jrft eval TARGET [" + "] [".join(f"{k}=..." for k in KEYS) + "]"


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`key=value` pairs; unknown keys and missing `=` are one-line JrftErrors."""
    from jrft_cli.core.errors import JrftError

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise JrftError(f"argument {item!r} is not key=value; keys: {', '.join(KEYS)}")
        if key not in KEYS:
            raise JrftError(f"unknown key {key!r}; choose one of {', '.join(KEYS)}")
        out[key] = value
    return out


def _positive_int(key: str, value: str | None) -> int | None:
    from jrft_cli.core.errors import JrftError

    if value is None or value.lower() in ("", "null", "none"):
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n <= 0:
        raise JrftError(f"{key}={value!r} is not valid; it must be a positive integer")
    return n


def main(argv: list[str]) -> int:
    from jrft_cli.core.errors import JrftError

    if not argv or argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{HELP}. TARGET: a run dir or an export dir; task= must match the target's task.")
        return 0 if argv else 2
    try:
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), 4))
        opts = parse_overrides(argv[1:])
        limit = _positive_int("data.limit_eval", opts.get("data.limit_eval"))
        batch_size = _positive_int("batch_size", opts.get("batch_size")) or 64
        from jrft_cli.serving.inference import evaluate_target, load_target

        from jrft_cli.cli import check_output_path

        check_output_path(Path(opts["out"]) if opts.get("out") else None, "out=")
        target = load_target(argv[0], opts.get("task"))
        split = opts.get("split") or target.task["eval_splits"][0]["name"]
        metrics, n = evaluate_target(target, split, opts.get("data.dir") or None, limit, batch_size)
        record: dict[str, Any] = {"target": str(target.path), "kind": target.kind, "task": target.task["name"],
                                  "split": split, "examples": n, "metrics": metrics}
        out = Path(opts["out"]) if opts.get("out") else target.path / f"eval_{split}.json"
        from jrft_cli.core.files import write_json_atomic

        try:
            write_json_atomic(out, record)
        except OSError as e:
            raise JrftError(f"out={str(out)!r} cannot be written ({e.strerror or e})") from None
    except JrftError as e:
        print(f"jrft eval: error: {e}", file=sys.stderr)
        return 2
    shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"{target.task['name']} {split} ({n} examples): {shown}")
    print(f"jrft eval: wrote {out}", file=sys.stderr)
    return 0
