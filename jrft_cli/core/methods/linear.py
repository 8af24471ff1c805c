"""Linear probe: only the head trains."""
from torch import nn


def apply(model: nn.Module, **_: object) -> None:
    model.requires_grad_(False)
    for p in model.head_parameters():
        p.requires_grad_(True)
