"""DP-SGD building blocks: accounting against opacus and an exact reference, clipping, noise, sampling."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from scipy.optimize import brentq
from scipy.stats import norm

from jrft_cli.dp import accounting as privacy
from jrft_cli.dp.accounting import (
    Accountant,
    PRV_MAX_EPSILON,
    PrivacyError,
    add_noise,
    clip_and_sum,
    default_delta,
    epsilon_for,
    micro_batches,
    noise_multiplier_for,
    poisson_sample,
    sample_rate,
    steps_for,
    validate,
)

torch.set_num_threads(1)


def analytic_gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Exact epsilon of `steps` full-batch (q = 1) Gaussian steps at noise sigma (sensitivity 1).

    T compositions of N(0, sigma^2) equal one Gaussian with sigma / sqrt(T); its exact privacy
    profile is Balle & Wang 2018 (Thm. 8): delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu),
    mu = sqrt(T) / sigma. Independent of opacus: a reference the accountants must upper-bound.
    """
    mu = math.sqrt(steps) / sigma

    def profile(eps: float) -> float:
        return norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu) - delta

    return brentq(profile, 0.0, 100.0)


# ---------------------------------------------------------------- accounting

def test_small_helpers():
    assert default_delta(8000) == 1 / 16000
    assert sample_rate(32, 8000) == 0.004
    assert steps_for(3, 0.004) == 750
    assert steps_for(1, 3 / 7) == 2  # round(2.333), not ceil


@pytest.mark.parametrize("accountant", privacy.ACCOUNTANTS)
def test_epsilon_equals_opacus_called_directly(accountant):
    sigma, q, steps, delta = 1.0, 0.02, 200, 1e-5
    if accountant == "prv":
        acc = PRVAccountant()
        acc.history = [(sigma, q, steps)]
        expected = acc.get_epsilon(delta=delta, eps_error=0.01)
    else:
        acc = RDPAccountant()
        acc.history = [(sigma, q, steps)]
        expected = acc.get_epsilon(delta=delta, alphas=privacy.RDP_ALPHAS)
        # the extra orders can only tighten opacus' default-order bound
        with warnings.catch_warnings():  # opacus: "optimal order is the largest alpha", the point here
            warnings.simplefilter("ignore", UserWarning)
            default_orders = acc.get_epsilon(delta=delta)
        assert epsilon_for(sigma, q, steps, delta, "rdp") <= default_orders + 1e-12
    got = epsilon_for(sigma, q, steps, delta, accountant)
    assert got == pytest.approx(expected, rel=1e-9)
    assert 0.5 < got < 5  # a sane magnitude for these settings


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (2.0, 10), (5.0, 50)])
def test_full_batch_matches_exact_gaussian(sigma, steps):
    delta = 1e-5
    exact = analytic_gaussian_epsilon(sigma, steps, delta)
    prv = epsilon_for(sigma, 1.0, steps, delta, "prv")
    rdp = epsilon_for(sigma, 1.0, steps, delta, "rdp")
    # PRV returns the top of a +-eps_error bracket around the truth; RDP is a looser upper bound
    assert exact - 1e-6 <= prv <= exact + 2 * privacy.PRV_EPS_ERROR
    assert exact - 1e-6 <= rdp <= exact * 1.25


def test_prv_tighter_than_rdp_under_subsampling():
    prv = epsilon_for(0.8, 0.01, 500, 1e-5, "prv")
    rdp = epsilon_for(0.8, 0.01, 500, 1e-5, "rdp")
    assert prv < rdp


def test_no_noise_means_no_privacy():
    assert epsilon_for(0.0, 0.01, 10, 1e-5) == math.inf


@pytest.mark.parametrize("accountant", privacy.ACCOUNTANTS)
@pytest.mark.parametrize("target", [0.5, 3.0])
def test_noise_multiplier_round_trips_to_target(accountant, target):
    q, steps, delta = 0.02, 150, 1e-5
    sigma = noise_multiplier_for(target, delta, q, steps, accountant)
    spent = epsilon_for(sigma, q, steps, delta, accountant)
    assert target - min(0.01, target / 100) - 1e-9 <= spent <= target
    # and it is not needlessly large: 10% less noise overshoots the target
    assert epsilon_for(0.9 * sigma, q, steps, delta, accountant) > target


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # opacus probes sigma up to 20+
def test_noise_multiplier_agrees_with_opacus_search():
    # opacus' own search (fixed tolerance 0.01) lands within the same epsilon window
    kwargs = dict(target_epsilon=2.0, target_delta=1e-5, sample_rate=0.02, steps=150)
    theirs = get_noise_multiplier(**kwargs, accountant="rdp", alphas=privacy.RDP_ALPHAS)
    ours = noise_multiplier_for(2.0, 1e-5, 0.02, 150, "rdp")
    assert ours == pytest.approx(theirs, rel=0.01)


def test_more_steps_need_more_noise():
    a = noise_multiplier_for(2.0, 1e-5, 0.02, 50, "rdp")
    b = noise_multiplier_for(2.0, 1e-5, 0.02, 500, "rdp")
    assert b > a


