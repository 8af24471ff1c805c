"""Small hand-made CoNLL-2003-format files for the token-task tests (no NER corpus can be downloaded here)."""
from __future__ import annotations

from pathlib import Path

# Each sentence: (word, tag) pairs, IOB2 tags of the CoNLL-2003 tag set.
SENTENCES = [
    [("John", "B-PER"), ("Smith", "I-PER"), ("visited", "O"), ("Paris", "B-LOC"), ("on", "O"), ("Monday", "O")],
    [("Reuters", "B-ORG"), ("reported", "O"), ("that", "O"), ("Mary", "B-PER"), ("left", "O"), ("London", "B-LOC")],
    [("The", "O"), ("European", "B-MISC"), ("Commission", "I-MISC"), ("met", "O"), ("in", "O"), ("Berlin", "B-LOC")],
    [("Peter", "B-PER"), ("Jones", "I-PER"), ("joined", "O"), ("Sony", "B-ORG"), ("in", "O"), ("Tokyo", "B-LOC")],
    [("Shares", "O"), ("of", "O"), ("Google", "B-ORG"), ("rose", "O"), ("3.5", "O"), ("percent", "O")],
    [("Anna", "B-PER"), ("flew", "O"), ("from", "O"), ("Rome", "B-LOC"), ("to", "O"), ("Madrid", "B-LOC")],
]


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], docstart: bool = True) -> Path:
    """One CoNLL file: `word POS chunk tag` per line, a blank line after each sentence."""
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for sentence in sentences:
        lines += [f"{w} NNP B-NP {t}" for w, t in sentence] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def conll_dir(root: Path, repeat: int = 4) -> Path:
    """data.dir with CoNLL-2003/train.txt (the sentences `repeat` times), valid.txt and test.txt."""
    write_conll(root / "CoNLL-2003" / "train.txt", SENTENCES * repeat)
    write_conll(root / "CoNLL-2003" / "valid.txt", SENTENCES[:4])
    write_conll(root / "CoNLL-2003" / "test.txt", SENTENCES[2:])
    return root
