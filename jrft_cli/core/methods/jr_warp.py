"""JR-WARP (`method=jr_warp`): one prompt position added to the input; entering layer 1 its hidden
state is s_1, entering every later layer l, s_l is added to it. Shifts come from z as in SLaSh.

Written by hand for the same reason as SLaSh (no library has it). The prompt position is added inside
the backbone's forward pre-hook, so callers keep passing ordinary inputs; the heads read the last T
positions. How it is added is the family's `warp_insert` (core.families):
- `token` (encoders): the prompt token id (the pad token) is prepended to the input ids, attention
  mask and token types; its embedding is overwritten by s_1 anyway, and RoBERTa-style models give it
  the padding position, leaving the real tokens' positions unchanged.
- `embeds` (decoders): the input ids are embedded here, a vector is inserted before them (at index 0,
  so under the causal mask every real token attends to it) and the position ids are passed
  explicitly, the prompt at 0 and the real tokens at 0..T-1 as without the prompt. Nothing here is
  decoder-specific: any family whose forward takes `inputs_embeds` and `position_ids` counted from 0
  can use it.
Either way s_1 is written by a pre-hook on the first block (not on the embeddings), so families that
project their embeddings (ELECTRA) or add positions inside the base model's forward (GPT-2) are covered.

The prompt cannot be folded into weights; `fold()` precomputes the prompt vectors (L, H) so
inference no longer runs the projection, and `unfold()` returns to computing them from z.
"""
from __future__ import annotations

from dataclasses import field

import torch
from torch import nn

from jrft_cli.core import families
from jrft_cli.core.errors import JrftError
from jrft_cli.core.methods.jr import JointShift, ProjectionKind, ZInit, train_z_and_head
from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec, replace_options


@method_options
class JRWarpConfig:
    """JR-WARP: `d` = size of z; `projection` kind and its `seed`; `z_init`; the prompt's input id."""
    d: int = field(default=1024, metadata={"min": 1})
    projection: ProjectionKind = "dense"
    seed: int = field(default=0, metadata={"key": "projection_seed"})
    z_init: ZInit = "normal"
    prompt_token_id: int = field(default=0, metadata={"min": 0})


def _prepend(t: torch.Tensor | None, value: int) -> torch.Tensor | None:
    if t is None:
        return None
    return torch.cat([torch.full_like(t[:, :1], value), t], dim=1)


class JRWarp(JointShift):
    prepended_tokens = 1   # the prompt token takes a position in front of every input

    def __init__(self, backbone: nn.Module, d: int, prompt_token_id: int, **kwargs) -> None:
        layers = families.find_layers(backbone)
        super().__init__(backbone, d, len(layers), backbone.config.hidden_size, **kwargs)
        self.prompt_token_id = int(prompt_token_id)
        self.insert = families.family_of(backbone).warp_insert
        self._embeddings = [backbone.get_input_embeddings()] if self.insert == "embeds" else []   # not a submodule
        self._folded: torch.Tensor | None = None
        for l, layer in enumerate(layers):
            self._handles.append(layer.register_forward_pre_hook(self._make_layer_hook(l), with_kwargs=True))

    def shifts(self) -> torch.Tensor:
        if self._folded is not None:
            return self._folded
        return super().shifts()

    @property
    def folded(self) -> bool:
        return self._folded is not None

    def fold(self) -> None:
        """Precompute the prompt vectors (L, H) from z; the projection no longer runs."""
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
        if args:  # normalise a positional input_ids into kwargs
            kwargs = {**kwargs, "input_ids": args[0]}
            args = args[1:]
        if kwargs.get("position_ids") is not None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("jr_warp supports input_ids inputs without explicit position_ids")
        return args, insert_prompt(kwargs, self.insert, self.prompt_token_id,
                                   self._embeddings[0] if self._embeddings else None)

    def _make_layer_hook(self, l: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            shift = self.batch_shifts[:, l, None, :]
            if args:
                return (_set_prompt_row(args[0], shift, l == 0),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": _set_prompt_row(kwargs["hidden_states"], shift, l == 0)}
        return hook


def insert_prompt(kwargs: dict, insert: str, prompt_token_id: int, embeddings: nn.Module | None) -> dict:
    """The backbone's keyword inputs with one prompt position at index 0 (see the module docstring)."""
    kwargs = dict(kwargs)
    ids, mask, types = kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("token_type_ids")
    if types is not None:
        kwargs["token_type_ids"] = _prepend(types, 0)
    if insert == "token":
        kwargs["input_ids"] = _prepend(ids, prompt_token_id)
        kwargs["attention_mask"] = _prepend(mask, 1)
        return kwargs
    embeds = embeddings(ids)
    batch, length = ids.shape
    kwargs["input_ids"] = None
    kwargs["inputs_embeds"] = torch.cat([torch.zeros_like(embeds[:, :1]), embeds], dim=1)
    # an explicit mask: without one, transformers would read the restarting position ids as packed sequences
    kwargs["attention_mask"] = _prepend(mask if mask is not None else torch.ones_like(ids), 1)
    positions = torch.arange(length, device=ids.device).expand(batch, length)
    kwargs["position_ids"] = _prepend(positions, 0)
    return kwargs


def _set_prompt_row(hidden: torch.Tensor, shift: torch.Tensor, first: bool) -> torch.Tensor:
    """Row 0 (the prompt) set to the shift (entering the first block) or shifted (entering later ones)."""
    row = shift.to(hidden.dtype) if first else hidden[:, :1] + shift.to(hidden.dtype)
    return torch.cat([row, hidden[:, 1:]], dim=1)


def attach_jr_warp(backbone: nn.Module, config: JRWarpConfig) -> JRWarp:
    """JR-WARP on a bare backbone (freezes it; z is the only trainable tensor)."""
    backbone.requires_grad_(False)
    adapter = JRWarp(backbone, config.d, config.prompt_token_id, projection=config.projection,
                     projection_seed=config.seed, z_init=config.z_init)
    adapter.config = config
    return adapter


def apply(model: nn.Module, config: JRWarpConfig) -> None:
    """Freeze the classifier, attach JR-WARP as `model.adapter`, train z and the head."""
    if families.is_decoder(model.backbone) and getattr(model, "head_kind", None) == "cls":
        raise JrftError(f"method=jr_warp with method.head=cls is not supported on the decoder "
                        f"{families.describe(model.backbone)}: its classification head indexes the last non-pad "
                        f"token of the input without the prompt; use method.head=last")
    model.requires_grad_(False)
    train_z_and_head(model, attach_jr_warp(model.backbone, config))


def label(config: JRWarpConfig) -> str:
    extra = [f"d={config.d}"] + ([config.projection] if config.projection != "dense" else [])
    return "jr_warp " + " ".join(extra)


def bind_tokenizer(config: JRWarpConfig, tokenizer) -> JRWarpConfig:
    """The prompt's input id is the tokenizer's pad token (0 when it has none)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return replace_options(config, prompt_token_id=int(pad))


SPEC = MethodSpec(name="jr_warp", options=JRWarpConfig, apply=apply, export="prompt", small_state=True,
                  dp=DPSupport("shift"), label=label, attach=attach_jr_warp, bind_tokenizer=bind_tokenizer,
                  summary="JR-WARP: a prompt token driven by z's per-layer shifts")
