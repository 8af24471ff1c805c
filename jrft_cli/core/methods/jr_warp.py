"""JR-WARP (`method=jr_warp`): one prompt token prepended to the input; entering layer 1 its hidden
state is s_1, entering every later layer l, s_l is added to it. Shifts come from z as in SLaSh.

The token is prepended inside the backbone's forward pre-hook (input ids, attention mask and token
types grow by one position), so callers keep passing ordinary inputs; the mask head reads the last
T positions. The prompt's input id is the pad token: its embedding is overwritten by s_1 anyway, and
RoBERTa-style models then give it the padding position, leaving the real tokens' positions unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.core.methods.jr import JointShift, attach
from jrft_cli.core.backbone import find_encoder_layers


def _prepend(t: torch.Tensor | None, value: int) -> torch.Tensor | None:
    if t is None:
        return None
    return torch.cat([torch.full_like(t[:, :1], value), t], dim=1)


class JRWarp(JointShift):
    def __init__(self, backbone: nn.Module, d: int, prompt_token_id: int, **kwargs) -> None:
        layers = find_encoder_layers(backbone)
        embeddings = getattr(backbone, "embeddings", None)
        if embeddings is None:
            raise JrftError(f"jr_warp needs a backbone with an `embeddings` module; {type(backbone).__name__} has none")
        super().__init__(backbone, d, len(layers), backbone.config.hidden_size, **kwargs)
        self.prompt_token_id = int(prompt_token_id)
        self._handles.append(embeddings.register_forward_hook(self._set_prompt))
        for l, layer in enumerate(layers):
            if l > 0:
                self._handles.append(layer.register_forward_pre_hook(self._make_layer_hook(l)))

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict):
        super()._begin(module, args, kwargs)
        if args:  # normalise a positional input_ids into kwargs
            kwargs = {**kwargs, "input_ids": args[0]}
            args = args[1:]
        kwargs["input_ids"] = _prepend(kwargs.get("input_ids"), self.prompt_token_id)
        kwargs["attention_mask"] = _prepend(kwargs.get("attention_mask"), 1)
        kwargs["token_type_ids"] = _prepend(kwargs.get("token_type_ids"), 0)
        if kwargs.get("position_ids") is not None or kwargs.get("inputs_embeds") is not None:
            raise JrftError("jr_warp supports input_ids inputs without explicit position_ids")
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


def apply(model: nn.Module, *, d: int, projection: str = "dense", projection_seed: int = 0,
          z_init: str = "normal", prompt_token_id: int = 0, **_: object) -> None:
    """Freeze everything, attach JR-WARP as `model.adapter`, train z and the head."""
    model.requires_grad_(False)
    attach(model, JRWarp(model.backbone, d, prompt_token_id, projection=projection,
                         projection_seed=projection_seed, z_init=z_init))