@pytest.mark.parametrize("accountant", privacy.ACCOUNTANTS)
def test_accountant_resume_matches_uninterrupted(accountant):
    schedule = [(1.0, 0.02)] * 30 + [(1.5, 0.02)] * 20  # a noise change mid-run
    whole = Accountant(accountant)
    for s, q in schedule:
        whole.step(s, q)

    first = Accountant(accountant)
    for s, q in schedule[:17]:
        first.step(s, q)
    saved = json.loads(json.dumps(first.state_dict()))  # must survive a plain JSON checkpoint
    resumed = Accountant(accountant)
    resumed.load_state_dict(saved)
    for s, q in schedule[17:]:
        resumed.step(s, q)

    assert resumed.steps == whole.steps == 50
    assert resumed.state_dict() == whole.state_dict()
    assert resumed.epsilon(1e-5) == whole.epsilon(1e-5)
    assert whole.epsilon(1e-5) > first.epsilon(1e-5) > 0


def test_accountant_steps_agree_with_epsilon_for():
    acc = Accountant("rdp")
    for _ in range(40):
        acc.step(1.1, 0.05)
    assert acc.epsilon(1e-5) == pytest.approx(epsilon_for(1.1, 0.05, 40, 1e-5, "rdp"), rel=1e-12)


def test_accountant_before_any_step_and_bad_state():
    acc = Accountant("prv")
    assert acc.epsilon(1e-5) == 0.0
    with pytest.raises(PrivacyError, match="for 'rdp', not 'prv'"):
        acc.load_state_dict(Accountant("rdp").state_dict())
    with pytest.raises(PrivacyError, match="'mechanism' and 'history'"):
        acc.load_state_dict({"history": []})
    with pytest.raises(PrivacyError, match="unknown accountant 'gdp'"):
        Accountant("gdp")
    with pytest.raises(PrivacyError, match="noise multiplier 0"):
        acc.step(0, 0.1)


# ---------------------------------------------------------------- validation

GOOD = dict(epsilon=3.0, delta=1e-5, noise_multiplier=None, q=0.01, steps=100, accountant="rdp", n=1000)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"epsilon": 0.0}, "epsilon=0.0 is invalid"),
        ({"epsilon": -1.0}, "epsilon=-1.0 is invalid"),
        ({"delta": 0.0}, "delta=0.0 is invalid"),
        ({"delta": 1.0}, "delta=1.0 is invalid"),
        ({"q": 0.0}, "q=0.0 is invalid"),
        ({"q": 1.5}, "q=1.5 is invalid"),
        ({"accountant": "gdp"}, "unknown accountant 'gdp'; choose one of: prv, rdp"),
        ({"steps": 0}, "steps=0 is invalid"),
        ({"n": 0}, "n=0 is invalid"),
        ({"noise_multiplier": -0.5}, "noise multiplier -0.5 is invalid"),
        ({"epsilon": None}, "neither epsilon nor noise multiplier"),
    ],
)
def test_validate_rejects(override, message):
    with pytest.raises(PrivacyError) as info:
        validate(**{**GOOD, **override})
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_validate_noise_too_small_says_which_epsilon():
    spent = epsilon_for(0.3, 0.01, 100, 1e-5, "rdp")
    with pytest.raises(PrivacyError, match=r"noise multiplier 0.3 is too small for epsilon=3.0: it gives epsilon=") as info:
        validate(**{**GOOD, "noise_multiplier": 0.3})
    assert f"epsilon={spent:.4g}" in str(info.value)


def test_validate_accepts_good_settings():
    assert validate(**GOOD) is None       # raises PrivacyError otherwise
    sigma = noise_multiplier_for(3.0, 1e-5, 0.01, 100, "rdp")
    assert validate(**{**GOOD, "noise_multiplier": sigma}) is None
    assert validate(**{**GOOD, "epsilon": None, "noise_multiplier": 1.0}) is None


def test_helper_errors():
    with pytest.raises(PrivacyError, match="batch size 9 is invalid; it must be in \\[1, n=8\\]"):
        sample_rate(9, 8)
    with pytest.raises(PrivacyError, match="n=0 is invalid"):
        default_delta(0)
    with pytest.raises(PrivacyError, match="gives 0 steps"):
        steps_for(0.001, 1.0)
    with pytest.raises(PrivacyError, match="unreachable"):
        noise_multiplier_for(1e-9, 1e-5, 1.0, 1000, "rdp")


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
    assert torch.allclose(clipped[4][0], a[4] * C / (40.0 + privacy.CLIP_EPS))
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


def test_validate_refuses_a_tiny_noise_multiplier_without_prv_blowing_up():
    # PRV at sigma=0.01 (q=0.1, 20 steps) needs GBs; the RDP bound settles it
    with pytest.raises(PrivacyError, match=r"noise multiplier 0.01 is too small for epsilon=8.0: it gives epsilon="):
        validate(epsilon=8.0, delta=5e-4, noise_multiplier=0.01, q=0.1, steps=20, accountant="prv")


def test_validate_without_target_refuses_a_noise_multiplier_prv_cannot_account():
    # Found running DP-jr with sigma=0.001 and no target: training ran, then PRV's first epsilon
    # asked numpy for 458 GiB at the first evaluation and the run died. It must stop before training.
    settings = dict(epsilon=None, delta=1 / 16000, noise_multiplier=0.001, q=0.032, steps=62)
    with pytest.raises(PrivacyError, match=r"noise multiplier 0.001 is too small for the prv accountant: .*use accountant rdp"):
        validate(**settings, accountant="prv")
    validate(**settings, accountant="rdp")                        # rdp accounts it
    assert epsilon_for(0.001, 0.032, 62, 1 / 16000, "rdp") > PRV_MAX_EPSILON
    validate(**{**settings, "noise_multiplier": 0.5}, accountant="prv")   # a real guarantee stays allowed
