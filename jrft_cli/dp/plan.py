"""The privacy plan: one function, `resolve_plan`, validates privacy settings and decides a private
run's numbers (noise multiplier, sampling rate q, steps, delta). `jrft train` calls it when it checks
the config (no data yet) and again once the training set size N is known, `jrft dp-noise` calls it
for its table of numbers, and the private trainer calls it on the plan it is given.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from jrft_cli.dp import PrivacyError
from jrft_cli.dp.accounting import ACCOUNTANTS, check_accountable, epsilon_for, noise_multiplier_for
from jrft_cli.dp.samplers import GRAD_SAMPLE_MODES

# A given noise multiplier whose RDP epsilon exceeds this many times the target is refused without
# running PRV (which needs GBs there); PRV is never close to this much tighter than RDP.
PRV_INTRACTABLE_FACTOR = 4.0


@dataclass
class PrivacyPlan:
    """Everything a private run needs, resolved and validated (see `resolve_plan`)."""
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    max_grad_norm: float
    batch_size: int                 # expected logical batch, q * N
    micro_batch_size: int           # physical batch
    accountant: str = "prv"
    target_epsilon: float | None = None
    constant_lr: bool = True
    grad_sample_mode: str = "auto"

    def settings(self) -> dict[str, Any]:
        """The plan as settings `resolve_plan` accepts (its noise multiplier given, as resolved)."""
        return {"epsilon": self.target_epsilon, "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.max_grad_norm, "accountant": self.accountant, "batch_size": self.batch_size,
                "micro_batch_size": self.micro_batch_size, "constant_lr": self.constant_lr,
                "grad_sample_mode": self.grad_sample_mode}


@dataclass(frozen=True)
class Naming:
    """How error messages name the settings: config keys (`privacy.batch_size`, unset = null) by
    default; `jrft dp-noise` names its options (`--batch-size`, unset = omitted)."""
    prefix: str = "privacy."
    dashes: bool = False
    unset: str = "null"
    n: str = "the training set size N"

    def __call__(self, key: str) -> str:
        return self.prefix + (key.replace("_", "-") if self.dashes else key)


CONFIG_NAMES = Naming()


def _positive_int(value: Any, key: str, names: Naming) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise PrivacyError(f"{names(key)}={value!r} is invalid; it must be an integer >= 1")
    return int(value)


def resolve_plan(settings: Mapping[str, Any], n: int | None = None, *, epochs: float | None = None,
                 max_steps: int = 0, grad_accum: int = 1, loop_max_grad_norm: float | None = None,
                 group_by_length: bool = False, names: Naming = CONFIG_NAMES) -> PrivacyPlan | None:
    """Validate privacy settings (conf/privacy/dp.yaml as a dict) and, given the training set size n,
    resolve them into a PrivacyPlan. Raises PrivacyError (one line, naming the setting as `names` does).

    Without n: only the checks that need no data (run before anything loads); returns None.
    With n: q = batch_size / n; steps = max_steps if > 0, else round(epochs / q), where the settings'
    `epochs` wins over the argument; delta = 1/(2n) unless set; the noise multiplier is the smallest
    reaching the target epsilon unless given, and a given one must reach it (and be accountable).
    Keys left out: no target epsilon, delta and noise multiplier derived, max_grad_norm 1.0, accountant
    prv, micro_batch_size = batch_size, constant_lr true, grad_sample_mode auto.
    grad_accum, loop_max_grad_norm, group_by_length: the ordinary loop's settings, which a private run
    cannot honour.
    """
    if grad_accum != 1:
        raise PrivacyError(f"train.grad_accum={grad_accum} is not valid with privacy=dp: accumulation would change "
                           "the sampled batch; set privacy.batch_size (logical) and privacy.micro_batch_size (memory)")
    if loop_max_grad_norm:
        raise PrivacyError(f"train.max_grad_norm={loop_max_grad_norm} is for non-private runs; with privacy=dp set "
                           "privacy.max_grad_norm (the per-example clipping norm)")
    if group_by_length:
        raise PrivacyError("train.group_by_length=true is not valid with privacy=dp: DP-SGD draws Poisson batches "
                           "(its accounting assumes them); set train.group_by_length=false")
    acc = settings.get("accountant", "prv")
    if acc not in ACCOUNTANTS:
        raise PrivacyError(f"{names('accountant')}={acc!r} is invalid; choose one of: {', '.join(ACCOUNTANTS)}")
    eps, delta, sigma = settings.get("epsilon"), settings.get("delta"), settings.get("noise_multiplier")
    if eps is not None and not eps > 0:
        raise PrivacyError(f"{names('epsilon')}={eps} is invalid; it must be > 0")
    if delta is not None and not 0 < delta < 1:
        raise PrivacyError(f"{names('delta')}={delta} is invalid; it must be in (0, 1) ({names.unset} = 1/(2N))")
    if sigma is not None and not sigma > 0:
        raise PrivacyError(f"{names('noise_multiplier')}={sigma} is invalid; it must be > 0 "
                           f"({names.unset} = derived from epsilon)")
    if eps is None and sigma is None:
        raise PrivacyError(f"{names('epsilon')} and {names('noise_multiplier')} are both {names.unset}; "
                           "give a target epsilon")
    clip = settings.get("max_grad_norm", 1.0)
    if clip is None or not clip > 0:
        raise PrivacyError(f"{names('max_grad_norm')}={clip!r} is invalid; it must be > 0")
    batch_size = _positive_int(settings.get("batch_size"), "batch_size", names)
    micro_batch_size = _positive_int(settings.get("micro_batch_size", batch_size), "micro_batch_size", names)
    mode = settings.get("grad_sample_mode", "auto")
    if mode not in GRAD_SAMPLE_MODES:
        raise PrivacyError(f"{names('grad_sample_mode')}={mode!r} is invalid; "
                           f"choose one of: {', '.join(GRAD_SAMPLE_MODES)}")
    set_epochs = settings.get("epochs")
    if set_epochs is not None and not set_epochs > 0:
        raise PrivacyError(f"{names('epochs')}={set_epochs} is invalid; it must be > 0")
    if n is None:
        return None

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise PrivacyError(f"{names.n}={n!r} is invalid; it must be an integer >= 1")
    if batch_size > n:
        raise PrivacyError(f"{names('batch_size')}={batch_size} is invalid; it must be <= {names.n}={n} "
                           "(it is the expected Poisson batch, q = batch_size / N)")
    q = batch_size / n
    if max_steps > 0:
        steps = int(max_steps)
    else:
        e = set_epochs if set_epochs is not None else epochs
        if e is None or not e > 0:
            raise PrivacyError(f"{names('epochs')}={e!r} is invalid; it must be > 0")
        steps = int(round(e / q))
        if steps < 1:
            raise PrivacyError(f"{names('epochs')}={e} at q={q} gives {steps} steps; it must give >= 1 (epochs >= q/2)")
    delta = float(delta) if delta is not None else 1.0 / (2 * n)
    if sigma is None:
        sigma = noise_multiplier_for(eps, delta, q, steps, acc)
    elif eps is None:
        check_accountable(sigma, q, steps, delta, acc)
    else:
        if acc == "prv":
            # PRV's grid grows without bound as sigma shrinks (GBs at sigma ~ 0.01); far from the
            # target the cheap RDP bound settles it (PRV is never that much tighter).
            rdp = epsilon_for(sigma, q, steps, delta, "rdp")
            if rdp > PRV_INTRACTABLE_FACTOR * eps:
                raise PrivacyError(f"noise multiplier {sigma} is too small for epsilon={eps}: it gives "
                                   f"epsilon={rdp:.4g} (rdp bound, delta={delta}, q={q}, {steps} steps)")
        spent = epsilon_for(sigma, q, steps, delta, acc)
        if spent > eps:
            raise PrivacyError(f"noise multiplier {sigma} is too small for epsilon={eps}: it gives "
                               f"epsilon={spent:.4g} ({acc}, delta={delta}, q={q}, {steps} steps)")
    return PrivacyPlan(noise_multiplier=float(sigma), sample_rate=q, steps=steps, delta=delta,
                       max_grad_norm=float(clip), batch_size=batch_size, micro_batch_size=micro_batch_size,
                       accountant=acc, target_epsilon=eps, constant_lr=bool(settings.get("constant_lr", True)),
                       grad_sample_mode=mode)
