"""SLaSh (`method=jr`): one trainable z, fixed seeded projections W_l, shift s_l = z W_l per layer.

Written by hand: no maintained library implements jointly reparametrized shifts (PEFT has no such
tuner). The shift is injected with forward hooks on the stock transformers modules (no model-class
copies); see core.families for where each position lives:
- `output`:       added to the output of the FFN output projection (== adding s_l to its bias),
- `intermediate`: added to the FFN pre-activation (== the intermediate projection's bias),
- `attention`:    added after the attention block's LayerNorm (== that LayerNorm's bias).
So a trained adapter folds exactly into the backbone's biases (`SLaSh.fold`), and back (`unfold`).

Each forward builds the shifts once as a per-example tensor S (B, L, H) whose rows all equal s_l:
with `per_example=True` S keeps its gradient, and S.grad[i, l] is example i's gradient w.r.t. s_l,
which gives exact per-example gradients of z from ONE ordinary backward pass (private training).
A caller may instead set `example_shifts` to its own S, row i holding example i's shifts: one frozen
backbone then serves a batch mixing many tasks (serving.multitask), each row shifted by its own task.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from jrft_cli.core import families
from jrft_cli.core.options import method_options
from jrft_cli.core.registry import DPSupport, MethodSpec
from jrft_cli.core.projection import make_projection
from dataclasses import field

Position = Literal["output", "intermediate", "attention"]
ProjectionKind = Literal["dense", "structured"]
ZInit = Literal["normal", "zeros"]


@method_options
class SlashConfig:
    """SLaSh: `d` = size of z; `position` of the shift; `projection` kind and its `seed`; `z_init`."""
    d: int = field(default=1024, metadata={"min": 1})
    position: Position = "output"
    projection: ProjectionKind = "dense"
    seed: int = field(default=0, metadata={"key": "projection_seed"})
    z_init: ZInit = "normal"


def init_z(d: int, mode: str) -> torch.Tensor:
    """z's initial value: `normal` (the paper's default) draws N(0, 1/d) from torch's global RNG."""
    if mode == "normal":
        return torch.randn(d) / math.sqrt(d)
    if mode == "zeros":
        return torch.zeros(d)
    raise ValueError(f"z_init={mode!r} is not valid; choose one of normal, zeros")


def _batch_size(args: tuple, kwargs: dict) -> int:
    for t in (kwargs.get("input_ids"), args[0] if args else None, kwargs.get("inputs_embeds")):
        if isinstance(t, torch.Tensor):
            return t.size(0)
    raise RuntimeError("cannot infer the batch size from the backbone's inputs")


