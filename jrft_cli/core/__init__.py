"""jrft's method library: SLaSh and JR-WARP adapters, the method registry, backbone + heads.

Usable from Python without Hydra (nothing here imports hydra, omegaconf or opacus), the way PEFT
methods are used:

    from transformers import AutoModel
    from jrft_cli.core import SlashConfig, attach
    backbone = AutoModel.from_pretrained(path)
    adapter = attach(backbone, SlashConfig(d=1024, position="output", seed=0))  # z trains; backbone frozen
    ...
    adapter.fold()      # shifts folded into the biases: the backbone is a plain model again
    adapter.unfold()    # and back

`save_adapter` / `load_adapter` write and read the adapter in jrft's artifact format
(adapter_config.json + adapter.safetensors), the same files `jrft train` writes into a run dir.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from jrft_cli.core.artifact import load_adapter, save_adapter
from jrft_cli.core.errors import JrftError
from jrft_cli.core.methods.jr import SLaSh, SlashConfig
from jrft_cli.core.methods.jr_warp import JRWarp, JRWarpConfig
from jrft_cli.core.registry import MethodSpec, apply_method, method_names, method_spec, spec_for_options

__all__ = ["attach", "SlashConfig", "JRWarpConfig", "SLaSh", "JRWarp", "save_adapter", "load_adapter",
           "method_spec", "method_names", "apply_method", "MethodSpec", "JrftError"]


def attach(backbone: nn.Module, config: Any) -> nn.Module:
    """Attach the adapter described by `config` (SlashConfig or JRWarpConfig) to a transformers
    backbone: the backbone is frozen, the returned adapter's `z` is the only trainable tensor. The
    adapter lives outside the backbone's modules; keep a reference to it (its hooks stay until
    `adapter.remove()`)."""
    spec = spec_for_options(config)
    if spec.attach is None:
        raise TypeError(f"method {spec.name!r} has no adapter to attach to a bare backbone; "
                        "apply it to a classifier with apply_method")
    return spec.attach(backbone, config)
