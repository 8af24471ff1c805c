"""What training and serving share about a task's outputs: its loss, and batched predict/evaluate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.tasks.metrics import compute_metrics


class NonFiniteOutputs(JrftError):
    """The model produced NaN or infinite outputs: no metric or prediction is computed from them."""


@dataclass
class TaskInfo:
    is_regression: bool
    metrics: Sequence[str]
    main_metric: str


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool, reduction: str = "mean") -> torch.Tensor:
    if is_regression:
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)
    return nn.functional.cross_entropy(logits.float(), labels, reduction=reduction)


def batches(items: Sequence[dict], order: Sequence[int], batch_size: int) -> Iterator[list[dict]]:
    for i in range(0, len(order), batch_size):
        yield [items[j] for j in order[i:i + batch_size]]


@torch.no_grad()
def predict(model: nn.Module, data: Sequence[dict], collate: Callable, batch_size: int, device: torch.device,
            amp: torch.dtype | None = None) -> torch.Tensor:
    """Logits (N, C) for `data`, in order."""
    was_training = model.training
    model.eval()
    out = []
    for items in batches(data, range(len(data)), batch_size):
        batch = {k: v.to(device) for k, v in collate(items).items() if k != "labels"}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(model(**batch).float().cpu())
    model.train(was_training)
    logits = torch.cat(out) if out else torch.empty(0)
    bad = ~torch.isfinite(logits).reshape(len(logits), -1).all(dim=1) if len(logits) else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        raise NonFiniteOutputs(f"the model's outputs are NaN or infinite for {int(bad.sum())} of {len(logits)} inputs "
                               f"(first: input {int(bad.nonzero()[0])}); its weights are broken, so no metric or "
                               f"prediction is made from them")
    return logits


def evaluate(model: nn.Module, data: Sequence[dict], collate: Callable, task: TaskInfo, batch_size: int,
             device: torch.device, amp: torch.dtype | None = None) -> dict[str, float]:
    """Dev metrics of `model` on `data` (GLUE metric names -> values)."""
    logits = predict(model, data, collate, batch_size, device, amp)
    labels = [it["labels"] for it in data]
    preds = logits.squeeze(-1).tolist() if task.is_regression else logits.argmax(-1).tolist()
    return compute_metrics(list(task.metrics), preds, labels)