class JointShift(nn.Module):
    """z and its projection; builds the per-batch shift tensor S (B, L, H) at every backbone forward.

    The base of SLaSh, JR-WARP and WARP: `shifts()` gives all layers' s_l; `per_example_z_grads()` maps the
    per-example shift gradients back to z (private training); `remove()` detaches every hook."""

    def __init__(self, backbone: nn.Module, d: int, num_layers: int, out_dim: int, projection: str = "dense",
                 projection_seed: int = 0, z_init: str = "normal", *, projection_module: nn.Module | None = None,
                 z0: torch.Tensor | None = None) -> None:
        """`projection_module` and `z0` replace the seeded projection and z's init (WARP: identity, its own init)."""
        super().__init__()
        self.d, self.num_layers, self.out_dim = d, num_layers, out_dim
        self.projection_kind, self.projection_seed, self.z_init = projection, int(projection_seed), z_init
        self.z = nn.Parameter(init_z(d, z_init) if z0 is None else z0)
        self.projection = projection_module if projection_module is not None else \
            make_projection(projection, d, num_layers, out_dim, int(projection_seed))
        self.per_example = False            # set by private training
        self.batch_shifts: torch.Tensor | None = None
        # (B, L, H) shifts given by the caller for the next forwards (row i: example i's); None: z's, every row
        self.example_shifts: torch.Tensor | None = None
        self._hooks: list[tuple[nn.Module, str, object, dict]] = []   # what `reinstall` registers again
        self._handles = []
        self._hook(backbone, "forward_pre_hook", self._begin, with_kwargs=True)

    def _hook(self, module: nn.Module, kind: str, fn, **kwargs) -> None:
        """Register `fn` as a `kind` hook of `module` (and remember it, for `reinstall`)."""
        self._hooks.append((module, kind, fn, kwargs))
        self._handles.append(getattr(module, f"register_{kind}")(fn, **kwargs))

    def shifts(self) -> torch.Tensor:
        """All layers' shifts s_l = z W_l as one (L, H) tensor."""
        return self.projection(self.z)

    # Serving many tasks in one batch (serving.multitask): adapters with equal `share_key` hook the
    # backbone the same way, so one instance serves all of them with per-example `example_shifts`;
    # adapters with equal `layout_key` leave the backbone the same inputs (None: the caller's own), so
    # they can be installed together for one forward pass.
    @property
    def share_key(self) -> tuple:
        return (type(self).__name__,)

    @property
    def layout_key(self) -> tuple | None:
        return None

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict):
        batch = _batch_size(args, kwargs)
        if self.example_shifts is not None:
            S = self.example_shifts
            if S.dim() != 3 or S.size(0) != batch or S.shape[1:] != (self.num_layers, self.out_dim):
                raise ValueError(f"example_shifts has shape {tuple(S.shape)}; this batch needs "
                                 f"({batch}, {self.num_layers}, {self.out_dim})")
        else:
            # z -> shifts in z's dtype even under autocast (bf16): a tiny product, kept exact, and the
            # per-example shift gradients of private training then come back in z's dtype
            with torch.autocast(self.z.device.type, enabled=False):
                S = self.shifts().unsqueeze(0).expand(batch, -1, -1)
        if self.per_example and torch.is_grad_enabled():
            S.retain_grad()
        self.batch_shifts = S
        return None

    def per_example_z_grads(self) -> torch.Tensor:
        """(B, d) exact per-example gradients of z after a backward pass with `per_example=True`."""
        if self.batch_shifts is None or self.batch_shifts.grad is None:
            raise RuntimeError("no per-example shift gradients: set per_example=True and run backward first")
        return self.projection.transpose_apply(self.batch_shifts.grad)

    def remove(self) -> None:
        """Detach every hook: the backbone computes as if the adapter were not there."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    remove_hooks = remove

    @property
    def installed(self) -> bool:
        """Whether the hooks are attached (False after `remove()` until `reinstall()`)."""
        return bool(self._handles)

    def reinstall(self) -> None:
        """Attach the hooks `remove()` detached, in their original order."""
        if self.installed:
            raise RuntimeError("the adapter's hooks are already installed")
        for module, kind, fn, kwargs in self._hooks:
            self._handles.append(getattr(module, f"register_{kind}")(fn, **kwargs))


class SLaSh(JointShift):
    """Adds s_l to every token position of layer l at the chosen position (see the module docstring)."""

    def __init__(self, backbone: nn.Module, d: int, position: str = "output", **kwargs) -> None:
        layers = families.find_layers(backbone)
        family = families.family_of(backbone)
        targets = [families.locate(layer, position, family) for layer in layers]
        super().__init__(backbone, d, len(layers), families.out_features(targets[0]), **kwargs)
        self.position = position
        self._targets = targets
        self._folded: list[torch.Tensor] | None = None
        for l, target in enumerate(targets):
            self._hook(target, "forward_hook", self._make_hook(l))

    @property
    def share_key(self) -> tuple:
        return (type(self).__name__, self.position)

    def _make_hook(self, l: int):
        def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
            return out + self.batch_shifts[:, l, None, :].to(out.dtype)
        return hook

    @property
    def folded(self) -> bool:
        return self._folded is not None

    def fold(self) -> None:
        """Add the current shifts to the target modules' biases and remove the hooks: the backbone is a
        plain model of its family again (same outputs, no extra cost). `unfold()` undoes it exactly."""
        if self.folded:
            raise RuntimeError("the adapter is already folded")
        for l, target in enumerate(self._targets):
            if getattr(target, "bias", None) is None:
                raise ValueError(f"cannot fold the {self.position!r} shift: {type(target).__name__} in layer {l} "
                                 "has no bias (`jrft export` adds one)")
        with torch.no_grad():
            shifts = self.shifts().detach()
            # the original biases (L small vectors), so unfold restores them bit for bit
            self._folded = [target.bias.detach().clone() for target in self._targets]
            for l, target in enumerate(self._targets):
                target.bias.add_(shifts[l].to(target.bias.dtype))
        self.remove()

    def unfold(self) -> None:
        """Put the original biases back and hook the adapter in again (z trains again)."""
        if not self.folded:
            raise RuntimeError("the adapter is not folded")
        with torch.no_grad():
            for target, bias in zip(self._targets, self._folded):
                target.bias.copy_(bias)
        self._folded = None
        self.reinstall()


def attach_slash(backbone: nn.Module, config: SlashConfig) -> SLaSh:
    """SLaSh on a bare backbone (freezes it; z is the only trainable tensor)."""
    backbone.requires_grad_(False)
    adapter = SLaSh(backbone, config.d, config.position, projection=config.projection,
                    projection_seed=config.seed, z_init=config.z_init)
    adapter.config = config
    return adapter


def train_z_and_head(model: nn.Module, adapter: JointShift) -> None:
    """Make `adapter` the classifier's `adapter`; z and the head train, everything else stays frozen."""
    model.adapter = adapter
    adapter.z.requires_grad_(True)
    for p in model.head_parameters():
        p.requires_grad_(True)


def apply(model: nn.Module, config: SlashConfig) -> None:
    """Freeze the classifier, attach SLaSh as `model.adapter`, train z and the head."""
    model.requires_grad_(False)   # before the adapter exists: z stays trainable
    train_z_and_head(model, attach_slash(model.backbone, config))


def label(config: SlashConfig) -> str:
    """Table row label: `jr d=1024`, plus the position and projection when not the defaults."""
    extra = [f"d={config.d}"]
    if config.position != "output":
        extra.append(config.position)
    if config.projection != "dense":
        extra.append(config.projection)
    return "jr " + " ".join(extra)


SPEC = MethodSpec(name="jr", options=SlashConfig, apply=apply, export="fold", small_state=True,
                  dp=DPSupport("shift"), label=label, attach=attach_slash,
                  summary="SLaSh: one z, fixed random projections to a shift per layer")
