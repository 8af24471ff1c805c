"""JR-WARP (`method=jr_warp`): one prompt vector inserted as a new first position right after the
embedding layer; entering layer 1 it is s_1, entering every later layer l, s_l is added to it. Shifts
come from z as in SLaSh.

Written by hand for the same reason as SLaSh (no library has it). Callers pass ordinary inputs; the
heads read the last T positions. How the position is inserted is the family's `warp_insert`
(core.families); either way every real token keeps its position:
- `embeddings` (encoders): a forward hook on the embedding module prepends a placeholder row to its
  output and the backbone's pre-hook prepends a 1 to the attention mask, so input ids, token types and
  position ids are untouched (absolute positions as BERT/MiniLM, padding-offset ones as RoBERTa).
- `embeds` (decoders): the backbone's pre-hook embeds the input ids itself, puts the placeholder row in
  front (index 0, so under the causal mask every real token attends to it) and passes the position
  ids explicitly (the prompt at 0, the real tokens at 0..T-1 as without the prompt).
The placeholder is replaced by s_1 by a pre-hook on the first block, so families that project their
embeddings (ELECTRA) or add positions inside the base model's forward (GPT-2) get s_1 exactly.

`PromptInsertion` is the mechanism shared with WARP (methods/warp.py): n prompt vectors taken from the
per-batch shift tensor are inserted after the embeddings.

The prompt cannot be folded into weights; `fold()` precomputes the prompt vectors (L, H) so
inference no longer runs the projection, and `unfold()` returns to computing them from z.
"""
from __future__ import annotations

import functools
from dataclasses import field

import torch
from torch import nn

from jrft_cli.core import families
from jrft_cli.core.errors import JrftError
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


def prepend(t: torch.Tensor, n: int, value: int) -> torch.Tensor:
    """`t` (B, T) with n leading columns of `value`."""
    return torch.cat([torch.full_like(t[:, :1], value).expand(-1, n), t], dim=1)


class PromptInsertion(JointShift):
    """A JointShift whose first `num_inserted` rows of the per-batch shift tensor enter the backbone as
    new positions after the embedding layer (the attention mask grows to match). With `layer_shifts`,
    entering layer l >= 1 row l is added to the (single) inserted position (JR-WARP); without, the rows
    are only inserted (WARP).

    `num_inserted` and `layer_shifts` describe the layout for export (the prompt vectors are
    `shifts()`: (rows, H))."""

    def __init__(self, backbone: nn.Module, d: int, rows: int, num_inserted: int, layer_shifts: bool,
                 **kwargs) -> None:
        if layer_shifts and num_inserted != 1:
            raise ValueError("per-layer shifts apply to a single inserted position")
        super().__init__(backbone, d, rows, backbone.config.hidden_size, **kwargs)
        self.num_inserted, self.layer_shifts = int(num_inserted), bool(layer_shifts)
        self.insert = families.family_of(backbone).warp_insert
        self._folded: torch.Tensor | None = None
        # not a submodule (the backbone owns it); only the `embeds` insertion calls it
        self._embeddings = [backbone.get_input_embeddings()] if self.insert == "embeds" else []
        if self.insert == "embeddings":
            embeddings = families.embeddings_of(backbone)
            self._hook(embeddings, "forward_pre_hook", self._embedding_inputs, with_kwargs=True)
            self._hook(embeddings, "forward_hook", self._insert_placeholders)
        for l, layer in enumerate(families.find_layers(backbone)):
            if l == 0 or layer_shifts:
                # a partial of a bound method: a deep copy of the model calls the copied adapter
                self._hook(layer, "forward_pre_hook", functools.partial(self._layer_hook, l), with_kwargs=True)

    # The prompt adds positions to what the backbone sees, so prompt tasks share a forward pass only with
    # tasks inserting as many positions the same way (see JointShift.share_key / layout_key).
    @property
    def share_key(self) -> tuple:
        return (type(self).__name__, self.insert, self.num_inserted)

    @property
    def layout_key(self) -> tuple | None:
        return ("prompt", self.insert, self.num_inserted)

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
        names = ("input_ids", "attention_mask")
        kwargs = {**kwargs, **dict(zip(names, args[:2]))}    # positional ids / mask into kwargs
        args = args[2:]
        if kwargs.get("position_ids") is not None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("prompt insertion supports input_ids inputs without explicit position_ids")
        ids, mask, n = kwargs["input_ids"], kwargs.get("attention_mask"), self.num_inserted
        # an explicit mask of the new length (without one the model would build one of the old length)
        kwargs["attention_mask"] = prepend(mask if mask is not None else torch.ones_like(ids), n, 1)
        if self.insert == "embeds":
            embeds = self._embeddings[0](ids)
            batch, length = ids.shape
            kwargs["input_ids"] = None
            kwargs["inputs_embeds"] = torch.cat([embeds.new_zeros(batch, n, embeds.size(-1)), embeds], dim=1)
            kwargs["position_ids"] = prepend(torch.arange(length, device=ids.device).expand(batch, length), n, 0)
            if kwargs.get("token_type_ids") is not None:
                kwargs["token_type_ids"] = prepend(kwargs["token_type_ids"], n, 0)
        return args, kwargs

    def _embedding_inputs(self, module: nn.Module, args: tuple, kwargs: dict):
        """An embedding module that also reads the attention mask (DeBERTa-v2 masks its output) gets it
        without the inserted positions, which it has not produced yet."""
        ids = args[0] if args else kwargs.get("input_ids")
        mask = kwargs.get("mask")
        if ids is not None and mask is not None and mask.dim() == 2 and mask.size(1) == ids.size(1) + self.num_inserted:
            kwargs = {**kwargs, "mask": mask[:, self.num_inserted:]}
        return args, kwargs

    def _insert_placeholders(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out.new_zeros(out.size(0), self.num_inserted, out.size(-1)), out], dim=1)

    def _layer_hook(self, l: int, module: nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        n = self.num_inserted
        if l == 0:   # the placeholders become the prompt vectors
            rows = self.batch_shifts[:, :n].to(hidden.dtype)
        else:        # JR-WARP: s_l added to the prompt position
            rows = hidden[:, :1] + self.batch_shifts[:, l, None, :].to(hidden.dtype)
        hidden = torch.cat([rows, hidden[:, n:]], dim=1)
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}


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


def refuse_decoder_cls_head(model: nn.Module, method: str) -> None:
    """A decoder's own classification head indexes the last non-pad token of the input without the
    inserted prompt: refused (the last-token head reads the right position)."""
    if families.is_decoder(model.backbone) and getattr(model, "head_kind", None) == "cls":
        raise JrftError(f"method={method} with method.head=cls is not supported on the decoder "
                        f"{families.describe(model.backbone)}: its classification head indexes the last non-pad "
                        f"token of the input without the prompt; use method.head=last")


def apply(model: nn.Module, config: JRWarpConfig) -> None:
    """Freeze the classifier, attach JR-WARP as `model.adapter`, train z and the head."""
    refuse_decoder_cls_head(model, "jr_warp")
    model.requires_grad_(False)
    train_z_and_head(model, attach_jr_warp(model.backbone, config))


def label(config: JRWarpConfig) -> str:
    extra = [f"d={config.d}"] + ([config.projection] if config.projection != "dense" else [])
    return "jr_warp " + " ".join(extra)


SPEC = MethodSpec(name="jr_warp", options=JRWarpConfig, apply=apply, export="prompt", small_state=True,
                  dp=DPSupport("shift"), label=label, attach=attach_jr_warp,
                  summary="JR-WARP: a prompt vector after the embeddings, driven by z's per-layer shifts")
