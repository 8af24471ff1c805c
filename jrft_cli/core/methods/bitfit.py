"""BitFit: every bias of the backbone, plus the head. Families whose blocks have no biases (Llama,
Mistral, Gemma, Phi-3, ModernBERT's defaults) are refused: BitFit would train the head alone."""
from __future__ import annotations

from torch import nn

from jrft_cli.core import families
from jrft_cli.core.errors import JrftError
from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec


@method_options
class BitFitOptions:
    """BitFit has no options."""


def apply(model: nn.Module, options: BitFitOptions) -> None:
    biases = [p for name, p in model.backbone.named_parameters() if name.endswith("bias")]
    if not biases:
        raise JrftError(f"method=bitfit: the backbone {families.describe(model.backbone)} has no bias parameters, "
                        f"so BitFit would train the head alone; choose another method (jr, lora, full, linear)")
    model.requires_grad_(False)
    for p in biases:
        p.requires_grad_(True)
    for p in model.head_parameters():
        p.requires_grad_(True)


SPEC = MethodSpec(name="bitfit", options=BitFitOptions, apply=apply, export="plain", small_state=False,
                  dp=DPSupport("opacus", "hooks", freeze_shared_embeddings=True), summary="BitFit: every bias of the backbone, plus the head")
