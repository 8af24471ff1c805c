"""Differentially private training (DP-SGD), one module per concern:

- plan: PrivacyPlan and `resolve_plan`, the one place privacy settings are validated and resolved
  (noise multiplier, sampling rate, steps, delta); `jrft train`, `jrft dp-noise` and the private
  trainer all go through it.
- accounting: opacus' PRV/RDP accountants, the epsilon of a plan and the noise search.
- mechanism: what one private step does to gradients: Poisson sampling, micro-batches, per-example
  clipping, Gaussian noise (torch only).
- samplers: per-example gradients (jrft's exact shift gradients, or opacus hooks) per method.

Importing this package imports no opacus: only `accounting` and the samplers' methods do.
"""
from jrft_cli.core.errors import JrftError


class PrivacyError(JrftError):
    """Invalid privacy settings; the message is one line naming the bad value and what is valid."""
