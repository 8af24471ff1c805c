"""BitFit: every bias (the backbone's and the head's) plus the head's output projection.

The paper's BitFit trains every parameter whose name ends in `bias` (the classifier's too) and the
classifier's output projection; the weight of a dense layer inside the head (RoBERTa's classification
head: dense + tanh + out_proj) stays frozen. `head_weights="all"` trains every weight of the head
instead (jrft's earlier BitFit; the same set for one-layer heads such as BERT's `classifier`).

Families whose blocks have no biases (Llama, Mistral, Gemma, Phi-3, ModernBERT's defaults) are
refused: BitFit would train the head alone.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from jrft_cli.core import families
from jrft_cli.core.errors import JrftError
from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec


@method_options
class BitFitOptions:
    """`head_weights`: `output` (the paper's: the head's output projection only) or `all` (every head weight)."""
    head_weights: Literal["output", "all"] = "output"


def apply(model: nn.Module, options: BitFitOptions) -> None:
    biases = [p for name, p in model.backbone.named_parameters() if name.endswith("bias")]
    if not biases:
        raise JrftError(f"method=bitfit: the backbone {families.describe(model.backbone)} has no bias parameters, "
                        f"so BitFit would train the head alone; choose another method (jr, lora, full, linear)")
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)
    if options.head_weights == "all":
        for p in model.head_parameters():
            p.requires_grad_(True)
    else:
        model.output_projection().weight.requires_grad_(True)


def label(options: BitFitOptions) -> str:
    return "bitfit" if options.head_weights == "output" else "bitfit head=all"


SPEC = MethodSpec(name="bitfit", options=BitFitOptions, apply=apply, export="plain", small_state=False,
                  dp=DPSupport("opacus", "hooks"), label=label,
                  summary="BitFit: every bias, plus the head's output projection")
