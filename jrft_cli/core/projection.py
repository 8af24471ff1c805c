"""Seeded random projections for the jr method: z in R^d -> one shift per layer, (L, H).

Two kinds, both regenerated from a seed on CPU (same seed -> same matrices on any machine/device)
and held as non-persistent buffers, so a checkpoint never contains them:

- ``dense``: W_l with i.i.d. N(0, 1/d) entries (the paper's "normal" init). L*d*H floats.
- ``structured``: a Gaussian subsampled randomized Hadamard transform (Fastfood-like),
  O(L*H + d) memory and O(n log n + L*m log m) time per z, n = pow2(d), m = pow2(H):

      u   = H_n (B * pad_n(z))              shared over layers; B random signs (n)
      v_l = G_l * u[idx_l]                  idx_l: m indices into u (without replacement when
                                            n >= m, else m/n stacked permutations);
                                            G_l = sqrt(m) g/|g|, g ~ N(0, I_m)
      s_l = (E_l * H_m v_l)[:H] / sqrt(d*m) E_l random signs (m)

  H_k is the unnormalized +-1 Walsh-Hadamard matrix. What holds, over the draw of B, idx, G, E:
  E[W_ij] = 0 and E[W_ij^2] = 1/d exactly; E[W_ij W_kl] = 0 for any two distinct entries of
  one layer (E_j kills j != l, B_i kills i != k) and across layers (independent E_l). Given
  the signs and indices, W_ij = <a, G_l> with |a|^2 = 1/(d*m): a scaled coordinate of a
  uniform point on the sphere of radius sqrt(m), i.e. N(0, 1/d) up to O(1/m) in the tails.
  G_l is normalized (as Fastfood's S is) so that each layer's overall scale is fixed instead
  of fluctuating by ~sqrt(2/m) per layer; when d is a power of two and d >= m every column of
  W_l then has norm exactly 1 (dense: chi_d / sqrt(d)). What does not hold: entries are not
  jointly independent (they share B, G_l and the Hadamard structure, so fourth moments differ from
  the dense Gaussian), and layers share B. The second moments already follow from G's sign
  symmetry and the random idx; B is what keeps one fixed z from vanishing in a layer (a z
  aligned with a Hadamard row would otherwise put all of H z on one coordinate, missed by
  most subsamples), and E removes the Hadamard sign pattern from each draw's output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PROJECTION_KINDS: tuple[str, ...] = ("dense", "structured")


def _next_pow2(k: int) -> int:
    return 1 << (k - 1).bit_length()


def fwht(x: Tensor) -> Tensor:
    """Unnormalized fast Walsh-Hadamard transform over the last dim (a power of two).

    log2(n) vectorized butterfly stages; differentiable (H is symmetric, so autograd's
    backward is again a Hadamard transform). H @ H = n * I.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two last dim, got {n}")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        pairs = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


