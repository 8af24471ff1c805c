"""BitFit: every bias of the backbone, plus the head."""
from __future__ import annotations

from torch import nn

from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec


@method_options
class BitFitOptions:
    """BitFit has no options."""


def apply(model: nn.Module, options: BitFitOptions) -> None:
    model.requires_grad_(False)
    for name, p in model.backbone.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)
    for p in model.head_parameters():
        p.requires_grad_(True)


SPEC = MethodSpec(name="bitfit", options=BitFitOptions, apply=apply, export="plain", small_state=False,
                  dp=DPSupport("opacus", "hooks"), summary="BitFit: every bias of the backbone, plus the head")
