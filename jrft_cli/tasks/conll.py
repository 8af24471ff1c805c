"""CoNLL-format tagging tasks (CoNLL-2003 NER): loading, word-level encoding, collation.

Files: `data.dir/<dir_name>/{train,valid,test}.txt` in the CoNLL-2003 layout: one word per line with
its columns separated by whitespace (word, POS, chunk, NER tag: the word is the first column, the tag
the last), a blank line after each sentence, `-DOCSTART-` lines between documents. Without
`data.dir`, the task's Hub dataset (`eriktks/conll2003`: `tokens`, `ner_tags`) is loaded.

Encoding labels the first sub-token of each word with the word's tag and every other position
(special tokens, later sub-tokens) with -100, which the loss and the metrics skip. Words are encoded
one by one with a leading space (what RoBERTa-style tokenizers' `add_prefix_space` does for
pre-split words; BERT-style tokenizers ignore the space), so every family tokenizes a word as it would
inside running text. Words that do not fit in `max_length` are dropped whole (the tail of a long
sentence); `encode` counts them per sentence (`dropped_words`).

Task metadata comes from the task config (conf/task/conll2003.yaml) as a plain dict.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from jrft_cli.core.errors import JrftError

IGNORE = -100          # label of positions without a tag of their own
DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    tags: tuple[int, ...]           # label indices into the task's `labels`, one per word


def read_conll(path: Path, labels: Sequence[str], task_name: str = "conll2003") -> list[Sentence]:
    """The sentences of one CoNLL file; a malformed line or an unknown tag is one JrftError naming it."""
    index = {tag: i for i, tag in enumerate(labels)}
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[int] = []

    def flush() -> None:
        if words:
            sentences.append(Sentence(tuple(words), tuple(tags)))
            words.clear()
            tags.clear()

    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            cols = line.split()
            if not cols:
                flush()
                continue
            if cols[0] == DOCSTART:
                flush()
                continue
            if len(cols) < 2:
                raise JrftError(f"task {task_name}: {path} line {n} has {len(cols)} column; expected a word and its "
                                f"tag (CoNLL format: word POS chunk tag)")
            if cols[-1] not in index:
                raise JrftError(f"task {task_name}: tag {cols[-1]!r} in {path} line {n} is not one of "
                                f"{', '.join(labels)}")
            words.append(cols[0])
            tags.append(index[cols[-1]])
    flush()
    return sentences


def _split_file(task: dict, split: str) -> tuple[str, str]:
    """(file name, Hub split) of `split`: train, one of the task's eval_splits, or of its other_splits."""
    if split == "train":
        return task["train_file"], "train"
    known = list(task["eval_splits"]) + list(task.get("other_splits") or [])
    match = [s for s in known if s["name"] == split]
    if not match:
        raise JrftError(f"task {task['name']}: unknown split {split!r}; choose train or "
                        f"{', '.join(s['name'] for s in known)}")
    return match[0]["file"], match[0]["hub_split"]


def _from_hub(task: dict, split: str) -> list[Sentence]:
    import datasets  # heavy import, only when the Hub is used

    hub = task["hub"]
    ds = datasets.load_dataset(hub["path"], hub.get("name"), split=split, revision=hub.get("revision"))
    labels = list(task["labels"])
    feature = ds.features[hub["tags_field"]]
    names = getattr(getattr(feature, "feature", None), "names", None) or labels
    remap = []
    for name in names:   # the dataset's tag ids -> ours, by name
        if name not in labels:
            raise JrftError(f"task {task['name']}: the Hub dataset's tag {name!r} is not one of {', '.join(labels)}")
        remap.append(labels.index(name))
    return [Sentence(tuple(row[hub["tokens_field"]]), tuple(remap[t] for t in row[hub["tags_field"]]))
            for row in ds if row[hub["tokens_field"]]]


def load_split(task: dict, split: str, data_dir: str | None, limit: int | None = None) -> list[Sentence]:
    """Sentences of one split: `train` or the name of an eval split (e.g. `dev`) or another split (`test`).

    With `data_dir` the CoNLL file `data_dir/<dir_name>/<file>` is read; without it the Hub is tried.
    Either way a failure is one JrftError naming the task, where it looked and how to fix it.
    """
    file, hub_split = _split_file(task, split)
    if data_dir:
        root = Path(os.path.expanduser(str(data_dir)))
        if not root.is_dir():
            raise JrftError(f"data.dir {str(data_dir)!r} does not exist; point data.dir at a folder holding "
                            f"{task['dir_name']}/, or set data.dir=null to load {task['hub']['path']} from the Hub")
        path = root / task["dir_name"] / file
        if not path.is_file():
            raise JrftError(f"task {task['name']}: {path} not found in data.dir {str(data_dir)!r}; use a folder that has "
                            f"{task['dir_name']}/{file} (CoNLL format: word POS chunk tag per line, a blank line "
                            f"between sentences), or data.dir=null to load {task['hub']['path']} from the Hugging Face Hub")
        sentences = read_conll(path, task["labels"], task["name"])
        if not sentences:
            raise JrftError(f"task {task['name']}: {path} holds no sentence")
    else:
        try:
            sentences = _from_hub(task, hub_split)
        except JrftError:
            raise
        except Exception as e:  # any Hub/network failure becomes one actionable line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise JrftError(f"task {task['name']}: no data.dir set and loading {task['hub']['path']} split {hub_split} "
                            f"from the Hugging Face Hub failed ({reason[:200]}); set data.dir to a folder holding "
                            f"{task['dir_name']}/{file}") from None
    return sentences[:limit] if limit else sentences


def _special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence ([CLS] ... [SEP], <s> ... </s>)."""
    body = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            return full[:i], full[i + len(body):]
    return [], []


def encode(sentences: Sequence[Sentence], tokenizer: Any, *, max_length: int) -> list[dict]:
    """Tokenize pre-split sentences; label each word's first sub-token, -100 elsewhere (see the module doc)."""
    prefix, suffix = _special_frame(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    if room < 1:
        raise JrftError(f"data.max_length={max_length} leaves no room for words after the special tokens")
    flat = [" " + w for s in sentences for w in s.words]
    pieces = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    out, k = [], 0
    for s in sentences:
        ids: list[int] = []
        labels: list[int] = []
        kept = 0
        for word_pieces, tag in zip(pieces[k:k + len(s.words)], s.tags):
            word_pieces = list(word_pieces) or [unk]   # a word the tokenizer maps to nothing
            if len(ids) + len(word_pieces) > room:
                break
            ids += word_pieces
            labels += [tag] + [IGNORE] * (len(word_pieces) - 1)
            kept += 1
        k += len(s.words)
        input_ids = prefix + ids + suffix
        item = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
                "labels": [IGNORE] * len(prefix) + labels + [IGNORE] * len(suffix),
                "dropped_words": len(s.words) - kept}
        if with_types:
            item["token_type_ids"] = [0] * len(input_ids)
        out.append(item)
    return out


def make_collate(tokenizer: Any) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Dynamic padding to the longest sequence of each batch; labels padded with -100."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        batch: dict[str, torch.Tensor] = {}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0), ("labels", IGNORE)):
            if key in items[0]:
                batch[key] = torch.tensor([it[key] + [fill] * (width - len(it[key])) for it in items], dtype=torch.long)
        return batch

    return collate
