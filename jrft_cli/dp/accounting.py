"""DP-SGD building blocks: privacy accounting, Poisson sampling, per-example clipping, noise.

The training loop composes these; nothing here knows about models, Hydra or the loop.
Accounting is opacus' (PRV by default, RDP on request); nothing is accounted by hand.

One private step, as the loop should run it:
    idx = poisson_sample(n, q, gen)                       # the logical batch (size varies)
    for mb in micro_batches(idx, m): ... per-example grads -> clip_and_sum -> accumulate
    noisy = add_noise(summed, sigma, C, gen)
    grad = [g / (q * n) for g in noisy]                   # divide by the EXPECTED batch size
    accountant.step(sigma, q)
Dividing by the realized batch size would leak it; the Poisson analysis assumes the expected one.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from jrft_cli.core.errors import JrftError


class PrivacyError(JrftError):
    """Invalid privacy settings; the message is one line naming the bad value and what is valid."""


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
# validate(): a given sigma whose RDP epsilon exceeds this many times the target is refused without
# running PRV (which needs GBs there); PRV is never close to this much tighter than RDP.
PRV_INTRACTABLE_FACTOR = 4.0
# Without a target, PRV is refused beyond this rdp bound: its grid needs GBs (458 GiB at sigma 0.001,
# q 0.03, 62 steps) and such an epsilon is no guarantee anyway; rdp accounts it cheaply.
PRV_MAX_EPSILON = 100.0
CLIP_EPS = 1e-6  # keeps C / norm finite for an all-zero gradient


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {accountant!r}; choose one of: {', '.join(ACCOUNTANTS)}")


def _accountant_kwargs(accountant: str) -> dict:
    return {"eps_error": PRV_EPS_ERROR} if accountant == "prv" else {"alphas": RDP_ALPHAS}


@contextlib.contextmanager
def _quiet():
    # q = 1 makes opacus' PRV take log(0) = -inf on a branch np.where then discards, and RDP may
    # warn about its order range; both are harmless and would only clutter the CLI.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def default_delta(n: int) -> float:
    """The paper's default delta, 1 / (2N) for a training set of N examples."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise PrivacyError(f"dataset size n={n!r} is invalid; it must be an integer >= 1")
    return 1.0 / (2 * n)


def sample_rate(batch_size: int, n: int) -> float:
    """Poisson sampling rate q = B / N (B: expected logical batch size, N: dataset size)."""
    if n < 1:
        raise PrivacyError(f"dataset size n={n} is invalid; it must be >= 1")
    if not 1 <= batch_size <= n:
        raise PrivacyError(f"batch size {batch_size} is invalid; it must be in [1, n={n}]")
    return batch_size / n


def steps_for(epochs: float, q: float) -> int:
    """Number of Poisson-sampled steps for `epochs` passes at rate q: round(epochs / q)."""
    if not 0 < q <= 1:
        raise PrivacyError(f"sample rate q={q} is invalid; it must be in (0, 1]")
    if not epochs > 0:
        raise PrivacyError(f"epochs={epochs} is invalid; it must be > 0")
    steps = int(round(epochs / q))
    if steps < 1:
        raise PrivacyError(f"epochs={epochs} at q={q} gives {steps} steps; it must give >= 1 (epochs >= q/2)")
    return steps


def epsilon_for(
    noise_multiplier: float, q: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon spent after `steps` Poisson-subsampled Gaussian steps (rate q, noise sigma) at delta."""
    validate(epsilon=None, delta=delta, noise_multiplier=noise_multiplier, q=q, steps=steps, accountant=accountant)
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
    validate(epsilon=epsilon, delta=delta, noise_multiplier=None, q=q, steps=steps, accountant=accountant)
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


def validate(
    epsilon: float | None,
    delta: float,
    noise_multiplier: float | None,
    q: float,
    steps: int,
    accountant: str = "prv",
    n: int | None = None,
) -> None:
    """Raise PrivacyError (one line) for invalid DP settings.

    epsilon: target (None when only a noise multiplier is given); noise_multiplier: None when it is
    to be derived from epsilon. When both are given, the noise must reach the target epsilon.
    """
    _check_accountant(accountant)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise PrivacyError(f"dataset size n={n!r} is invalid; it must be an integer >= 1")
    if epsilon is not None and not epsilon > 0:
        raise PrivacyError(f"epsilon={epsilon} is invalid; it must be > 0")
    if not 0 < delta < 1:
        raise PrivacyError(f"delta={delta} is invalid; it must be in (0, 1) (the paper uses 1/(2N))")
    if not 0 < q <= 1:
        raise PrivacyError(f"sample rate q={q} is invalid; it must be in (0, 1]")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise PrivacyError(f"steps={steps!r} is invalid; it must be an integer >= 1")
    if epsilon is None and noise_multiplier is None:
        raise PrivacyError("neither epsilon nor noise multiplier given; give a target epsilon or a noise multiplier")
    if noise_multiplier is not None:
        if not noise_multiplier >= 0:
            raise PrivacyError(f"noise multiplier {noise_multiplier} is invalid; it must be >= 0")
        if epsilon is None and accountant == "prv" and noise_multiplier > 0:
            rdp = epsilon_for(noise_multiplier, q, steps, delta, "rdp")
            if rdp > PRV_MAX_EPSILON:
                raise PrivacyError(
                    f"noise multiplier {noise_multiplier} is too small for the prv accountant: the run would spend "
                    f"epsilon={rdp:.4g} (rdp bound, delta={delta}, q={q}, {steps} steps), beyond what prv can "
                    f"account (> {PRV_MAX_EPSILON:g}); use accountant rdp or a larger noise multiplier"
                )
        if epsilon is not None:
            if accountant == "prv" and noise_multiplier > 0:
                # PRV's grid grows without bound as sigma shrinks (GBs at sigma ~ 0.01); far from the
                # target the cheap RDP bound settles it (PRV is never that much tighter).
                rdp = epsilon_for(noise_multiplier, q, steps, delta, "rdp")
                if rdp > PRV_INTRACTABLE_FACTOR * epsilon:
                    raise PrivacyError(
                        f"noise multiplier {noise_multiplier} is too small for epsilon={epsilon}: it gives "
                        f"epsilon={rdp:.4g} (rdp bound, delta={delta}, q={q}, {steps} steps)"
                    )
            spent = epsilon_for(noise_multiplier, q, steps, delta, accountant)
            if spent > epsilon:
                raise PrivacyError(
                    f"noise multiplier {noise_multiplier} is too small for epsilon={epsilon}: it gives "
                    f"epsilon={spent:.4g} ({accountant}, delta={delta}, q={q}, {steps} steps)"
                )


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
