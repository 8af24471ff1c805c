"""Full finetuning: every weight trains."""
from __future__ import annotations

from torch import nn

from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec


@method_options
class FullOptions:
    """Full finetuning has no options."""


def apply(model: nn.Module, options: FullOptions) -> None:
    model.requires_grad_(True)


# Under DP: opacus ghost clipping (per-example gradients of the word embeddings alone would be B x V x H).
SPEC = MethodSpec(name="full", options=FullOptions, apply=apply, export="plain", small_state=False,
                  dp=DPSupport("opacus", "ghost", freeze_shared_embeddings=True),
                  summary="full finetuning: every weight trains")
