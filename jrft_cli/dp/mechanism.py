"""What one DP-SGD step does to gradients: Poisson sampling, micro-batches, per-example clipping,
Gaussian noise. Torch only (no opacus, no accounting); the private trainer composes them:

    idx = poisson_sample(n, q, gen)                       # the logical batch (size varies)
    for mb in micro_batches(idx, m): ... per-example grads -> clip_and_sum -> accumulate
    noisy = add_noise(summed, sigma, C, gen)
    grad = [g / (q * n) for g in noisy]                   # divide by the EXPECTED batch size
    accountant.step(sigma, q)                             # dp.accounting
Dividing by the realized batch size would leak it; the Poisson analysis assumes the expected one.
"""
from __future__ import annotations

import math

import torch

from jrft_cli.dp import PrivacyError

CLIP_EPS = 1e-6  # keeps C / norm finite for an all-zero gradient


def poisson_sample(n: int, q: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of one logical batch: each of n examples joins independently with probability q.

    The batch size is random (mean q*n) and may be 0; the loop must still take the (noise-only) step.
    """
    if not 0 < q <= 1:
        raise PrivacyError(f"sample rate q={q} is invalid; it must be in (0, 1]")
    mask = torch.rand(n, generator=generator, device=generator.device) < q
    return mask.nonzero(as_tuple=True)[0]


def micro_batches(indices: torch.Tensor, micro_batch_size: int) -> list[torch.Tensor]:
    """Split a logical batch's indices into physical micro-batches of at most micro_batch_size."""
    if micro_batch_size < 1:
        raise PrivacyError(f"micro batch size {micro_batch_size} is invalid; it must be >= 1")
    return list(torch.split(indices, micro_batch_size)) if indices.numel() else []


def clip_and_sum(
    per_example: list[torch.Tensor], max_grad_norm: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Clip each example's gradient to L2 norm <= C jointly over all tensors, then sum over examples.

    per_example[k]: shape (B, *param_shape). Example i is scaled by min(1, C / (||g_i|| + 1e-6)),
    where ||g_i|| is its norm across ALL tensors (clipping tensors separately would be a different
    mechanism). Returns (summed clipped gradient per tensor, per-example norms before clipping).
    """
    if not max_grad_norm > 0:
        raise PrivacyError(f"max grad norm C={max_grad_norm} is invalid; it must be > 0")
    if not per_example:
        raise PrivacyError("no per-example gradients given; pass one (B, *shape) tensor per parameter")
    batch = {g.shape[0] for g in per_example}
    if len(batch) != 1:
        raise PrivacyError(f"per-example gradients disagree on batch size {sorted(batch)}; all must share dim 0")
    # squared norms in fp32 at least, so bf16/fp16 gradients do not overflow or lose the sum
    acc_dtype = torch.promote_types(per_example[0].dtype, torch.float32)
    sq = sum(
        g.reshape(g.shape[0], math.prod(g.shape[1:])).to(acc_dtype).pow(2).sum(1) for g in per_example
    )
    norms = sq.sqrt()
    scale = (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
    summed = [torch.einsum("b,b...->...", scale.to(g.dtype), g) for g in per_example]
    return summed, norms


def add_noise(
    summed: list[torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Return new tensors: each summed gradient plus i.i.d. N(0, (sigma * C)^2) per entry."""
    if not noise_multiplier >= 0:
        raise PrivacyError(f"noise multiplier {noise_multiplier} is invalid; it must be >= 0")
    if not max_grad_norm > 0:
        raise PrivacyError(f"max grad norm C={max_grad_norm} is invalid; it must be > 0")
    std = noise_multiplier * max_grad_norm
    return [
        g + std * torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype) for g in summed
    ]
