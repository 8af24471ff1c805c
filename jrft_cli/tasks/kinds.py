"""Task kinds: everything that differs between sequence classification, regression and token tagging.

A task config names its kind (`kind:` in conf/task/*.yaml: classification | regression | tokens; a
config without one, e.g. an older run's, is classification, or regression when `is_regression` is
set). Training, private training, evaluation, inference and export ask the kind instead of branching
on the task:

    kind = kind_of(task)
    kind.num_labels(task)                 # outputs of the head
    kind.head("mask")                     # the head a method's configured head becomes (tokens: per-token)
    kind.load(task, "train", data_dir)    # examples of one split
    kind.encode(examples, tokenizer, mask_format=..., max_length=...)
    kind.collate(tokenizer)               # padding; token labels padded with -100
    kind.loss(logits, labels, "none")     # (B,) per-example losses (private training), "mean", "sum"
    kind.decode(logits, labels)           # one prediction per example
    kind.metrics(names, predictions, golds, label_names)

The sequence kinds read GLUE-style data (tasks.glue) or a custom task's files (tasks.files), both
through tasks.loading; the token kind reads CoNLL files (tasks.conll).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.core.heads import TOKEN_HEADS
from jrft_cli.tasks import conll, glue, loading
from jrft_cli.tasks.metrics import compute_metrics, entity_metrics


class TaskKind:
    """The behaviour of one kind of task (see the module docstring)."""

    name: str
    #: the head every method uses on this kind (None: the method's configured head)
    fixed_head: str | None = None
    #: whether the data comes from a GLUE-style root (so JRFT_GLUE_DIR may locate it)
    reads_glue_dir: bool = True

    def num_labels(self, task: dict) -> int:
        return len(task["labels"])

    def head(self, configured: str) -> str:
        """The head a method's configured head (`method.head`) becomes on this kind of task."""
        return self.fixed_head or configured

    def is_pair(self, task: dict) -> bool:
        """Whether an input is a pair of texts (a `text1<TAB>text2` line for `jrft predict`)."""
        return False

    # -- data
    def load(self, task: dict, split: str, data_dir: str | None, limit: int | None = None) -> list:
        raise NotImplementedError

    def encode(self, examples: Sequence, tokenizer: Any, *, mask_format: bool, max_length: int) -> list[dict]:
        raise NotImplementedError

    def collate(self, tokenizer: Any) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def blank_examples(self, rows: Sequence[tuple[str, ...]]) -> list:
        """Examples with a placeholder label for inputs to predict (`rows` as from `parse_line`)."""
        raise NotImplementedError

    def parse_line(self, line: str, task: dict, n: int) -> tuple[str, ...]:
        """One input line of `jrft predict` as a tuple of texts (sequence kinds) or of words (tokens)."""
        if self.is_pair(task):
            parts = line.split("\t")
            if len(parts) != 2:
                raise JrftError(f"input line {n}: task {task['name']} takes sentence pairs, one per line as "
                                f"'text1<TAB>text2'; got {len(parts)} field(s)")
            return parts[0], parts[1]
        return (line,)

    # -- training and evaluation
    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        raise NotImplementedError

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> list:
        """One prediction per example of a batch (`labels`: the batch's, as collated)."""
        raise NotImplementedError

    def gold(self, item: dict) -> Any:
        """An encoded example's reference, comparable with `decode`'s predictions."""
        return item["labels"]

    def metrics(self, names: Sequence[str], predictions: list, golds: list,
                label_names: Sequence[str] | None = None) -> dict[str, float]:
        return compute_metrics(list(names), predictions, golds)


class _SequenceKind(TaskKind):
    """One label (or score) per input text or text pair, GLUE-style data."""

    regression = False

    def is_pair(self, task: dict) -> bool:
        return loading.text_field_count(task) > 1

    def load(self, task: dict, split: str, data_dir: str | None, limit: int | None = None) -> list:
        return loading.load_split(task, split, data_dir, limit)   # GLUE, or a custom task's files

    def encode(self, examples: Sequence, tokenizer: Any, *, mask_format: bool, max_length: int) -> list[dict]:
        return glue.encode(examples, tokenizer, mask_format=mask_format, max_length=max_length)

    def collate(self, tokenizer: Any) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return glue.make_collate(tokenizer, self.regression)

    def blank_examples(self, rows: Sequence[tuple[str, ...]]) -> list:
        return [glue.Example(tuple(r), 0.0 if self.regression else 0) for r in rows]