class Projection(torch.nn.Module):
    """Fixed random maps W_l in R^{d x out_dim}, l < num_layers; z -> stack(z @ W_l)."""

    kind: str

    def __init__(self, d: int, num_layers: int, out_dim: int, seed: int) -> None:
        super().__init__()
        self.d, self.num_layers, self.out_dim, self.seed = d, num_layers, out_dim, seed

    def forward(self, z: Tensor) -> Tensor:
        """z (..., d) -> shifts (..., L, out_dim); differentiable in z."""
        raise NotImplementedError

    def transpose_apply(self, g: Tensor) -> Tensor:
        """g (B, L, out_dim) -> (B, d): sum_l W_l @ g[b, l].

        Given per-example gradients g of the shifts, this is each example's gradient of z.
        """
        raise NotImplementedError

    def matrix(self, layer: int) -> Tensor:
        """The dense (d, out_dim) W_layer."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of the tensors this projection holds."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range [0, {self.num_layers})")

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, d={self.d}, num_layers={self.num_layers}, "
                f"out_dim={self.out_dim}, seed={self.seed}")


class DenseProjection(Projection):
    """W_l entries i.i.d. N(0, 1/d), drawn on CPU from `seed`; L*d*H floats."""

    kind = "dense"

    def __init__(self, d: int, num_layers: int, out_dim: int, seed: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__(d, num_layers, out_dim, seed)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        weights = torch.randn(num_layers, d, out_dim, generator=gen) / math.sqrt(d)
        self.register_buffer("weights", weights.to(device=device, dtype=dtype), persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        return torch.einsum("...d,ldh->...lh", z, self.weights)

    def transpose_apply(self, g: Tensor) -> Tensor:
        # One addmm per layer on the transposed view: no copy of the L*d*H weights (einsum permuted
        # them every call, ~12x slower; this runs once per micro-batch in private training).
        out = g[:, 0] @ self.weights[0].T
        for layer in range(1, self.num_layers):
            out.addmm_(g[:, layer], self.weights[layer].T)
        return out

    def matrix(self, layer: int) -> Tensor:
        self._check_layer(layer)
        return self.weights[layer]


class StructuredProjection(Projection):
    """Gaussian subsampled randomized Hadamard transform; see the module docstring."""

    kind = "structured"

    def __init__(self, d: int, num_layers: int, out_dim: int, seed: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__(d, num_layers, out_dim, seed)
        n, m = _next_pow2(d), _next_pow2(out_dim)
        self.n, self.m = n, m
        self.scale = 1.0 / math.sqrt(d * m)  # makes Var(W_ij) exactly 1/d

        gen = torch.Generator(device="cpu").manual_seed(seed)

        def signs(size: int) -> Tensor:
            return torch.randint(0, 2, (size,), generator=gen).float() * 2 - 1

        in_signs = signs(n)
        idx, gauss, out_signs = [], [], []
        for _ in range(num_layers):  # per layer, in order: later layers do not shift earlier ones
            if n >= m:
                idx.append(torch.randperm(n, generator=gen)[:m])
            else:
                idx.append(torch.cat([torch.randperm(n, generator=gen) for _ in range(m // n)]))
            g = torch.randn(m, generator=gen)
            gauss.append(g * (math.sqrt(m) / g.norm()))  # fixed norm: see module docstring
            out_signs.append(signs(m))

        def buf(name: str, t: Tensor, float_dtype: bool = True) -> None:
            t = t.to(device=device, dtype=dtype) if float_dtype else t.to(device=device)
            self.register_buffer(name, t, persistent=False)

        buf("in_signs", in_signs[:d])  # rows >= d are zero padding; never needed
        buf("index", torch.stack(idx), float_dtype=False)  # (L, m) int64 into [0, n)
        buf("gauss", torch.stack(gauss))  # (L, m)
        buf("out_signs", torch.stack(out_signs)[:, :out_dim])  # (L, H)

    def forward(self, z: Tensor) -> Tensor:
        if z.shape[-1] != self.d:
            raise ValueError(f"z has last dim {z.shape[-1]}, projection expects d={self.d}")
        lead = z.shape[:-1]
        x = z.reshape(-1, self.d) * self.in_signs
        u = fwht(torch.nn.functional.pad(x, (0, self.n - self.d)))  # (B, n)
        v = u[:, self.index] * self.gauss  # (B, L, m)
        y = fwht(v)[..., : self.out_dim] * (self.out_signs * self.scale)
        return y.reshape(*lead, self.num_layers, self.out_dim)

    def transpose_apply(self, g: Tensor) -> Tensor:
        if g.shape[1:] != (self.num_layers, self.out_dim):
            raise ValueError(f"g has shape {tuple(g.shape)}, expected "
                             f"(B, {self.num_layers}, {self.out_dim})")
        b = g.shape[0]
        y = g * (self.out_signs * self.scale)
        v = fwht(torch.nn.functional.pad(y, (0, self.m - self.out_dim))) * self.gauss  # (B, L, m)
        u = torch.zeros(b, self.n, device=g.device, dtype=g.dtype)
        u = u.index_add(1, self.index.reshape(-1), v.reshape(b, -1))  # adjoint of the gather
        return fwht(u)[:, : self.d] * self.in_signs

    def matrix(self, layer: int, chunk: int = 256) -> Tensor:
        """Materialize W_layer (tests/export): transform identity vectors on the smaller side
        (rows of W through the forward, or columns through the adjoint), `chunk` at a time."""
        self._check_layer(layer)
        forward_side = self.d <= self.out_dim
        size = self.d if forward_side else self.out_dim
        like = self.gauss
        parts = []
        for start in range(0, size, chunk):
            stop = min(start + chunk, size)
            eye = torch.zeros(stop - start, size, device=like.device, dtype=like.dtype)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
            if forward_side:
                parts.append(self._layer_forward(eye, layer))  # rows of W
            else:
                parts.append(self._layer_adjoint(eye, layer))  # rows of W^T
        return torch.cat(parts) if forward_side else torch.cat(parts).T

    def _layer_forward(self, x: Tensor, layer: int) -> Tensor:
        """Rows of x (B, d) through W_layer only: (B, out_dim)."""
        u = fwht(torch.nn.functional.pad(x * self.in_signs, (0, self.n - self.d)))
        v = u[:, self.index[layer]] * self.gauss[layer]
        return fwht(v)[:, : self.out_dim] * (self.out_signs[layer] * self.scale)

    def _layer_adjoint(self, g: Tensor, layer: int) -> Tensor:
        """Rows of g (B, out_dim) through W_layer's adjoint only: (B, d)."""
        y = g * (self.out_signs[layer] * self.scale)
        v = fwht(torch.nn.functional.pad(y, (0, self.m - self.out_dim))) * self.gauss[layer]
        u = torch.zeros(g.shape[0], self.n, device=g.device, dtype=g.dtype)
        u = u.index_add(1, self.index[layer], v)
        return fwht(u)[:, : self.d] * self.in_signs


def make_projection(kind: str, d: int, num_layers: int, out_dim: int, seed: int,
                    device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> Projection:
    """Build the `kind` projection (one of PROJECTION_KINDS), regenerated from `seed` on CPU."""
    if kind not in PROJECTION_KINDS:
        raise ValueError(f"unknown projection kind {kind!r}; choose one of: "
                         f"{', '.join(PROJECTION_KINDS)}")
    for name, value in (("d", d), ("num_layers", num_layers), ("out_dim", out_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"projection {name} must be a positive integer, got {value!r}")
    cls = DenseProjection if kind == "dense" else StructuredProjection
    return cls(d, num_layers, out_dim, seed, device=device, dtype=dtype)
