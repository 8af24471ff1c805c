"""`jrft predict TARGET [--input FILE] [--out FILE]`: labels and scores for text lines.

Input: one text per line, or `text1<TAB>text2` per line for pair tasks; from FILE or stdin.
Output (TSV with a header): label, score (the predicted class's probability; the value for
regression), then one probability column per class.

Several tasks at once: `jrft predict NAME=RUN_DIR NAME2=RUN_DIR2 ...` (a bare RUN_DIR is named after its
directory; jr / jr_warp runs on one base model). Each input line names its task, `NAME<TAB>text` (pairs:
`NAME<TAB>text1<TAB>text2`); batches mix tasks on one backbone (serving.multitask). Output columns: task,
label, score, probs (the task's class probabilities in its class order, comma-separated; empty for
regression).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jrft_cli.cli import OneLineParser, write_output

HELP = "labels and scores for text lines (or TSV pairs) from a file or stdin"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="jrft predict", description=HELP)
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="a run dir or an export dir; or several NAME=RUN_DIR (jr / jr_warp runs) for mixed tasks")
    p.add_argument("--input", default="-", metavar="FILE", help="text lines or TSV pairs (default: stdin)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the TSV here instead of stdout")
    p.add_argument("--batch-size", type=int, default=64)
    return p


def _multi(targets: list[str]) -> bool:
    """Several targets, or one given as NAME=PATH: input lines name their task."""
    return len(targets) > 1 or ("=" in targets[0] and not Path(targets[0]).exists())


def _read_lines(source: str) -> list[str]:
    from jrft_cli.core.errors import JrftError

    if source == "-":
        return sys.stdin.read().splitlines()
    path = Path(source)
    if not path.is_file():
        raise JrftError(f"--input {source!r} is not a file; pass a text file or '-' for stdin")
    return path.read_text(encoding="utf-8").splitlines()


def _multi_tsv(targets: list[str], source: str, batch_size: int) -> tuple[str, int]:
    from jrft_cli.serving.multitask import MultiTaskModel, parse_lines

    model = MultiTaskModel.load(targets)
    records = model.predict(parse_lines(_read_lines(source), model), batch_size)
    rows = ["task\tlabel\tscore\tprobs"]
    for r in records:
        probs = ",".join(f"{p:.6f}" for p in r.get("probs", []))
        rows.append(f"{r['task']}\t{r['label']}\t{r['score']:.6f}\t{probs}")
    return "\n".join(rows) + "\n", len(records)


def _single_tsv(target_path: Path, source: str, batch_size: int) -> tuple[str, int]:
    from jrft_cli.serving.inference import load_target, parse_rows, predict_rows, target_task

    target_task(target_path)   # a bad target fails before stdin is read
    lines = _read_lines(source)
    target = load_target(target_path)
    records = predict_rows(target, parse_rows(lines, target.task), batch_size)
    regression = target.task["is_regression"]
    header = ["label", "score"] + ([] if regression else target.label_names)
    rows = ["\t".join(header)]
    for r in records:
        cells = [str(r["label"]), f"{r['score']:.6f}"] + [f"{p:.6f}" for p in r.get("probs", [])]
        rows.append("\t".join(cells))
    return "\n".join(rows) + "\n", len(records)


def main(argv: list[str]) -> int:
    from jrft_cli.core.errors import JrftError

    args = parser().parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise JrftError(f"--batch-size={args.batch_size} is not valid; it must be a positive integer")
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), 4))
        if _multi(args.targets):
            text, n = _multi_tsv(args.targets, args.input, args.batch_size)
        else:
            text, n = _single_tsv(Path(args.targets[0]), args.input, args.batch_size)
    except JrftError as e:
        print(f"jrft predict: error: {e}", file=sys.stderr)
        return 2
    write_output(text, args.out, f"jrft predict: wrote {n} predictions to {args.out}")
    return 0
