import math

import pytest
import torch

from jrft_cli.core.projection import PROJECTION_KINDS, Projection, make_projection

torch.set_num_threads(1)

# (d, H): d a power of two, d not a power of two, d > H, d < H, trivial sizes.
SHAPES = [(16, 8), (12, 20), (100, 7), (5, 33), (1, 1)]


def _dense_matrices(p: Projection) -> torch.Tensor:
    return torch.stack([p.matrix(layer) for layer in range(p.num_layers)])


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_same_seed_same_matrices_different_seed_different(kind):
    a = make_projection(kind, 12, 3, 20, seed=7)
    b = make_projection(kind, 12, 3, 20, seed=7)
    c = make_projection(kind, 12, 3, 20, seed=8)
    assert torch.equal(_dense_matrices(a), _dense_matrices(b))
    assert not torch.allclose(_dense_matrices(a), _dense_matrices(c))
    # Different layers get different randomness.
    assert not torch.allclose(a.matrix(0), a.matrix(1))


def test_dense_is_normal_from_cpu_generator():
    # The contract others rely on: N(0, 1/d) drawn by a CPU generator seeded with `seed`.
    d, L, H, seed = 12, 3, 5, 11
    expected = torch.randn(L, d, H, generator=torch.Generator("cpu").manual_seed(seed))
    got = _dense_matrices(make_projection("dense", d, L, H, seed, dtype=torch.float64))
    torch.testing.assert_close(got, (expected / math.sqrt(d)).double())


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_generation_independent_of_dtype_and_device(kind):
    ref = _dense_matrices(make_projection(kind, 12, 2, 20, seed=3, dtype=torch.float64))
    low = _dense_matrices(make_projection(kind, 12, 2, 20, seed=3, dtype=torch.float32))
    torch.testing.assert_close(low.double(), ref, atol=1e-6, rtol=1e-5)
    if torch.cuda.is_available():
        gpu = make_projection(kind, 12, 2, 20, seed=3, device="cuda", dtype=torch.float64)
        torch.testing.assert_close(_dense_matrices(gpu).cpu(), ref)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
