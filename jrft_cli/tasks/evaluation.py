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


@torch.no_grad()
def predict(model: nn.Module, data: Sequence[dict], collate: Callable, batch_size: int, device: torch.device,
            amp: torch.dtype | None = None) -> torch.Tensor:
    """Logits (N, C) for `data`, in order (sequence tasks: one row per example)."""
    was_training = model.training
    model.eval()
    out = []
    for items in batches(data, range(len(data)), batch_size):
        batch = {k: v.to(device) for k, v in collate(items).items() if k != "labels"}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(model(**batch).float().cpu())
    model.train(was_training)
    logits = torch.cat(out) if out else torch.empty(0)
    check_finite(logits)
    return logits


def check_finite(logits: torch.Tensor, offset: int = 0, total: int | None = None) -> None:
    """NonFiniteOutputs when any row of `logits` (inputs offset.. of `total`) holds NaN or infinity."""
    bad = ~torch.isfinite(logits).reshape(len(logits), -1).all(dim=1) if len(logits) else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        total = len(logits) if total is None else total
        raise NonFiniteOutputs(f"the model's outputs are NaN or infinite for {int(bad.sum())} of {total} inputs "
                               f"(first: input {offset + int(bad.nonzero()[0])}); its weights are broken, so no metric "
                               f"or prediction is made from them")


@torch.no_grad()
def predictions(model: nn.Module, data: Sequence[dict], collate: Callable, kind: TaskKind, batch_size: int,
                device: torch.device, amp: torch.dtype | None = None) -> list:
    """One prediction per example of `data`, in order, decoded by the task kind (a class id, a score,
    or a sentence's tag ids)."""
    was_training = model.training
    model.eval()
    out: list = []
    for items in batches(data, range(len(data)), batch_size):
        batch = collate(items)
        labels = batch.pop("labels")
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(**batch).float().cpu()
        check_finite(logits, len(out), len(data))
        out.extend(kind.decode(logits, labels))
    model.train(was_training)
    return out


def evaluate(model: nn.Module, data: Sequence[dict], collate: Callable, task: TaskInfo, batch_size: int,
             device: torch.device, amp: torch.dtype | None = None) -> dict[str, float]:
    """Dev metrics of `model` on `data` (metric names -> values)."""
    preds = predictions(model, data, collate, task.kind, batch_size, device, amp)
    golds = [task.kind.gold(it) for it in data]
    return task.kind.metrics(task.metrics, preds, golds, task.label_names)
