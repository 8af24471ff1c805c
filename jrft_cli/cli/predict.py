"""`jrft predict TARGET [--input FILE] [--out FILE]`: labels and scores for text lines.

Input: one text per line, or `text1<TAB>text2` per line for pair tasks; from FILE or stdin. Token
tasks (NER): one sentence per line, its words separated by whitespace.
Output (TSV with a header): label, score (the predicted class's probability; the value for
regression), then one probability column per class. Token tasks: `word<TAB>tag` per line, one tag
per input word, a blank line after each sentence (CoNLL style).

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

from jrft_cli.cli import OneLineParser, check_output_path, write_output

HELP = "labels and scores for text lines (or TSV pairs) from a file or stdin"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="jrft predict", description=HELP)
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="a run dir or an export dir; or several NAME=RUN_DIR (jr / jr_warp runs) for mixed tasks")
    p.add_argument("--input", default="-", metavar="FILE", help="text lines or TSV pairs (default: stdin)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the TSV here instead of stdout")
    p.add_argument("--batch-size", type=int, default=64)
    return p


def read_lines(source: str) -> list[str]:
    """Text lines from a file or stdin ('-'); input that is not UTF-8 text is one JrftError."""
    from jrft_cli.core.errors import JrftError

    where = "stdin" if source == "-" else f"--input {source!r}"
    if source != "-" and not Path(source).is_file():
        raise JrftError(f"--input {source!r} is not a file; pass a text file or '-' for stdin")
    try:
        stdin = getattr(sys.stdin, "buffer", sys.stdin)   # bytes from a real stdin; text from a test's StringIO
        data = stdin.read() if source == "-" else Path(source).read_bytes()
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise JrftError(f"{where} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start}); "
                        f"pass text lines (or text1<TAB>text2 pairs)") from None
    if "\x00" in text:
        raise JrftError(f"{where} holds NUL bytes, so it is not text; pass text lines (or text1<TAB>text2 pairs)")
    return text.splitlines()


def _multi(targets: list[str]) -> bool:
    """Several targets, or one given as NAME=PATH: input lines name their task."""
    return len(targets) > 1 or ("=" in targets[0] and not Path(targets[0]).exists())


def _multi_output(targets: list[str], lines: list[str], batch_size: int) -> tuple[str, str]:
    from jrft_cli.serving.multitask import MultiTaskModel, parse_lines

    model = MultiTaskModel.load(targets)
    records = model.predict(parse_lines(lines, model), batch_size)
    rows = ["task\tlabel\tscore\tprobs"]
    for r in records:
        probs = ",".join(f"{p:.6f}" for p in r.get("probs", []))
        rows.append(f"{r['task']}\t{r['label']}\t{r['score']:.6f}\t{probs}")
    return "\n".join(rows) + "\n", f"wrote {len(records)} predictions"


def _single_output(target_path: Path, lines: list[str], batch_size: int) -> tuple[str, str]:
    from jrft_cli.serving.inference import load_target, parse_rows, predict_rows
    from jrft_cli.tasks.kinds import kind_of

    target = load_target(target_path)
    records = predict_rows(target, parse_rows(lines, target.task), batch_size)
    kind = kind_of(target.task)
    if kind.name == "tokens":   # CoNLL style: `word<TAB>tag` per line, a blank line after each sentence
        text = "".join("".join(f"{w}\t{t}\n" for w, t in zip(r["words"], r["tags"])) + "\n" for r in records)
        dropped = sum(r["dropped"] for r in records)
        if dropped:
            print(f"jrft predict: {dropped} word(s) beyond the run's max length ({target.max_length} tokens) "
                  "got no prediction and are tagged O", file=sys.stderr)
        return text, f"wrote tags for {len(records)} sentences"
    regression = kind.name == "regression"
    header = ["label", "score"] + ([] if regression else target.label_names)
    rows = ["\t".join(header)]
    for r in records:
        cells = [str(r["label"]), f"{r['score']:.6f}"] + [f"{p:.6f}" for p in r.get("probs", [])]
        rows.append("\t".join(cells))
    return "\n".join(rows) + "\n", f"wrote {len(records)} predictions"


def main(argv: list[str]) -> int:
    from jrft_cli.core.errors import JrftError

    args = parser().parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise JrftError(f"--batch-size={args.batch_size} is not valid; it must be a positive integer")
        multi = _multi(args.targets)
        if not multi:
            from jrft_cli.serving.inference import target_task

            target_task(Path(args.targets[0]))   # a bad target fails before stdin is read
        check_output_path(args.out)
        lines = read_lines(args.input)
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), 4))
        if multi:
            text, done = _multi_output(args.targets, lines, args.batch_size)
        else:
            text, done = _single_output(Path(args.targets[0]), lines, args.batch_size)
        write_output(text, args.out, f"jrft predict: {done} to {args.out}")
    except JrftError as e:
        print(f"jrft predict: error: {e}", file=sys.stderr)
        return 2
    return 0