class Classification(_SequenceKind):
    name = "classification"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), labels, reduction=reduction)

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> list:
        return logits.argmax(-1).tolist()


class Regression(_SequenceKind):
    name = "regression"
    regression = True

    def num_labels(self, task: dict) -> int:
        return 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> list:
        return logits.squeeze(-1).tolist()


class Tokens(TaskKind):
    """One tag per word (NER): a per-token head on every method; CoNLL data; entity-level metrics.

    The loss of one sentence is the mean cross-entropy over its labelled positions (each word's first
    sub-token); a batch's loss is the mean over sentences. Per-sentence losses are what private
    training clips and what data-parallel training splits, so all three optimise the same objective."""

    name = "tokens"
    fixed_head = "tokens"
    reads_glue_dir = False

    def load(self, task: dict, split: str, data_dir: str | None, limit: int | None = None) -> list:
        return conll.load_split(task, split, data_dir, limit)

    def encode(self, examples: Sequence, tokenizer: Any, *, mask_format: bool, max_length: int) -> list[dict]:
        return conll.encode(examples, tokenizer, max_length=max_length)

    def collate(self, tokenizer: Any) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return conll.make_collate(tokenizer)

    def parse_line(self, line: str, task: dict, n: int) -> tuple[str, ...]:
        return tuple(line.split())

    def blank_examples(self, rows: Sequence[tuple[str, ...]]) -> list:
        return [conll.Sentence(tuple(r), (0,) * len(r)) for r in rows]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if logits.dim() != 3:
            raise JrftError(f"a token task needs per-token logits (B, T, C), got shape {tuple(logits.shape)}; "
                            f"the head must be one of {', '.join(TOKEN_HEADS)}")
        per_token = nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=conll.IGNORE,
                                                reduction="none")                           # (B, T), 0 where ignored
        counts = (labels != conll.IGNORE).sum(dim=1).clamp(min=1)
        per_example = per_token.sum(dim=1) / counts
        if reduction == "none":
            return per_example
        if reduction == "sum":
            return per_example.sum()
        if reduction == "mean":
            return per_example.mean()
        raise ValueError(f"reduction={reduction!r} is not valid; choose one of none, mean, sum")

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> list:
        """Per sentence, the predicted tag ids of its labelled positions (its kept words, in order)."""
        best = logits.argmax(-1)
        keep = labels != conll.IGNORE
        return [best[i][keep[i]].tolist() for i in range(best.size(0))]

    def gold(self, item: dict) -> Any:
        return [t for t in item["labels"] if t != conll.IGNORE]

    def metrics(self, names: Sequence[str], predictions: list, golds: list,
                label_names: Sequence[str] | None = None) -> dict[str, float]:
        if label_names is None:
            raise ValueError("tagging metrics need the task's label names")
        tags = list(label_names)
        return entity_metrics(list(names), [[tags[t] for t in p] for p in predictions],
                              [[tags[t] for t in g] for g in golds])


KINDS: dict[str, TaskKind] = {k.name: k for k in (Classification(), Regression(), Tokens())}


def as_kind(kind: "TaskKind | str | bool") -> TaskKind:
    """A TaskKind from itself, its name, or a bool meaning `is_regression` (older call sites)."""
    if isinstance(kind, TaskKind):
        return kind
    if isinstance(kind, bool):
        return KINDS["regression" if kind else "classification"]
    if kind not in KINDS:
        raise JrftError(f"task kind {kind!r} is not valid; choose one of {', '.join(KINDS)}")
    return KINDS[kind]


def kind_of(task: dict) -> TaskKind:
    """The kind of a task config (its `kind`; without one, `is_regression` decides)."""
    if task.get("kind") is not None:
        return as_kind(str(task["kind"]))
    return as_kind(bool(task.get("is_regression")))
