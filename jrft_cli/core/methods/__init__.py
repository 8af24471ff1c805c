"""Methods: each module's `apply(model, **options)` freezes/injects in place; none knows Hydra."""
from __future__ import annotations

import importlib

from torch import nn

from jrft_cli.core.errors import JrftError

METHODS = ("full", "bitfit", "lora", "linear", "jr", "jr_warp")
# Methods whose saved state is tiny (z / head only): they never save the frozen backbone.
SMALL_STATE_METHODS = ("jr", "jr_warp", "linear")


def apply_method(model: nn.Module, name: str, **options: object) -> None:
    """Apply method `name` to a SequenceClassifier: afterwards exactly its trainable params require grad."""
    if name not in METHODS:
        raise JrftError(f"method={name!r} is not valid; choose one of {', '.join(METHODS)}")
    importlib.import_module(f"jrft_cli.core.methods.{name}").apply(model, **options)