@pytest.mark.parametrize("d,H", SHAPES)
def test_forward_is_matmul_with_matrix(kind, d, H):
    p = make_projection(kind, d, 3, H, seed=0, dtype=torch.float64)
    z = torch.randn(d, dtype=torch.float64)
    shifts = p(z)
    assert shifts.shape == (3, H)
    expected = torch.stack([z @ p.matrix(layer) for layer in range(3)])
    torch.testing.assert_close(shifts, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
@pytest.mark.parametrize("d,H", SHAPES)
def test_transpose_apply_is_per_example_gradient(kind, d, H):
    B, L = 4, 3
    p = make_projection(kind, d, L, H, seed=1)
    g = torch.randn(B, L, H)
    got = p.transpose_apply(g)
    assert got.shape == (B, d)
    torch.testing.assert_close(got, torch.einsum("blh,ldh->bd", g, _dense_matrices(p)),
                               atol=1e-5, rtol=1e-4)
    # Example b's loss <shifts, g[b]>: its gradient w.r.t. z, by autograd, one example at a time.
    for b in range(B):
        z = torch.randn(d, requires_grad=True)
        (p(z) * g[b]).sum().backward()
        torch.testing.assert_close(got[b], z.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("d,H", [(12, 6), (5, 20)])  # n >= m and n < m
def test_structured_matches_gaussian_second_moments(d, H):
    # Entries of one draw are dependent, so sample independent draws (seeds) and compare the
    # full second-moment matrix of all L*d*H entries with the dense Gaussian's: (1/d) * I.
    L, seeds = 2, 3000
    x = torch.stack([_dense_matrices(make_projection("structured", d, L, H, s, dtype=torch.float64))
                     .flatten() for s in range(seeds)])  # (S, L*d*H)
    k = x.shape[1]
    # Sampling std of each estimate, from the sample size: Var(X) = 1/d, E[X^4] <= 3/d^2.
    sd_mean = math.sqrt(1 / d / seeds)
    sd_second = math.sqrt(3 / seeds) / d
    z = 5.5  # ~k^2 entries checked; P(|N(0,1)| > 5.5) * k^2 << 1
    assert x.mean(0).abs().max() < z * sd_mean
    second = x.T @ x / seeds
    diag = second.diagonal()
    assert (diag - 1 / d).abs().max() < z * sd_second
    assert abs(diag.mean() - 1 / d) < z * sd_second / math.sqrt(k)
    off = second - torch.diag(diag)
    assert off.abs().max() < z * sd_second
    # Correlation scale, for the message: small relative to the variance.
    assert (off.abs().max() * d) < 0.15


def test_structured_marginal_is_near_gaussian():
    # One big draw: entries are ~N(0, 1/d): variance, kurtosis and tail mass.
    d, H = 256, 512
    w = make_projection("structured", d, 2, H, seed=5, dtype=torch.float64).matrix(1).flatten()
    w = w * math.sqrt(d)
    assert abs(w.mean()) < 0.02
    assert abs(w.var() - 1) < 0.02
    assert abs((w**4).mean() - 3) < 0.15
    assert abs((w.abs() > 1.96).double().mean() - 0.05) < 0.005


def test_structured_shift_scale_matches_dense():
    d, L, H = 1024, 24, 256
    z = torch.randn(d, generator=torch.Generator().manual_seed(0)) / math.sqrt(d)
    dense = make_projection("dense", d, L, H, seed=0)(z).norm(dim=-1)
    structured = make_projection("structured", d, L, H, seed=0)(z).norm(dim=-1)
    # E|s_l|^2 = H |z|^2 / d for both.
    expected = math.sqrt(H / d) * z.norm()
    assert abs(dense.mean() / expected - 1) < 0.05
    assert abs(structured.mean() / expected - 1) < 0.05


def test_structured_spreads_a_hadamard_aligned_z():
    # z equal to one Walsh-Hadamard row would land on a single coordinate of H z and vanish
    # from every layer that does not subsample it; the random input signs spread it first.
    from scipy.linalg import hadamard

    d, L, H = 1024, 24, 64
    z = torch.tensor(hadamard(d)[37], dtype=torch.float32) / math.sqrt(d)  # |z| = 1
    norms = make_projection("structured", d, L, H, seed=0)(z).norm(dim=-1)
    expected = math.sqrt(H / d)
    # Per-layer |s_l| fluctuates like the dense one's (~1/sqrt(2H) relative), never vanishes.
    assert abs(norms.mean() / expected - 1) < 0.15
    assert norms.min() > 0.5 * expected
    assert norms.max() < 2.0 * expected


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_projection_never_in_state_dict(kind):
    p = make_projection(kind, 12, 2, 20, seed=0)
    assert p.state_dict() == {}
    holder = torch.nn.Module()
    holder.z = torch.nn.Parameter(torch.zeros(12))
    holder.projection = p
    assert list(holder.state_dict()) == ["z"]
    assert p.nbytes() > 0


def test_dense_nbytes_is_all_matrices():
    p = make_projection("dense", 12, 3, 20, seed=0, dtype=torch.float64)
    assert p.nbytes() == 3 * 12 * 20 * 8


def test_structured_memory_under_one_percent_of_dense_at_roberta_large():
    d, L, H = 4096, 24, 1024
    dense_bytes = L * d * H * 4  # analytical: 400 MB, not allocated here
    structured = make_projection("structured", d, L, H, seed=0)
    assert structured.nbytes() < 0.01 * dense_bytes


def test_structured_large_d():
    d, L, H = 65536, 2, 64
    p = make_projection("structured", d, L, H, seed=0)
    z = torch.randn(d, requires_grad=True)
    p(z).sum().backward()
    torch.testing.assert_close(z.grad.unsqueeze(0), p.transpose_apply(torch.ones(1, L, H)))
    w = p.matrix(1)  # d > H: materialized column by column through the adjoint
    assert w.shape == (d, H)
    torch.testing.assert_close(z.detach() @ w, p(z.detach())[1], atol=1e-5, rtol=1e-4)
    assert abs(w.var().item() * d - 1) < 0.01


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_forward_batched_leading_dims(kind):
    p = make_projection(kind, 12, 3, 20, seed=0, dtype=torch.float64)
    z = torch.randn(2, 5, 12, dtype=torch.float64)
    out = p(z)
    assert out.shape == (2, 5, 3, 20)
    torch.testing.assert_close(out[1, 4], p(z[1, 4]))


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_bfloat16_follows_float32(kind):
    ref = make_projection(kind, 100, 2, 40, seed=0)
    low = make_projection(kind, 100, 2, 40, seed=0, dtype=torch.bfloat16)
    z = torch.randn(100)
    out = low(z.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref(z), atol=0.05, rtol=0.05)
    g = torch.randn(3, 2, 40)
    torch.testing.assert_close(low.transpose_apply(g.bfloat16()).float(),
                               ref.transpose_apply(g), atol=0.05, rtol=0.05)


def test_bad_kind_names_value_and_choices():
    with pytest.raises(ValueError, match=r"'fastfood'.*dense, structured"):
        make_projection("fastfood", 8, 2, 4, seed=0)


@pytest.mark.parametrize("field,args", [("d", (0, 2, 4)), ("d", (-3, 2, 4)),
                                        ("num_layers", (8, 0, 4)), ("out_dim", (8, 2, 0))])
def test_nonpositive_sizes_rejected(field, args):
    with pytest.raises(ValueError, match=rf"{field} must be a positive integer, got -?\d"):
        make_projection("structured", *args, seed=0)


def test_structured_wrong_z_size_rejected():
    p = make_projection("structured", 8, 2, 4, seed=0)
    with pytest.raises(ValueError, match="d=8"):
        p(torch.zeros(9))
