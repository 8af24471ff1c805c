"""DP-SGD's mechanism: per-example clipping (joint over tensors), Gaussian noise, Poisson sampling, micro-batches."""
from __future__ import annotations

import math

import pytest
import torch

from jrft_cli.dp import PrivacyError
from jrft_cli.dp.mechanism import CLIP_EPS, add_noise, clip_and_sum, micro_batches, poisson_sample

torch.set_num_threads(1)


# ---------------------------------------------------------------- clipping and noise

def _per_example_norms(tensors):
    return torch.sqrt(sum(t.reshape(t.shape[0], -1).pow(2).sum(1) for t in tensors))


def test_clip_and_sum_clips_jointly_and_keeps_small_examples():
    torch.manual_seed(0)
    C = 1.0
    a = torch.randn(6, 3, 4, dtype=torch.float64)
    b = torch.randn(6, 5, dtype=torch.float64)
    # rescale so examples have chosen joint norms: two under C, three over, and example 5 has
    # each tensor's norm under C (0.8, 0.8) but a joint norm 1.13 over it
    target = torch.tensor([0.3, 0.9, 2.0, 5.0, 40.0], dtype=torch.float64)
    scale = target / _per_example_norms([a[:5], b[:5]])
    a[:5] *= scale[:, None, None]
    b[:5] *= scale[:, None]
    a[5] *= 0.8 / a[5].norm()
    b[5] *= 0.8 / b[5].norm()

    summed, norms = clip_and_sum([a, b], C)
    assert torch.allclose(norms, _per_example_norms([a, b]))
    assert norms[5] > C and a[5].norm() < C and b[5].norm() < C

    # clip each example alone: the result is that example after clipping
    clipped = [clip_and_sum([a[i : i + 1], b[i : i + 1]], C)[0] for i in range(6)]
    clipped_norms = torch.stack([_per_example_norms([ca[None], cb[None]])[0] for ca, cb in clipped])
    assert (clipped_norms <= C).all()
    assert torch.allclose(clipped_norms[2:], torch.full((4,), C, dtype=torch.float64), atol=1e-5)
    for i in (0, 1):  # under C: untouched, bit for bit
        assert torch.equal(clipped[i][0], a[i]) and torch.equal(clipped[i][1], b[i])
    # clipping scales, never rotates: direction kept
    assert torch.allclose(clipped[4][0], a[4] * C / (40.0 + CLIP_EPS))
    # the batch sum is the sum of the clipped examples
    assert torch.allclose(summed[0], sum(c[0] for c in clipped))
    assert torch.allclose(summed[1], sum(c[1] for c in clipped))
    assert summed[0].shape == (3, 4) and summed[1].shape == (5,)


def test_clip_and_sum_low_precision_and_scalar_params():
    g = torch.full((4, 10), 100.0, dtype=torch.bfloat16)  # squared norm 1e5 per example
    s = torch.tensor([3.0, 0.0, 0.0, 0.0], dtype=torch.bfloat16)  # a scalar parameter: shape (B,)
    summed, norms = clip_and_sum([g, s], 1.0)
    assert norms.dtype == torch.float32 and summed[0].dtype == torch.bfloat16
    assert norms[1].item() == pytest.approx(math.sqrt(1e5), rel=1e-3)
    assert summed[1].shape == () and summed[0].shape == (10,)
    assert _per_example_norms([summed[0][None].float(), summed[1][None, None].float()]).item() <= 4.0 * 1.01


def test_clip_and_sum_edge_cases():
    zeros, norms = clip_and_sum([torch.zeros(3, 2)], 1.0)  # zero gradients stay finite
    assert torch.equal(zeros[0], torch.zeros(2)) and torch.equal(norms, torch.zeros(3))
    empty, norms = clip_and_sum([torch.zeros(0, 4)], 1.0)  # an empty Poisson batch
    assert torch.equal(empty[0], torch.zeros(4)) and norms.numel() == 0
    with pytest.raises(PrivacyError, match="disagree on batch size"):
        clip_and_sum([torch.zeros(3, 2), torch.zeros(4, 2)], 1.0)
    with pytest.raises(PrivacyError, match="C=0 is invalid"):
        clip_and_sum([torch.zeros(3, 2)], 0)


def test_add_noise_std_is_sigma_times_c():
    sigma, C, n = 1.3, 0.7, 200_000
    base = [torch.zeros(n), torch.full((50, 4), 2.0)]
    g = torch.Generator().manual_seed(1)
    noisy = add_noise(base, sigma, C, g)
    # sample std of n Gaussians has relative sd 1/sqrt(2n) = 0.16%; allow ~5 of those
    assert noisy[0].std().item() == pytest.approx(sigma * C, rel=0.008)
    assert abs(noisy[0].mean().item()) < 5 * sigma * C / math.sqrt(n)
    assert noisy[1].shape == (50, 4) and not torch.equal(noisy[1], base[1])
    assert torch.equal(base[0], torch.zeros(n))  # inputs are not modified
    again = add_noise(base, sigma, C, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], noisy[0])  # seeded: reproducible
    assert torch.equal(add_noise(base, 0.0, C, g)[1], base[1])  # sigma 0: nothing added


# ---------------------------------------------------------------- sampling

def test_poisson_sample_mean_size_and_membership():
    n, q, draws = 10_000, 0.05, 200
    g = torch.Generator().manual_seed(0)
    batches = [poisson_sample(n, q, g) for _ in range(draws)]
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    sd = math.sqrt(n * q * (1 - q))  # binomial
    assert abs(sizes.mean().item() - n * q) < 5 * sd / math.sqrt(draws)
    assert sizes.std().item() == pytest.approx(sd, rel=0.25)  # sizes vary: not a fixed batch
    for b in batches[:5]:
        assert b.dtype == torch.int64 and b.min() >= 0 and b.max() < n
        assert torch.equal(b, torch.unique(b))  # sorted, no repeats


def test_poisson_sample_is_seeded():
    one = poisson_sample(1000, 0.1, torch.Generator().manual_seed(7))
    two = poisson_sample(1000, 0.1, torch.Generator().manual_seed(7))
    other = poisson_sample(1000, 0.1, torch.Generator().manual_seed(8))
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert len(poisson_sample(1000, 1.0, torch.Generator().manual_seed(0))) == 1000


def test_micro_batches_partition_the_batch():
    idx = torch.tensor([3, 8, 9, 14, 20, 21, 40])
    parts = micro_batches(idx, 3)
    assert [len(p) for p in parts] == [3, 3, 1]
    assert torch.equal(torch.cat(parts), idx)
    assert micro_batches(torch.tensor([], dtype=torch.int64), 4) == []
    with pytest.raises(PrivacyError, match="micro batch size 0 is invalid"):
        micro_batches(idx, 0)
