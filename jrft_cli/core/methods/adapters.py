"""Houlsby adapters (`method=adapters`): a bottleneck MLP after the attention block's output and after
the FFN's output of every layer, before each residual + LayerNorm, plus the head.

Written by hand: the `adapters` library (the paper's adapter-transformers) needs transformers 4.x and
PEFT has no bottleneck adapters. Like SLaSh, each adapter runs in a forward hook on a stock
transformers module (core.families.ADAPTER_PATHS), so no model class is copied. What it computes
follows adapter-transformers' `HoulsbyConfig` (the paper's): on a sublayer's output h (after its
dropout), h + up(act(down(h))) with act = swish, bottleneck size max(1, H // reduction_factor), the
weights of both projections drawn from N(0, 0.02^2) and the biases zero; the result then enters the
block's own residual + LayerNorm. The backbone, LayerNorms included, stays frozen.

The adapters cannot be folded into the backbone's weights, so `jrft export` writes them beside the
weights and rebuilds them with jrft's modeling code (`trust_remote_code=True`); there is no plain,
remote-code-free checkpoint of an adapter run.
"""
from __future__ import annotations

from dataclasses import field
from typing import Literal

import torch
from torch import nn

from jrft_cli.core import families
from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec

NonLinearity = Literal["swish", "relu", "gelu", "tanh"]
POSITIONS = ("attention", "output")   # in each layer, in order of computation
ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@method_options
class AdapterOptions:
    """Houlsby adapters: bottleneck size max(1, H // `reduction_factor`); the bottleneck's `non_linearity`.

    The default reduction factor, 768, is the paper's code default (no GLUE script sets another):
    a bottleneck of 1 on BERT/RoBERTa-base and -large alike."""
    reduction_factor: float = field(default=768.0, metadata={"min": 0, "min_exclusive": True})
    non_linearity: NonLinearity = "swish"


def bottleneck_size(hidden: int, reduction_factor: float) -> int:
    """The bottleneck width for hidden size `hidden`: H // reduction_factor, at least 1."""
    return max(1, int(hidden // reduction_factor))


class Bottleneck(nn.Module):
    """h -> h + up(act(down(h)))."""

    def __init__(self, hidden: int, size: int, non_linearity: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(size, hidden)
        with torch.no_grad():
            for linear in (self.down, self.up):
                linear.weight.normal_(0.0, 0.02)
                linear.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))

    def hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        """Forward hook: replace the target module's output by the adapter's (a bound method, so a
        deep copy of the model calls the copied adapter)."""
        return self(out)


class HoulsbyAdapters(nn.Module):
    """The adapters of every layer (`blocks[2 * l]` after layer l's attention, `blocks[2 * l + 1]` after
    its FFN), hooked into the backbone."""

    def __init__(self, backbone: nn.Module, reduction_factor: float, non_linearity: str = "swish") -> None:
        super().__init__()
        hidden = backbone.config.hidden_size
        self.size = bottleneck_size(hidden, reduction_factor)
        self.non_linearity = non_linearity
        self.blocks = nn.ModuleList()
        self._handles = []
        for layer in families.find_layers(backbone):
            for position in POSITIONS:
                block = Bottleneck(hidden, self.size, non_linearity)
                self.blocks.append(block)
                self._handles.append(families.locate_adapter(layer, position).register_forward_hook(block.hook))

    def remove(self) -> None:
        """Detach every hook: the backbone computes as if the adapters were not there."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def apply(model: nn.Module, options: AdapterOptions) -> None:
    """Freeze the classifier, hook the adapters in as `model.adapter`; the adapters and the head train."""
    model.requires_grad_(False)
    model.adapter = HoulsbyAdapters(model.backbone, options.reduction_factor, options.non_linearity)
    for p in [*model.adapter.parameters(), *model.head_parameters()]:
        p.requires_grad_(True)


def label(options: AdapterOptions) -> str:
    return f"adapters rf={options.reduction_factor:g}"


SPEC = MethodSpec(name="adapters", options=AdapterOptions, apply=apply, export="modules", small_state=True,
                  dp=DPSupport("opacus", "hooks"), label=label,
                  summary="Houlsby adapters: a bottleneck MLP after each attention and FFN output, plus the head")
