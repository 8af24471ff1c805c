"""Per-example gradients for DP-SGD, clipped and summed; which sampler a method gets is its registry
entry's (`MethodSpec.dp`).

- `ShiftGradSampler` (jr, jr_warp, linear): exact, from ONE ordinary backward pass of the summed
  loss. z's come from the per-example shift tensor S (B, L, H) (see methods/jr.py): row i of
  S.grad is example i's gradient w.r.t. the shifts, mapped to z by the projection's transpose. The
  head's are outer products of its input with dL_i/d(output) (opacus' Linear grad sampler on
  activations we capture). No per-sample hooks touch the frozen backbone.
- `OpacusGradSampler` (full, bitfit, lora): opacus' hooks on the trainable layers (Linear,
  Embedding, LayerNorm). `ghost` clipping (per-example norms without materialising per-example
  gradients, then a second, re-weighted backward) for full finetuning, where per-example gradients
  of the word embeddings alone would be B x V x H; plain `hooks` for bitfit and lora, whose
  per-example gradients are small and save the second backward.
  Under DP, full finetuning freezes the position embeddings (`freeze_shared_embeddings`): BERT-family
  models look them up with one (1, T) index tensor shared by the batch, which has no per-example gradient.

opacus is imported when a sampler is built or used, not with this module.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from jrft_cli.core import families
from jrft_cli.core.errors import JrftError
from jrft_cli.core.registry import method_spec
from jrft_cli.dp.mechanism import clip_and_sum

GRAD_SAMPLE_MODES = ("auto", "ghost", "hooks")   # auto: the method's own opacus mode


class ShiftGradSampler:
    """Exact per-example gradients of z (jr, jr_warp) and of the head's Linear layers from one
    ordinary backward pass of the summed loss (reduction "sum": example i's gradient is unscaled)."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]) -> None:
        from jrft_cli.core.methods.jr import JointShift

        self.params = list(params)
        adapter = getattr(model, "adapter", None)
        self.adapter = adapter if isinstance(adapter, JointShift) else None
        covered: set[int] = set()
        if self.adapter is not None:
            self.adapter.per_example = True
            covered.add(id(self.adapter.z))
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)
                        and any(p.requires_grad for p in m.parameters(recurse=False))]
        covered |= {id(p) for m in self.linears for p in m.parameters(recurse=False) if p.requires_grad}
        missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if missing:
            raise JrftError(f"private training has no fast per-example gradient for {', '.join(missing[:3])}; "
                            "the fast path covers z and Linear head layers (use method.head=mask)")
        self._captured: dict[nn.Module, list] = {}
        self._handles = [m.register_forward_hook(self._capture) for m in self.linears]

    def _capture(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        slot = [inputs[0].detach(), None]
        if module in self._captured:
            raise JrftError(f"{type(module).__name__} ran twice in one forward; per-example gradients need one use")
        self._captured[module] = slot

        def keep(grad: torch.Tensor) -> None:
            slot[1] = grad.detach()
        out.register_hook(keep)

    def clipped_sum(self, losses: torch.Tensor, max_grad_norm: float) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Backward `losses` (B,), clip every example's gradient to max_grad_norm, return (sums, norms)."""
        per_example = self.per_example_grads(losses)
        return clip_and_sum(per_example, max_grad_norm)

    def per_example_grads(self, losses: torch.Tensor) -> list[torch.Tensor]:
        """(B, *shape) gradients of each example's loss, one tensor per parameter (in `params` order)."""
        from opacus.grad_sample.linear import compute_linear_grad_sample

        try:
            losses.sum().backward()
            grads: dict[int, torch.Tensor] = {}
            if self.adapter is not None:
                grads[id(self.adapter.z)] = self.adapter.per_example_z_grads()
            for module, (act, gout) in self._captured.items():
                for p, g in compute_linear_grad_sample(module, [act], gout).items():
                    grads[id(p)] = g
        finally:
            self._captured.clear()
            for p in self.params:
                p.grad = None
        return [grads[id(p)].to(p.dtype) for p in self.params]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        if self.adapter is not None:
            self.adapter.per_example = False


class OpacusGradSampler:
    """Per-example clipping through opacus hooks on the trainable layers (no wrapping of the model).

    mode "hooks": per-example gradients, clipped and summed here. mode "ghost": opacus' ghost
    clipping computes per-example norms in a first backward; a second backward of the clip-weighted
    loss gives the clipped sum directly.
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], mode: str, max_grad_norm: float) -> None:
        from opacus.grad_sample.grad_sample_module import GradSampleHooks
        from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
            GradSampleHooksFastGradientClipping,
        )

        if mode not in ("ghost", "hooks"):
            raise JrftError(f"privacy.grad_sample_mode={mode!r} is invalid here; choose ghost or hooks")
        _register_grad_samplers()
        unsupported = _unsupported_layers(model)
        if unsupported:
            raise JrftError(f"opacus cannot compute per-example gradients of {', '.join(unsupported)} (a layer with "
                            f"buffers and no opacus grad sampler) in {families.describe(getattr(model, 'backbone', model))}; under "
                            f"privacy=dp use a method that does not train it (jr, jr_warp, linear, lora)")
        self.mode, self.params, self.max_grad_norm = mode, list(params), max_grad_norm
        # opacus walks children() without de-duplication: with the CLS head the backbone is reachable
        # twice (model.backbone is model.hf.base_model), which would hook every layer twice.
        hf = getattr(model, "hf", None)
        if isinstance(hf, nn.Module):
            inside = {id(p) for p in hf.parameters()}
            if all(id(p) in inside for p in self.params):
                model = hf
        if mode == "ghost":
            self.hooks = GradSampleHooksFastGradientClipping(
                model, batch_first=True, loss_reduction="sum", strict=False,
                max_grad_norm=max_grad_norm, use_ghost_clipping=True)
        else:
            self.hooks = GradSampleHooks(model, batch_first=True, loss_reduction="sum", strict=False)

    def clipped_sum(self, losses: torch.Tensor, max_grad_norm: float) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Backward `losses` (B,), clip every example's gradient to max_grad_norm, return (sums, norms)."""
        batch = losses.shape[0]
        if self.mode == "hooks":
            losses.sum().backward()
            per_example = []
            for p in self.params:
                gs = getattr(p, "grad_sample", None)
                self._check(p, gs, batch)
                per_example.append(gs)
                p.grad_sample, p.grad = None, None
            return clip_and_sum(per_example, max_grad_norm)
        losses.sum().backward(retain_graph=True)
        for p in self.params:
            self._check(p, getattr(p, "_norm_sample", None), batch)
            p.grad = None
        coef = self.hooks.get_clipping_coef()          # min(1, C / (||g_i|| + 1e-6)), as clip_and_sum
        norms = self.hooks.per_sample_gradient_norms
        self.hooks.disable_hooks()
        try:
            (coef.detach().to(losses.dtype) * losses).sum().backward()
        finally:
            self.hooks.enable_hooks()
        sums = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p in self.params:
            p.grad, p._norm_sample = None, None
        return sums, norms

    @staticmethod
    def _check(p: nn.Parameter, sample: torch.Tensor | None, batch: int) -> None:
        if sample is None or sample.shape[0] != batch:
            raise JrftError(f"opacus gave no per-example gradient for a trainable tensor of shape {tuple(p.shape)} "
                            f"(got {None if sample is None else tuple(sample.shape)}); it may be shared across the "
                            "batch (freeze it) or used by an unsupported layer")

    def remove(self) -> None:
        self.hooks.remove_hooks()


def _unsupported_layers(model: nn.Module) -> list[str]:
    """Type names of trainable layers opacus can hook neither with a grad sampler nor with functorch
    (which refuses layers holding buffers, e.g. Gemma's scaled word embedding)."""
    from opacus.grad_sample.grad_sample_module import GradSampleHooks

    return sorted({type(m).__name__ for m in model.modules()
                   if any(p.requires_grad for p in m.parameters(recurse=False))
                   and type(m) not in GradSampleHooks.GRAD_SAMPLERS and any(True for _ in m.buffers(recurse=False))})


def _layer_norm_grad_sample(layer: nn.LayerNorm, activations: list[torch.Tensor],
                            backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """opacus' LayerNorm grad sampler, also for LayerNorms without a bias (ModernBERT's), which opacus 1.6's
    own reads as `layer.bias.requires_grad` and fails on."""
    from opacus.grad_sample.layer_norm import compute_layer_norm_grad_sample

    if layer.bias is not None:
        return compute_layer_norm_grad_sample(layer, activations, backprops)
    if not layer.weight.requires_grad:
        return {}
    from opacus.utils.tensor_utils import sum_over_all_but_batch_and_last_n

    normed = nn.functional.layer_norm(activations[0], layer.normalized_shape, eps=layer.eps)
    return {layer.weight: sum_over_all_but_batch_and_last_n(normed * backprops, layer.weight.dim())}


def _register_grad_samplers() -> None:
    from opacus.grad_sample.utils import register_grad_sampler

    register_grad_sampler(nn.LayerNorm)(_layer_norm_grad_sample)


def freeze_shared_embeddings(model: nn.Module) -> list[str]:
    """Freeze position embeddings (BERT-family models index them with one (1, T) tensor shared by the
    whole batch, which has no per-example gradient) and the family's other batch-shared modules
    (core.families: GPT-2's `wpe`, DeBERTa's relative embeddings). Returns the names frozen."""
    frozen = []
    for name, module in families.batch_shared_modules(model):
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own:
            for p in own:
                p.requires_grad_(False)
            frozen.append(name)
    return frozen


def make_sampler(model: nn.Module, params: Sequence[nn.Parameter], method: str, mode: str,
                 max_grad_norm: float) -> ShiftGradSampler | OpacusGradSampler:
    """The per-example gradient sampler for `method`, as its registry entry declares (`MethodSpec.dp`);
    `mode` "auto" takes the method's own opacus mode."""
    dp = method_spec(method).dp
    if dp.path == "shift":
        return ShiftGradSampler(model, params)
    reason = families.family_of(model).no_opacus
    if reason:
        raise JrftError(f"privacy=dp with method={method} is not supported on "
                        f"{families.describe(getattr(model, 'backbone', model))}: {reason}; "
                        f"use jr, jr_warp or linear (exact per-example gradients without opacus)")
    return OpacusGradSampler(model, params, dp.opacus_mode if mode == "auto" else mode, max_grad_norm)


def sampler_label(method: str, mode: str = "auto") -> str:
    """How `method`'s per-example gradients are computed, for reports: `fast (shift grads)` or `opacus (MODE)`."""
    dp = method_spec(method).dp
    return "fast (shift grads)" if dp.path == "shift" else f"opacus ({dp.opacus_mode if mode == 'auto' else mode})"
