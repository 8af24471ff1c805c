"""JR-WARP (`method=jr_warp`): one prompt token prepended to the input; entering layer 1 its hidden
state is s_1, entering every later layer l, s_l is added to it. Shifts come from z as in SLaSh.

Written by hand for the same reason as SLaSh (no library has it). The token is prepended inside the
backbone's forward pre-hook (input ids, attention mask and token types grow by one position), so
callers keep passing ordinary inputs; the mask head reads the last T positions. The prompt's input id
is the pad token: its embedding is overwritten by s_1 anyway, and RoBERTa-style models then give it
the padding position, leaving the real tokens' positions unchanged.

The prompt token cannot be folded into weights; `fold()` precomputes the prompt vectors (L, H) so
inference no longer runs the projection, and `unfold()` returns to computing them from z.
"""
from __future__ import annotations

from dataclasses import field

import torch
from torch import nn

from jrft_cli.core import families
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
    def __init__(self, backbone: nn.Module, d: int, prompt_token_id: int, **kwargs) -> None:
        layers = families.find_layers(backbone)
        embeddings = families.embeddings_of(backbone)
        super().__init__(backbone, d, len(layers), backbone.config.hidden_size, **kwargs)
        self.prompt_token_id = int(prompt_token_id)
        self._folded: torch.Tensor | None = None
        self._hook(embeddings, "forward_hook", self._set_prompt)
        for l, layer in enumerate(layers):
            if l > 0:
                self._hook(layer, "forward_pre_hook", self._make_layer_hook(l))

    # The prompt token changes the inputs the backbone sees (one more position), so JR-WARP tasks share a
    # forward pass only with each other (see JointShift.share_key / layout_key).
    @property
    def share_key(self) -> tuple:
        return (type(self).__name__, self.prompt_token_id)

    @property
    def layout_key(self) -> tuple | None:
        return ("prompt", self.prompt_token_id)

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
        kwargs["input_ids"] = _prepend(kwargs.get("input_ids"), self.prompt_token_id)
        kwargs["attention_mask"] = _prepend(kwargs.get("attention_mask"), 1)
        kwargs["token_type_ids"] = _prepend(kwargs.get("token_type_ids"), 0)
        return args, kwargs

    def _set_prompt(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        first = self.batch_shifts[:, 0, None, :].to(out.dtype)
        return torch.cat([first, out[:, 1:]], dim=1)

    def _make_layer_hook(self, l: int):
        def hook(module: nn.Module, args: tuple):
            hidden = args[0]
            shift = self.batch_shifts[:, l, None, :].to(hidden.dtype)
            hidden = torch.cat([hidden[:, :1] + shift, hidden[:, 1:]], dim=1)
            return (hidden,) + tuple(args[1:])
        return hook


def attach_jr_warp(backbone: nn.Module, config: JRWarpConfig) -> JRWarp:
    """JR-WARP on a bare backbone (freezes it; z is the only trainable tensor)."""
    backbone.requires_grad_(False)
    adapter = JRWarp(backbone, config.d, config.prompt_token_id, projection=config.projection,
                     projection_seed=config.seed, z_init=config.z_init)
    adapter.config = config
    return adapter


def apply(model: nn.Module, config: JRWarpConfig) -> None:
    """Freeze the classifier, attach JR-WARP as `model.adapter`, train z and the head."""
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
