"""BitFit: every bias of the backbone, plus the head."""
from torch import nn


def apply(model: nn.Module, **_: object) -> None:
    model.requires_grad_(False)
    for name, p in model.backbone.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)
    for p in model.head_parameters():
        p.requires_grad_(True)
