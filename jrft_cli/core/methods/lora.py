"""LoRA through peft: rank-r adapters on the chosen backbone projections, plus the head.

peft injects LoRA layers into the backbone in place (`inject_adapter_in_model`), so the module
paths and our head stay as they were; each injected layer's `merge()` folds it back for export.
"""
from __future__ import annotations

from torch import nn

from jrft_cli.core.errors import JrftError


def apply(model: nn.Module, *, r: int = 1, alpha: float = 2, lora_dropout: float = 0.0,
          target_modules: list[str] | tuple[str, ...] = ("query", "value"), **_: object) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    if not isinstance(r, int) or r <= 0:
        raise JrftError(f"method.r={r!r} is not valid; the LoRA rank must be a positive integer")
    names = {n.split(".")[-1] for n, _ in model.backbone.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise JrftError(f"method.target_modules: {missing} not found in {type(model.backbone).__name__}; "
                        f"module names include e.g. query, key, value, dense")
    model.requires_grad_(False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=lora_dropout, target_modules=list(target_modules))
    # Injection freezes all but the LoRA weights of the backbone; the head is unfrozen below.
    inject_adapter_in_model(config, model.backbone)
    for p in model.head_parameters():
        p.requires_grad_(True)
