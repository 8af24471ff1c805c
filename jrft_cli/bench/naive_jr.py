"""REFERENCE ONLY (used by `jrft bench`, never by training): jr written the straightforward way.

This is how the paper's release structures SLaSh, kept here so `jrft bench` measures our gain over
it instead of asserting one:
- every W_l is a dense, frozen `nn.Parameter` (d x H) inside the model (saved, moved, counted with
  the weights), not a seeded buffer or a structured transform;
- the shift enters by module replacement: each layer's `output.dense` becomes
  `Sequential(dense, DenseShift)` with DenseShift(x) = x + z @ W_l (one z shared by all layers);
- private training gets per-example gradients from opacus' generic `GradSampleModule` hooks. Opacus
  has no grad sampler for DenseShift, so it falls back to torch.func (vmap of grad over each
  example, per layer) and computes per-example gradients of EVERY parameter of the layer, the frozen
  W_l included (B x d x H per layer), before keeping z's.

jrft's own jr (methods/jr.py + private.py) gets the same per-example gradients of z from one
ordinary backward pass through a per-example shift tensor.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from jrft_cli.tasks.evaluation import loss_fn
from jrft_cli.core.methods.jr import init_z
from jrft_cli.core.families import find_layers as find_encoder_layers, locate
from jrft_cli.dp.accounting import add_noise, clip_and_sum
from jrft_cli.core.projection import make_projection


class DenseShift(nn.Module):
    """x + z @ W_l, with W_l a frozen dense parameter and z shared by every layer's DenseShift."""

    def __init__(self, z: nn.Parameter, weight: torch.Tensor) -> None:
        super().__init__()
        self.z = z                                              # the same Parameter object in every layer
        self.W = nn.Parameter(weight, requires_grad=False)      # (d, H), frozen but a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.z @ self.W


def apply_naive_jr(model: nn.Module, d: int, seed: int = 0) -> nn.Parameter:
    """Freeze `model` (a SequenceClassifier with a mask head), insert DenseShift after every layer's
    FFN output projection (the `output` position), train z and the head. Returns z."""
    model.requires_grad_(False)
    z = nn.Parameter(init_z(d, "normal"))
    layers = find_encoder_layers(model.backbone)
    width = locate(layers[0], "output").out_features
    # The same W_l as jr's dense projection for this seed, so the two are comparable number for number.
    weights = make_projection("dense", d, len(layers), width, seed).weights
    for l, layer in enumerate(layers):
        dense = locate(layer, "output")
        weight = weights[l].clone()
        parent_path, _, attr = _path_of(layer, dense).rpartition(".")
        parent = layer.get_submodule(parent_path) if parent_path else layer
        setattr(parent, attr, nn.Sequential(dense, DenseShift(z, weight)))
    # z is reachable only through the DenseShift modules: registered on the top module, opacus would
    # treat the whole model as one functorch layer.
    for p in model.head_parameters():
        p.requires_grad_(True)
    return z


def _path_of(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError("module not found")


class NaivePrivateStep:
    """One DP-SGD step on a fixed batch through opacus' GradSampleModule (per-example grads, joint
    clipping to C, Gaussian noise, AdamW step): the generic machinery, for comparison."""

    def __init__(self, model: nn.Module, collate: Callable, device: torch.device, lr: float = 3e-3,
                 max_grad_norm: float = 1.0, noise_multiplier: float = 1.0, seed: int = 0) -> None:
        from opacus import GradSampleModule

        self.module = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)
        self.collate, self.device = collate, device
        self.max_grad_norm, self.noise_multiplier = max_grad_norm, noise_multiplier
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def step(self, items: list[dict]) -> float:
        batch = {k: v.to(self.device) for k, v in self.collate(items).items()}
        labels = batch.pop("labels")
        self.module.train()
        losses = loss_fn(self.module(**batch), labels, is_regression=False, reduction="none")
        with warnings.catch_warnings():   # opacus' full backward hooks on a frozen-input module: expected
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward()
        per_example = [p.grad_sample for p in self.params]
        summed, _ = clip_and_sum(per_example, self.max_grad_norm)
        noisy = add_noise(summed, self.noise_multiplier, self.max_grad_norm, self.generator)
        for p, g in zip(self.params, noisy):
            p.grad = g / len(items)
            p.grad_sample = None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(losses.detach().sum())
