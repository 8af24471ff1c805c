"""SLaSh (`method=jr`): one trainable z, fixed seeded projections W_l, shift s_l = z W_l per layer.

The shift is injected with forward hooks on the stock transformers modules (no model-class copies):
- `output`:       added to the output of the FFN output projection (== adding s_l to its bias),
- `intermediate`: added to the FFN pre-activation (== the intermediate projection's bias),
- `attention`:    added after the attention block's LayerNorm (== that LayerNorm's bias).
So a trained model folds exactly into a plain checkpoint (see jrft export).

Each forward builds the shifts once as a per-example tensor S (B, L, H) whose rows all equal s_l:
with `per_example=True` S keeps its gradient, and S.grad[i, l] is example i's gradient w.r.t. s_l,
which gives exact per-example gradients of z from ONE ordinary backward pass (private training).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.core.backbone import find_encoder_layers
from jrft_cli.core.projection import PROJECTION_KINDS, make_projection

POSITIONS = ("output", "intermediate", "attention")
Z_INITS = ("normal", "zeros")

# Where each position lives, by module path inside one encoder layer (BERT/RoBERTa first, DistilBERT second).
_POSITION_PATHS = {
    "output": ("output.dense", "ffn.lin2"),
    "intermediate": ("intermediate.dense", "ffn.lin1"),
    "attention": ("attention.output.LayerNorm", "sa_layer_norm"),
}


def locate(layer: nn.Module, position: str) -> nn.Module:
    """The module inside `layer` whose output receives the shift at `position`."""
    if position not in POSITIONS:
        raise JrftError(f"method.position={position!r} is not valid; choose one of {', '.join(POSITIONS)}")
    for path in _POSITION_PATHS[position]:
        try:
            return layer.get_submodule(path)
        except AttributeError:
            continue
    raise JrftError(f"cannot find the {position!r} position in {type(layer).__name__}; "
                    f"looked for {', '.join(_POSITION_PATHS[position])}")


def out_features(module: nn.Module) -> int:
    """Width of a module's output (the shift size at that position)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[0])
    raise JrftError(f"cannot shift the output of {type(module).__name__}")


def init_z(d: int, mode: str) -> torch.Tensor:
    """z's initial value: `normal` (the paper's default) draws N(0, 1/d) from torch's global RNG."""
    if mode == "normal":
        return torch.randn(d) / math.sqrt(d)
    if mode == "zeros":
        return torch.zeros(d)
    raise JrftError(f"method.z_init={mode!r} is not valid; choose one of {', '.join(Z_INITS)}")


def _batch_size(args: tuple, kwargs: dict) -> int:
    for t in (kwargs.get("input_ids"), args[0] if args else None, kwargs.get("inputs_embeds")):
        if isinstance(t, torch.Tensor):
            return t.size(0)
    raise RuntimeError("cannot infer the batch size from the backbone's inputs")


class JointShift(nn.Module):
    """z and its projection; builds the per-batch shift tensor S (B, L, H) at every backbone forward."""

    def __init__(self, backbone: nn.Module, d: int, num_layers: int, out_dim: int, projection: str = "dense",
                 projection_seed: int = 0, z_init: str = "normal") -> None:
        super().__init__()
        if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
            raise JrftError(f"d={d!r} is not valid; d must be a positive integer (e.g. d=1024)")
        if projection not in PROJECTION_KINDS:
            raise JrftError(f"method.projection={projection!r} is not valid; choose one of {', '.join(PROJECTION_KINDS)}")
        self.d, self.num_layers, self.out_dim = d, num_layers, out_dim
        self.projection_kind, self.projection_seed, self.z_init = projection, int(projection_seed), z_init
        self.z = nn.Parameter(init_z(d, z_init))
        self.projection = make_projection(projection, d, num_layers, out_dim, int(projection_seed))
        self.per_example = False            # set by private training
        self.batch_shifts: torch.Tensor | None = None
        self._handles = [backbone.register_forward_pre_hook(self._begin, with_kwargs=True)]

    def shifts(self) -> torch.Tensor:
        """All layers' shifts s_l = z W_l as one (L, H) tensor."""
        return self.projection(self.z)

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict):
        s = self.shifts()
        S = s.unsqueeze(0).expand(_batch_size(args, kwargs), -1, -1)
        if self.per_example and torch.is_grad_enabled():
            S.retain_grad()
        self.batch_shifts = S
        return None

    def per_example_z_grads(self) -> torch.Tensor:
        """(B, d) exact per-example gradients of z after a backward pass with `per_example=True`."""
        if self.batch_shifts is None or self.batch_shifts.grad is None:
            raise RuntimeError("no per-example shift gradients: set per_example=True and run backward first")
        return self.projection.transpose_apply(self.batch_shifts.grad)

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class SLaSh(JointShift):
    """Adds s_l to every token position of layer l at the chosen position."""

    def __init__(self, backbone: nn.Module, d: int, position: str = "output", **kwargs) -> None:
        layers = find_encoder_layers(backbone)
        targets = [locate(layer, position) for layer in layers]
        super().__init__(backbone, d, len(layers), out_features(targets[0]), **kwargs)
        self.position = position
        for l, target in enumerate(targets):
            self._handles.append(target.register_forward_hook(self._make_hook(l)))

    def _make_hook(self, l: int):
        def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
            return out + self.batch_shifts[:, l, None, :].to(out.dtype)
        return hook


def apply(model: nn.Module, *, d: int, position: str = "output", projection: str = "dense",
          projection_seed: int = 0, z_init: str = "normal", **_: object) -> None:
    """Freeze everything, attach SLaSh as `model.adapter`, train z and the head."""
    model.requires_grad_(False)   # before the adapter exists: z stays trainable
    attach(model, SLaSh(model.backbone, d, position, projection=projection,
                        projection_seed=projection_seed, z_init=z_init))


def attach(model: nn.Module, adapter: JointShift) -> None:
    """Make `adapter` the model's `adapter`; z and the head train, everything else stays frozen."""
    model.adapter = adapter
    adapter.z.requires_grad_(True)
    for p in model.head_parameters():
        p.requires_grad_(True)
