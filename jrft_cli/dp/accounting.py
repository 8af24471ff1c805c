"""Privacy accounting over opacus' accountants (PRV by default, RDP on request): the epsilon a
Poisson-subsampled Gaussian mechanism spends, the smallest noise multiplier reaching a target, and a
checkpointable running ledger. Nothing is accounted by hand; nothing here knows models or the loop.
Which settings a run uses is decided in dp.plan; what a step does to gradients is dp.mechanism.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant

from jrft_cli.dp import PrivacyError

ACCOUNTANTS = ("prv", "rdp")

# opacus' default RDP orders stop at 63; at small q and many steps the optimum sits at that edge
# (opacus then warns). Larger orders can only tighten the (still valid) bound.
RDP_ALPHAS: list[float] = list(RDPAccountant.DEFAULT_ALPHAS) + list(range(64, 257))
# PRV: acceptable absolute error of the epsilon estimate (opacus' default). PRV returns the
# upper end of its error bracket, so the reported epsilon is a guarantee, not an estimate.
PRV_EPS_ERROR = 0.01
# Binary-search tolerance for noise_multiplier_for: the result's epsilon lies in [target - tol, target]
# with tol = min(0.01, 1% of target) (opacus' fixed 0.01 would be 10% of a target of 0.1).
EPSILON_TOLERANCE = 0.01
MAX_NOISE_MULTIPLIER = 1e4  # beyond this a target is unreachable in practice (opacus: 1e6)
SEARCH_ITERATIONS = 60  # bisection halvings: far below float resolution of sigma
# PRV is refused beyond this rdp bound: its grid needs GBs (458 GiB at sigma 0.001, q 0.03, 62 steps)
# and such an epsilon is no guarantee anyway; rdp accounts it cheaply.
PRV_MAX_EPSILON = 100.0


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {accountant!r}; choose one of: {', '.join(ACCOUNTANTS)}")


def _check_mechanism(delta: float, q: float, steps: int, accountant: str) -> None:
    """The arguments every accounting function shares; one-line PrivacyError otherwise."""
    _check_accountant(accountant)
    if not 0 < delta < 1:
        raise PrivacyError(f"delta={delta} is invalid; it must be in (0, 1) (the paper uses 1/(2N))")
    if not 0 < q <= 1:
        raise PrivacyError(f"sample rate q={q} is invalid; it must be in (0, 1]")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise PrivacyError(f"steps={steps!r} is invalid; it must be an integer >= 1")


def _accountant_kwargs(accountant: str) -> dict:
    return {"eps_error": PRV_EPS_ERROR} if accountant == "prv" else {"alphas": RDP_ALPHAS}


@contextlib.contextmanager
def _quiet():
    # q = 1 makes opacus' PRV take log(0) = -inf on a branch np.where then discards, and RDP may
    # warn about its order range; both are harmless and would only clutter the CLI.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def check_accountable(noise_multiplier: float, q: float, steps: int, delta: float, accountant: str = "prv") -> None:
    """Raise PrivacyError when `accountant` cannot account `steps` steps at this noise: PRV beyond an
    rdp bound of PRV_MAX_EPSILON (its grid would need GBs; rdp accounts it cheaply)."""
    if accountant == "prv" and noise_multiplier > 0:
        rdp = epsilon_for(noise_multiplier, q, steps, delta, "rdp")
        if rdp > PRV_MAX_EPSILON:
            raise PrivacyError(
                f"noise multiplier {noise_multiplier} is too small for the prv accountant: the run would spend "
                f"epsilon={rdp:.4g} (rdp bound, delta={delta}, q={q}, {steps} steps), beyond what prv can "
                f"account (> {PRV_MAX_EPSILON:g}); use accountant rdp or a larger noise multiplier"
            )


def epsilon_for(
    noise_multiplier: float, q: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon spent after `steps` Poisson-subsampled Gaussian steps (rate q, noise sigma) at delta."""
    _check_mechanism(delta, q, steps, accountant)
    if not noise_multiplier >= 0:
        raise PrivacyError(f"noise multiplier {noise_multiplier} is invalid; it must be >= 0")
    check_accountable(noise_multiplier, q, steps, delta, accountant)
    if noise_multiplier == 0:
        return math.inf  # no noise: no privacy
    acc = Accountant(accountant)
    acc.load_state_dict({"mechanism": accountant, "history": [(float(noise_multiplier), float(q), int(steps))]})
    return acc.epsilon(delta)


