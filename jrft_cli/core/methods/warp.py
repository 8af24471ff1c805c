"""WARP (`method=warp`): k trainable prompt vectors inserted after the embedding layer, read by the
mask head (Hambardzumyan et al. 2021, as the paper's code runs it: no projection, vectors at the
input only, each initialised N(0, I/H)).

Built on JR-WARP's insertion (methods/jr_warp.py, `PromptInsertion`): the k vectors are the rows of
an identity "projection" of a trainable z of k*H values, so private training gets their exact
per-example gradients from the same single backward pass as jr (DP path "shift"), and export writes
the k vectors like JR-WARP's prompt (jrft's modeling code, `trust_remote_code=True`).
"""
from __future__ import annotations

import math
from dataclasses import field

import torch
from torch import Tensor, nn

from jrft_cli.core.methods.jr import train_z_and_head
from jrft_cli.core.methods.jr_warp import PromptInsertion, refuse_decoder_cls_head
from jrft_cli.core.options import method_options
from jrft_cli.core.projection import Projection
from jrft_cli.core.registry import DPSupport, MethodSpec


@method_options
class WarpOptions:
    """WARP: `k` prompt vectors (k * H trainable values)."""
    k: int = field(default=20, metadata={"min": 1})


class IdentityProjection(Projection):
    """z (k*H) viewed as k rows of H: the prompt vectors themselves."""

    kind = "identity"

    def __init__(self, rows: int, out_dim: int) -> None:
        super().__init__(rows * out_dim, rows, out_dim, seed=0)

    def forward(self, z: Tensor) -> Tensor:
        return z.view(*z.shape[:-1], self.num_layers, self.out_dim)

    def transpose_apply(self, g: Tensor) -> Tensor:
        return g.reshape(g.shape[0], self.d)

    def matrix(self, layer: int) -> Tensor:
        self._check_layer(layer)
        m = torch.zeros(self.d, self.out_dim)
        m[layer * self.out_dim:(layer + 1) * self.out_dim] = torch.eye(self.out_dim)
        return m


class Warp(PromptInsertion):
    def __init__(self, backbone: nn.Module, k: int) -> None:
        hidden = backbone.config.hidden_size
        # each prompt vector N(0, I/H), from torch's global RNG (seeded by the caller)
        z0 = torch.randn(k * hidden) / math.sqrt(hidden)
        super().__init__(backbone, k * hidden, k, num_inserted=k, layer_shifts=False,
                         projection_module=IdentityProjection(k, hidden), z0=z0)
        self.k = k


def attach_warp(backbone: nn.Module, options: WarpOptions) -> Warp:
    """WARP on a bare backbone (freezes it; the prompt vectors are the only trainable tensor)."""
    backbone.requires_grad_(False)
    adapter = Warp(backbone, options.k)
    adapter.config = options
    return adapter


def apply(model: nn.Module, options: WarpOptions) -> None:
    """Freeze the classifier, attach the prompt as `model.adapter`, train the prompt and the head."""
    refuse_decoder_cls_head(model, "warp")
    model.requires_grad_(False)
    train_z_and_head(model, attach_warp(model.backbone, options))


def label(options: WarpOptions) -> str:
    return f"warp k={options.k}"


SPEC = MethodSpec(name="warp", options=WarpOptions, apply=apply, export="prompt", small_state=True,
                  dp=DPSupport("shift"), label=label, attach=attach_warp,
                  summary="WARP: k trainable prompt vectors after the embeddings, plus the head")
