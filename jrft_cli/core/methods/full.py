"""Full finetuning: every weight trains."""
from torch import nn


def apply(model: nn.Module, **_: object) -> None:
    model.requires_grad_(True)