def noise_multiplier_for(
    epsilon: float, delta: float, q: float, steps: int, accountant: str = "prv"
) -> float:
    """Smallest noise multiplier (to a tolerance in epsilon) reaching (epsilon, delta) over `steps`
    steps at rate q: epsilon_for(result) lies in [epsilon - tol, epsilon], tol = min(0.01, epsilon/100).

    The same bisection as opacus' get_noise_multiplier, over opacus' accountants, but with an
    iteration cap (opacus' loop never ends if the PRV estimate jumps across the tolerance window)
    and a relative tolerance (its fixed 0.01 is 10% of a target of 0.1).
    """
    _check_mechanism(delta, q, steps, accountant)
    if not epsilon > 0:
        raise PrivacyError(f"epsilon={epsilon} is invalid; it must be > 0")
    tol = min(EPSILON_TOLERANCE, epsilon / 100)

    def spent(sigma: float) -> float:
        return epsilon_for(sigma, q, steps, delta, accountant)

    lo, hi = 0.0, 1.0
    eps_hi = spent(hi)
    while eps_hi > epsilon:  # grow until the target is reached
        lo, hi = hi, 2 * hi
        if hi > MAX_NOISE_MULTIPLIER:
            raise PrivacyError(
                f"epsilon={epsilon} at delta={delta} is unreachable over {steps} steps at q={q} "
                f"(noise multiplier > {MAX_NOISE_MULTIPLIER:g}); raise epsilon or delta, or lower q or steps"
            )
        eps_hi = spent(hi)
    for _ in range(SEARCH_ITERATIONS):
        if epsilon - eps_hi <= tol:
            break
        mid = (lo + hi) / 2
        eps_mid = spent(mid)
        if eps_mid <= epsilon:
            hi, eps_hi = mid, eps_mid
        else:
            lo = mid
    return hi  # always within budget: eps_hi <= epsilon


class Accountant:
    """Running privacy ledger over opacus' PRV/RDP accountants; checkpointable and resumable.

    state_dict() is plain Python (lists and numbers), so it fits in a JSON or torch checkpoint.
    """

    def __init__(self, kind: str = "prv"):
        _check_accountant(kind)
        self.kind = kind
        self._acc = PRVAccountant() if kind == "prv" else RDPAccountant()

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        """Record one Poisson-subsampled Gaussian step (opacus merges runs of equal steps)."""
        if not noise_multiplier > 0:
            raise PrivacyError(f"noise multiplier {noise_multiplier} is invalid for a private step; it must be > 0")
        if not 0 < sample_rate <= 1:
            raise PrivacyError(f"sample rate q={sample_rate} is invalid; it must be in (0, 1]")
        self._acc.step(noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate))

    @property
    def steps(self) -> int:
        """Steps recorded so far."""
        return sum(int(s) for _, _, s in self._acc.history)

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at `delta` (0.0 before any step)."""
        if not 0 < delta < 1:
            raise PrivacyError(f"delta={delta} is invalid; it must be in (0, 1)")
        if not self._acc.history:
            return 0.0
        try:
            with _quiet():
                eps = float(self._acc.get_epsilon(delta=delta, **_accountant_kwargs(self.kind)))
        except (RuntimeError, FloatingPointError, OverflowError, MemoryError) as e:
            # opacus' PRV has known numerical failures (e.g. "Discrete mean differs ...")
            raise PrivacyError(
                f"{self.kind} accountant failed for history {self.state_dict()['history']}: {e}; "
                "try accountant 'rdp'"
            ) from None
        if math.isnan(eps):
            raise PrivacyError(
                f"{self.kind} accountant returned NaN for history {self.state_dict()['history']}; try accountant 'rdp'"
            )
        return eps

    def state_dict(self) -> dict:
        """{'mechanism': kind, 'history': [[sigma, q, steps], ...]}."""
        return {
            "mechanism": self.kind,
            "history": [[float(s), float(q), int(t)] for s, q, t in self._acc.history],
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore from state_dict(); the mechanism must match this accountant's kind."""
        if not isinstance(d, dict) or "history" not in d or "mechanism" not in d:
            raise PrivacyError("accountant state is invalid; it must be a dict with 'mechanism' and 'history'")
        if d["mechanism"] != self.kind:
            raise PrivacyError(
                f"accountant state is for {d['mechanism']!r}, not {self.kind!r}; load it into Accountant({d['mechanism']!r})"
            )
        self._acc.history = [(float(s), float(q), int(t)) for s, q, t in d["history"]]
