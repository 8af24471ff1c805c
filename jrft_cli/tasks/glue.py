"""GLUE tasks: loading (classic glue_data/ TSV root or the Hub), input formatting, collation.

Task metadata comes from the task config (conf/task/*.yaml) as a plain dict; nothing here knows Hydra.
"""
from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from jrft_cli.core.errors import JrftError

# Some GLUE fields are longer than csv's default limit (QNLI passages, MNLI parses).
csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Example:
    texts: tuple[str, ...]          # one sentence, or a pair
    label: float | int


def read_tsv(path: Path) -> list[list[str]]:
    """Rows of a GLUE TSV as plain tab-split fields (no quoting: some fields start with a stray `"`).
    A file that cannot be read as UTF-8 text is one JrftError naming it."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:   # utf-8-sig drops MRPC's BOM
            return [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    except UnicodeDecodeError as e:
        raise JrftError(f"{path} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start}); "
                        f"a GLUE TSV file is UTF-8: restore the file from the GLUE download") from None
    except (OSError, csv.Error) as e:
        raise JrftError(f"{path} cannot be read as a TSV file ({e}); restore it from the GLUE download") from None


def _label_value(raw: str, task: dict, where: str) -> float | int:
    if task["is_regression"]:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise JrftError(f"task {task['name']}: label {raw!r} in {where} is not a finite number; a regression "
                            f"label must be one (fix or drop that row)")
        return value
    labels = [str(v) for v in task["labels"]]
    if raw not in labels:
        raise JrftError(f"task {task['name']}: label {raw!r} in {where} is not one of {labels}")
    return labels.index(raw)


def _examples_from_tsv(path: Path, task: dict) -> list[Example]:
    spec = task["tsv"]
    rows = read_tsv(path)
    if not rows:
        raise JrftError(f"task {task['name']}: {path} is empty; restore it from the GLUE download")
    if spec["header"]:
        header, rows = rows[0], rows[1:]
        try:
            text_idx = [header.index(c) for c in spec["text_fields"]]
            label_idx = header.index(spec["label_field"])
        except ValueError as e:
            raise JrftError(f"task {task['name']}: {path} lacks an expected column ({e}); header is {header}") from None
    else:
        text_idx, label_idx = [int(c) for c in spec["text_fields"]], int(spec["label_field"])
    out = []
    for n, row in enumerate(rows):
        if len(row) <= max(text_idx + [label_idx]):
            raise JrftError(f"task {task['name']}: {path} row {n + 1} has {len(row)} fields, expected more")
        out.append(Example(tuple(row[i] for i in text_idx), _label_value(row[label_idx], task, f"{path} row {n + 1}")))
    if not out:
        raise JrftError(f"task {task['name']}: {path} has no data rows (only a header); restore it from the GLUE download")
    return out


def _examples_from_hub(task: dict, split: str) -> list[Example]:
    import datasets  # heavy import, only when the Hub is used

    hub = task["hub"]
    ds = datasets.load_dataset(hub["path"], hub["name"], split=split)
    fields = list(hub["text_fields"])
    out = []
    for row in ds:
        label = row[hub["label_field"]]
        out.append(Example(tuple(row[f] for f in fields), float(label) if task["is_regression"] else int(label)))
    return out


def load_split(task: dict, split: str, data_dir: str | None, limit: int | None = None) -> list[Example]:
    """Examples of one split: `train` or the name of one of the task's `eval_splits`.

    With `data_dir` (a glue_data/ root) the TSV file is read; without it the Hub is tried. Either way a
    failure is one JrftError naming the task, where it looked and how to fix it.
    """
    if split == "train":
        file, hub_split = task["tsv"]["train_file"], "train"
    else:
        match = [s for s in task["eval_splits"] if s["name"] == split]
        if not match:
            raise JrftError(f"task {task['name']}: unknown split {split!r}; choose train or "
                            f"{', '.join(s['name'] for s in task['eval_splits'])}")
        file, hub_split = match[0]["file"], match[0]["hub_split"]
    if data_dir:
        root = Path(os.path.expanduser(str(data_dir)))
        if not root.is_dir():
            raise JrftError(f"data.dir {str(data_dir)!r} does not exist; point data.dir (or JRFT_GLUE_DIR) "
                            f"at a glue_data/ root, or set data.dir=null to load from the Hugging Face Hub")
        path = root / task["glue_dir"] / file
        if not path.is_file():
            raise JrftError(f"task {task['name']}: {path} not found in data.dir {str(data_dir)!r}; use a glue_data/ "
                            f"root that has {task['glue_dir']}/{file}, or data.dir=null to load "
                            f"{task['hub']['path']}:{task['hub']['name']} from the Hugging Face Hub")
        examples = _examples_from_tsv(path, task)
    else:
        try:
            examples = _examples_from_hub(task, hub_split)
        except Exception as e:  # any Hub/network failure becomes one actionable line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise JrftError(f"task {task['name']}: no data.dir set (nor JRFT_GLUE_DIR) and loading "
                            f"{task['hub']['path']}:{task['hub']['name']} split {hub_split} from the Hugging Face "
                            f"Hub failed ({reason[:200]}); set data.dir=/path/to/glue_data") from None
    return examples[:limit] if limit else examples


def encode(examples: Sequence[Example], tokenizer: Any, *, mask_format: bool, max_length: int) -> list[dict]:
    """Tokenize examples. With `mask_format` the mask token is appended to the first sentence
    (pair tasks: text1 + mask + text2), and kept even when truncation would cut it off."""
    mask = tokenizer.mask_token
    if mask_format and mask is None:
        raise JrftError(f"tokenizer {tokenizer.name_or_path!r} has no mask token; use method.head=cls")
    firsts = [ex.texts[0] + (f" {mask}" if mask_format else "") for ex in examples]
    seconds = [ex.texts[1] for ex in examples] if len(examples) and len(examples[0].texts) > 1 else None
    enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
    out = []
    for i, ex in enumerate(examples):
        ids = list(enc["input_ids"][i])
        if mask_format and tokenizer.mask_token_id not in ids:
            # Truncation removed the mask: put it just before the first separator instead.
            sep = ids.index(tokenizer.sep_token_id)
            ids[sep - 1] = tokenizer.mask_token_id
        item = {"input_ids": ids, "attention_mask": list(enc["attention_mask"][i]), "labels": ex.label}
        if "token_type_ids" in enc:
            item["token_type_ids"] = list(enc["token_type_ids"][i])
        out.append(item)
    return out


def make_collate(tokenizer: Any, is_regression: bool) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Dynamic padding to the longest sequence of each batch."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        batch: dict[str, torch.Tensor] = {}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in items[0]:
                batch[key] = torch.tensor([it[key] + [fill] * (width - len(it[key])) for it in items])
        dtype = torch.float32 if is_regression else torch.long
        batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=dtype)
        return batch

    return collate
