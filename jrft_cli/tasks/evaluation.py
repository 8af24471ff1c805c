"""What training and serving share about a task's outputs: its loss, and batched predict/evaluate.

Everything that depends on the kind of task (classification, regression, tokens) is asked of the
kind (tasks.kinds); `TaskInfo` carries it with the metrics to report.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.tasks.kinds import TaskKind, as_kind, kind_of


class NonFiniteOutputs(JrftError):
    """The model produced NaN or infinite outputs: no metric or prediction is computed from them."""


class TaskInfo:
    """A task as the loops see it: its kind (tasks.kinds), the metrics to report, the main one, and
    the label names (tagging metrics need them). `kind` may be given as a TaskKind, its name, or a bool
    meaning `is_regression`; `is_regression=` is accepted as a keyword too (older call sites)."""

    def __init__(self, kind: TaskKind | str | bool | None = None, metrics: Sequence[str] = ("accuracy",),
                 main_metric: str = "accuracy", label_names: Sequence[str] | None = None, *,
                 is_regression: bool | None = None) -> None:
        self.kind = as_kind(kind if kind is not None else bool(is_regression))
        self.metrics, self.main_metric = list(metrics), main_metric
        self.label_names = list(label_names) if label_names is not None else None

    @classmethod
    def from_task(cls, task: dict[str, Any]) -> "TaskInfo":
        """From a task config (conf/task/*.yaml as a plain dict)."""
        names = task.get("label_names") or task.get("labels")
        return cls(kind_of(task), task["metrics"], task["main_metric"], names)

    @property
    def is_regression(self) -> bool:
        return self.kind.name == "regression"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return self.kind.loss(logits, labels, reduction)

    def __repr__(self) -> str:
        return f"TaskInfo({self.kind.name!r}, {self.metrics!r}, {self.main_metric!r})"


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, kind: TaskKind | str | bool | None = None,
            reduction: str = "mean", *, is_regression: bool | None = None) -> torch.Tensor:
    """The task kind's loss (`kind`: a TaskKind, its name, or `is_regression`, also accepted as a
    keyword); reduction mean | sum | none (one loss per example)."""
    return as_kind(kind if kind is not None else bool(is_regression)).loss(logits, labels, reduction)


def batches(items: Sequence[dict], order: Sequence[int], batch_size: int) -> Iterator[list[dict]]:
    for i in range(0, len(order), batch_size):
        yield [items[j] for j in order[i:i + batch_size]]


def length_order(data: Sequence[dict]) -> list[int]:
    """Indices of `data` by input length (stable). Evaluation batches cut from this order hold inputs of
    similar lengths, so they pad far less than batches in data order (SST-2 dev: half the time), and
    each input's outputs do not depend on its batch (padding is masked)."""
    return sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))


@torch.no_grad()
def predict(model: nn.Module, data: Sequence[dict], collate: Callable, batch_size: int, device: torch.device,
            amp: torch.dtype | None = None) -> torch.Tensor:
    """Logits (N, C) for `data`, in order (sequence tasks: one row per example); computed in batches
    of similar lengths (`length_order`) and put back in data order."""
    was_training = model.training
    model.eval()
    order = length_order(data)
    out = []
    for items in batches(data, order, batch_size):
        batch = {k: v.to(device) for k, v in collate(items).items() if k != "labels"}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(model(**batch).float().cpu())
    model.train(was_training)
    if not out:
        return torch.empty(0)
    logits = torch.empty_like(torch.cat(out))
    logits[torch.tensor(order)] = torch.cat(out)
    check_finite(logits)
    return logits


def check_finite(logits: torch.Tensor, offset: int = 0, total: int | None = None,
                 indices: Sequence[int] | None = None) -> None:
    """NonFiniteOutputs when any row of `logits` holds NaN or infinity. Row i is input `indices[i]` when
    given, else input offset + i, of `total` inputs (the error names the first bad one)."""
    bad = ~torch.isfinite(logits).reshape(len(logits), -1).all(dim=1) if len(logits) else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        total = len(logits) if total is None else total
        bad_rows = bad.nonzero().flatten().tolist()
        first = min(indices[i] for i in bad_rows) if indices is not None else offset + bad_rows[0]
        raise NonFiniteOutputs(f"the model's outputs are NaN or infinite for {int(bad.sum())} of {total} inputs "
                               f"(first: input {first}); its weights are broken, so no metric "
                               f"or prediction is made from them")


@torch.no_grad()
def predictions(model: nn.Module, data: Sequence[dict], collate: Callable, kind: TaskKind, batch_size: int,
                device: torch.device, amp: torch.dtype | None = None) -> list:
    """One prediction per example of `data`, in order, decoded by the task kind (a class id, a score,
    or a sentence's tag ids); computed in batches of similar lengths (`length_order`)."""
    was_training = model.training
    model.eval()
    order = length_order(data)
    out: list = [None] * len(data)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([data[i] for i in idx])
        labels = batch.pop("labels")
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(**batch).float().cpu()
        check_finite(logits, total=len(data), indices=idx)
        for i, pred in zip(idx, kind.decode(logits, labels)):
            out[i] = pred
    model.train(was_training)
    return out


def evaluate(model: nn.Module, data: Sequence[dict], collate: Callable, task: TaskInfo, batch_size: int,
             device: torch.device, amp: torch.dtype | None = None) -> dict[str, float]:
    """Dev metrics of `model` on `data` (metric names -> values)."""
    preds = predictions(model, data, collate, task.kind, batch_size, device, amp)
    golds = [task.kind.gold(it) for it in data]
    return task.kind.metrics(task.metrics, preds, golds, task.label_names)
