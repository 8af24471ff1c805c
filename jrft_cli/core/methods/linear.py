"""Linear probe: only the head trains."""
from __future__ import annotations

from torch import nn

from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec


@method_options
class LinearOptions:
    """The linear probe has no options."""


def apply(model: nn.Module, options: LinearOptions) -> None:
    model.requires_grad_(False)
    for p in model.head_parameters():
        p.requires_grad_(True)


SPEC = MethodSpec(name="linear", options=LinearOptions, apply=apply, export="plain", small_state=True,
                  dp=DPSupport("shift"), summary="linear probe: only the head trains")
