"""JR-WARP (`method=jr_warp`): one prompt vector inserted as a new first position right after the
embedding layer; entering layer 1 it is s_1, entering every later layer l, s_l is added to it. Shifts
come from z as in SLaSh.

Written by hand for the same reason as SLaSh (no library has it). The prompt enters after the
embeddings (a forward hook on the embedding module prepends it to the embedding output; the
backbone's forward pre-hook prepends a 1 to the attention mask), so the input ids, token types and
position ids are untouched and every real token keeps its position on every position scheme
(absolute, as BERT/MiniLM, or padding-offset, as RoBERTa). Callers pass ordinary inputs; the heads
read the last T positions.

`PromptInsertion` is the mechanism shared with WARP (methods/warp.py): n prompt vectors taken from
the per-batch shift tensor are inserted after the embeddings.

The prompt cannot be folded into weights; `fold()` precomputes the prompt vectors (L, H) so
inference no longer runs the projection, and `unfold()` returns to computing them from z.
"""
from __future__ import annotations

import functools
from dataclasses import field

import torch
from torch import nn

from jrft_cli.core import families
from jrft_cli.core.methods.jr import JointShift, ProjectionKind, ZInit, train_z_and_head
from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec


@method_options
class JRWarpConfig:
    """JR-WARP: `d` = size of z; `projection` kind and its `seed`; `z_init`."""
    d: int = field(default=1024, metadata={"min": 1})
    projection: ProjectionKind = "dense"
    seed: int = field(default=0, metadata={"key": "projection_seed"})
    z_init: ZInit = "normal"


def prepend_ones(mask: torch.Tensor, n: int) -> torch.Tensor:
    """`mask` (B, T) with n leading ones (the inserted positions are attended to)."""
    return torch.cat([torch.ones_like(mask[:, :1]).expand(-1, n), mask], dim=1)


class PromptInsertion(JointShift):
    """A JointShift whose first `num_inserted` rows of the per-batch shift tensor enter the backbone as
    new positions after the embedding layer (the attention mask grows to match). With `layer_shifts`,
    entering layer l >= 1 row l is added to the (single) inserted position (JR-WARP); without, the rows
    are only inserted (WARP).

    `num_inserted` and `layer_shifts` describe the layout for export (the prompt vectors are
    `shifts()`: (rows, H))."""

    def __init__(self, backbone: nn.Module, d: int, rows: int, num_inserted: int, layer_shifts: bool,
                 **kwargs) -> None:
        super().__init__(backbone, d, rows, backbone.config.hidden_size, **kwargs)
        self.num_inserted, self.layer_shifts = int(num_inserted), bool(layer_shifts)
        self._folded: torch.Tensor | None = None
        self._handles.append(families.embeddings_of(backbone).register_forward_hook(self._insert))
        if layer_shifts:
            for l, layer in enumerate(families.find_layers(backbone)):
                if l > 0:   # a partial of a bound method: a deep copy of the model calls the copied adapter
                    self._handles.append(layer.register_forward_pre_hook(functools.partial(self._shift_layer, l)))

    def shifts(self) -> torch.Tensor:
        if self._folded is not None:
            return self._folded
        return super().shifts()

    @property
    def folded(self) -> bool:
        return self._folded is not None

    def fold(self) -> None:
        """Precompute the prompt vectors from z; the projection no longer runs."""
        if self.folded:
            raise RuntimeError("the adapter is already folded")
        with torch.no_grad():
            self._folded = super().shifts().detach().clone()

    def unfold(self) -> None:
        """Compute the prompt vectors from z again (z trains again)."""
        if not self.folded:
            raise RuntimeError("the adapter is not folded")
        self._folded = None

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict):
        super()._begin(module, args, kwargs)
        if len(args) > 1:   # a positional attention mask (the backbone's second argument) into kwargs
            kwargs = {**kwargs, "attention_mask": args[1]}
            args = args[:1] + args[2:]
        if kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = prepend_ones(kwargs["attention_mask"], self.num_inserted)
        return args, kwargs

    def _insert(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        prompt = self.batch_shifts[:, :self.num_inserted].to(out.dtype)
        return torch.cat([prompt, out], dim=1)

    def _shift_layer(self, l: int, module: nn.Module, args: tuple):
        hidden = args[0]
        shift = self.batch_shifts[:, l, None, :].to(hidden.dtype)
        hidden = torch.cat([hidden[:, :1] + shift, hidden[:, 1:]], dim=1)
        return (hidden,) + tuple(args[1:])


class JRWarp(PromptInsertion):
    def __init__(self, backbone: nn.Module, d: int, **kwargs) -> None:
        layers = families.find_layers(backbone)
        super().__init__(backbone, d, len(layers), num_inserted=1, layer_shifts=True, **kwargs)


def attach_jr_warp(backbone: nn.Module, config: JRWarpConfig) -> JRWarp:
    """JR-WARP on a bare backbone (freezes it; z is the only trainable tensor)."""
    backbone.requires_grad_(False)
    adapter = JRWarp(backbone, config.d, projection=config.projection, projection_seed=config.seed,
                     z_init=config.z_init)
    adapter.config = config
    return adapter


def apply(model: nn.Module, config: JRWarpConfig) -> None:
    """Freeze the classifier, attach JR-WARP as `model.adapter`, train z and the head."""
    model.requires_grad_(False)
    train_z_and_head(model, attach_jr_warp(model.backbone, config))


def label(config: JRWarpConfig) -> str:
    extra = [f"d={config.d}"] + ([config.projection] if config.projection != "dense" else [])
    return "jr_warp " + " ".join(extra)


SPEC = MethodSpec(name="jr_warp", options=JRWarpConfig, apply=apply, export="prompt", small_state=True,
                  dp=DPSupport("shift"), label=label, attach=attach_jr_warp,
                  summary="JR-WARP: a prompt vector after the embeddings, driven by z's per-layer shifts")
