"""Privacy accounting: epsilon against opacus and an exact reference, the noise search, the running
ledger (resume), and the accounting functions' own argument checks."""
from __future__ import annotations

import json
import math
import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from scipy.optimize import brentq
from scipy.stats import norm

from jrft_cli.dp import PrivacyError
from jrft_cli.dp import accounting as privacy
from jrft_cli.dp.accounting import PRV_MAX_EPSILON, Accountant, check_accountable, epsilon_for, noise_multiplier_for


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


# ---------------------------------------------------------------- argument checks (settings: test_plan.py)

@pytest.mark.parametrize("call,message", [
    (lambda: epsilon_for(1.0, 0.0, 10, 1e-5), "q=0.0 is invalid"),
    (lambda: epsilon_for(1.0, 1.5, 10, 1e-5), "q=1.5 is invalid"),
    (lambda: epsilon_for(1.0, 0.1, 0, 1e-5), "steps=0 is invalid"),
    (lambda: epsilon_for(1.0, 0.1, 10, 1.0), "delta=1.0 is invalid"),
    (lambda: epsilon_for(-0.5, 0.1, 10, 1e-5), "noise multiplier -0.5 is invalid"),
    (lambda: epsilon_for(1.0, 0.1, 10, 1e-5, "gdp"), "unknown accountant 'gdp'; choose one of: prv, rdp"),
    (lambda: noise_multiplier_for(0.0, 1e-5, 0.1, 10), "epsilon=0.0 is invalid"),
    (lambda: noise_multiplier_for(-1.0, 1e-5, 0.1, 10), "epsilon=-1.0 is invalid"),
    (lambda: noise_multiplier_for(1.0, 0.0, 0.1, 10), "delta=0.0 is invalid"),
    (lambda: noise_multiplier_for(1e-9, 1e-5, 1.0, 1000, "rdp"), "unreachable"),
])
def test_accounting_rejects_bad_arguments_in_one_line(call, message):
    with pytest.raises(PrivacyError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_prv_refuses_a_noise_multiplier_it_cannot_account():
    # Found running DP-jr with sigma=0.001 and no target: training ran, then PRV's first epsilon
    # asked numpy for 458 GiB at the first evaluation and the run died. The rdp bound settles it.
    args = (0.001, 0.032, 62, 1 / 16000)
    assert epsilon_for(*args, "rdp") > PRV_MAX_EPSILON
    for call in (lambda: check_accountable(*args, "prv"), lambda: epsilon_for(*args, "prv")):
        with pytest.raises(PrivacyError, match=r"noise multiplier 0.001 is too small for the prv accountant: .*use accountant rdp"):
            call()
    check_accountable(*args, "rdp")                                   # rdp accounts it
    check_accountable(0.5, 0.032, 62, 1 / 16000, "prv")               # a real guarantee stays allowed
