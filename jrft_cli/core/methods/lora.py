"""LoRA through peft: rank-r adapters on the chosen backbone projections, plus the head.

peft injects LoRA layers into the backbone in place (`inject_adapter_in_model`), so the module
paths and our head stay as they were; `merge` folds them back into the base weights for export.
The update is scaled by alpha / r. The paper's LoRA (adapter-transformers' `LoRAConfig(r=r)` on query
and value) keeps that library's default alpha = 8, so its rank-1 runs scale the update by 8: jrft's
default alpha is 8 for that reason.
"""
from __future__ import annotations

from dataclasses import field
from typing import Optional

from torch import nn

from jrft_cli.core import families
from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec


@method_options
class LoraOptions:
    """LoRA: rank `r`, scaling numerator `alpha` (scale alpha / r), dropout, and the target module names
    (None: the family's attention projections, `core.families`: query/value for BERT-style encoders,
    q_proj/v_proj for Llama-style decoders, c_attn for GPT-2...)."""
    r: int = field(default=1, metadata={"min": 1})
    alpha: float = field(default=8.0, metadata={"min": 0, "min_exclusive": True})
    lora_dropout: float = field(default=0.0, metadata={"min": 0})
    target_modules: Optional[tuple[str, ...]] = None


def targets(backbone: nn.Module, options: LoraOptions) -> tuple[str, ...]:
    """The module names LoRA adapts on `backbone` (checked: each must exist)."""
    wanted = options.target_modules or families.lora_targets(backbone)
    leaves = {n.split(".")[-1]: type(m).__name__ for n, m in backbone.named_modules() if n}
    missing = [t for t in wanted if t not in leaves]
    if missing:
        linear = sorted(n for n, kind in leaves.items() if kind in ("Linear", "Conv1D"))
        raise ValueError(f"LoraOptions: target_modules {list(missing)} not found in {families.describe(backbone)}; "
                         f"its linear modules are named {', '.join(linear)}")
    return tuple(wanted)


def apply(model: nn.Module, options: LoraOptions) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    names = targets(model.backbone, options)
    # GPT-2's Conv1D stores its weight transposed: peft must know (it would warn and switch anyway)
    transposed = any(type(m).__name__ == "Conv1D" for n, m in model.backbone.named_modules()
                     if n.split(".")[-1] in names)
    model.requires_grad_(False)
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.lora_dropout,
                        target_modules=list(names), fan_in_fan_out=transposed)
    # Injection freezes all but the LoRA weights of the backbone; the head is unfrozen below.
    inject_adapter_in_model(config, model.backbone)
    for p in model.head_parameters():
        p.requires_grad_(True)


def merge(model: nn.Module) -> None:
    """Merge every peft tuner layer into its base layer and put the base layer back (in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuners = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in tuners:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
    for m in model.modules():
        if hasattr(m, "peft_config"):
            del m.peft_config


def label(options: LoraOptions) -> str:
    """`lora r=1`, plus the alpha when it is not the default 8 (`lora r=1 alpha=2`)."""
    return f"lora r={options.r}" + ("" if options.alpha == 8 else f" alpha={options.alpha:g}")


# Under DP: opacus per-sample hooks (measured faster than ghost clipping for LoRA: 1029 vs 1517 ms per
# step, MiniLM, SST-2, logical batch 256); its per-example gradients are small.
SPEC = MethodSpec(name="lora", options=LoraOptions, apply=apply, export="merge", small_state=False,
                  dp=DPSupport("opacus", "hooks"), label=label, merge=merge,
                  summary="LoRA (peft): rank-r updates on attention projections, plus the head")
