"""`jrft predict TARGET [--input FILE] [--out FILE]`: labels and scores for text lines.

Input: one text per line, or `text1<TAB>text2` per line for pair tasks; from FILE or stdin. Token
tasks (NER): one sentence per line, its words separated by whitespace.
Output (TSV with a header): label, score (the predicted class's probability; the value for
regression), then one probability column per class. Token tasks: `word<TAB>tag` per line, one tag
per input word, a blank line after each sentence (CoNLL style).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jrft_cli.cli import OneLineParser, check_output_path, write_output

HELP = "labels and scores for text lines (or TSV pairs) from a file or stdin"


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="jrft predict", description=HELP)
    p.add_argument("target", type=Path, metavar="TARGET", help="a run dir or an export dir")
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


def main(argv: list[str]) -> int:
    from jrft_cli.core.errors import JrftError

    args = parser().parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise JrftError(f"--batch-size={args.batch_size} is not valid; it must be a positive integer")
        from jrft_cli.serving.inference import load_target, parse_rows, predict_rows, target_task
        from jrft_cli.tasks.kinds import kind_of

        target_task(args.target)   # a bad target fails before stdin is read
        check_output_path(args.out)
        lines = read_lines(args.input)
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), 4))
        target = load_target(args.target)
        records = predict_rows(target, parse_rows(lines, target.task), args.batch_size)
        kind = kind_of(target.task)
        if kind.name == "tokens":   # CoNLL style: `word<TAB>tag` per line, a blank line after each sentence
            text = "".join("".join(f"{w}\t{t}\n" for w, t in zip(r["words"], r["tags"])) + "\n" for r in records)
            dropped = sum(r["dropped"] for r in records)
            if dropped:
                print(f"jrft predict: {dropped} word(s) beyond the run's max length ({target.max_length} tokens) "
                      "got no prediction and are tagged O", file=sys.stderr)
            write_output(text, args.out, f"jrft predict: wrote tags for {len(records)} sentences to {args.out}")
            return 0
        regression = kind.name == "regression"
        header = ["label", "score"] + ([] if regression else target.label_names)
        rows = ["\t".join(header)]
        for r in records:
            cells = [str(r["label"]), f"{r['score']:.6f}"] + [f"{p:.6f}" for p in r.get("probs", [])]
            rows.append("\t".join(cells))
        text = "\n".join(rows) + "\n"
        write_output(text, args.out, f"jrft predict: wrote {len(records)} predictions to {args.out}")
    except JrftError as e:
        print(f"jrft predict: error: {e}", file=sys.stderr)
        return 2
    return 0
