"""The method registry: every method declared once, and everything that differs between methods.

A method is one module under core/methods/ with an options dataclass and an `apply(model, options)`
step, one entry in `_ENTRIES` below, and one conf/method/<name>.yaml (its default learning rates and
head). Code elsewhere never branches on method names; it asks the method's `MethodSpec`:

    spec = method_spec("jr")
    options = spec.parse_options({"d": 1024, "position": "output"})   # typed, checked
    spec.apply(model, options)           # freeze / inject in place on a classifier
    spec.dp.path                         # how DP gets per-example gradients
    spec.export                          # how `jrft export` turns the run into a plain model
    spec.defaults()["lr"]                # from conf/method/<name>.yaml
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal

from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.core.options import options_from_dict, options_to_dict

# Keys of a conf/method yaml that belong to the training recipe, not to the method's options.
RECIPE_KEYS: tuple[str, ...] = ("name", "lr", "dp_lr", "head", "dropout")


@dataclass(frozen=True)
class DPSupport:
    """How private training gets a method's per-example gradients.

    path "shift": exact, from one ordinary backward pass (z through the per-example shift tensor, the
    head's linear layers from their activations). path "opacus": opacus' per-sample machinery in
    `opacus_mode` ("ghost": clipping without materialising per-example gradients; "hooks": per-sample
    gradients). `freeze_shared_embeddings`: parameters that see one input shared by the whole batch
    (position embeddings indexed by one tensor; the family's `batch_shared` modules, core.families) have
    no per-example gradient and are frozen under DP."""
    path: Literal["shift", "opacus"]
    opacus_mode: Literal["ghost", "hooks"] | None = None
    freeze_shared_embeddings: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """Everything about one method that the rest of jrft may depend on.

    attach:  for the adapter methods, the library entry on a bare backbone (`core.attach`): returns the
             adapter module; None for methods that only make sense on a classifier.
    export:  "fold" (adapter.fold(): shifts into biases), "prompt" (precomputed prompt vectors, exported
             with jrft's modeling code), "merge" (peft's LoRA merge), "plain" (weights as they are),
             "modules" (the method's own modules, e.g. adapters, exported with jrft's modeling code).
    small_state: whether the trained state is tiny (z / head only), so a run never saves the backbone.
    bind_tokenizer: fills options that come from the tokenizer (none of the built-in methods needs it).
    merge:   for export "merge", the function that merges the method's layers into the backbone.
    """
    name: str
    options: type
    apply: Callable[[nn.Module, Any], None]
    dp: DPSupport
    export: Literal["fold", "prompt", "merge", "plain", "modules"]
    small_state: bool
    label: Callable[[Any], str] | None = None
    attach: Callable[[nn.Module, Any], nn.Module] | None = None
    bind_tokenizer: Callable[[Any, Any], Any] | None = None
    merge: Callable[[nn.Module], None] | None = None
    summary: str = ""

    def parse_options(self, values: dict[str, Any]) -> Any:
        """Typed options from a method config dict (recipe keys such as `lr` and `head` are skipped)."""
        return options_from_dict(self.options, values, ignore=RECIPE_KEYS)

    def options_dict(self, options: Any) -> dict[str, Any]:
        return options_to_dict(options)

    def row_label(self, options: Any) -> str:
        """Short label for tables: `jr d=4096`, `lora r=1`, `full`."""
        return self.label(options) if self.label else self.name

    def defaults(self) -> dict[str, Any]:
        """The method's conf/method/<name>.yaml (default lr, dp_lr, head, dropout, options)."""
        return _method_yaml(self.name)

    @property
    def has_adapter(self) -> bool:
        return self.attach is not None


# name -> module under jrft_cli.core.methods that defines `SPEC`. The one list of methods.
_ENTRIES: dict[str, str] = {
    "full": "full",
    "bitfit": "bitfit",
    "lora": "lora",
    "adapters": "adapters",
    "linear": "linear",
    "jr": "jr",
    "jr_warp": "jr_warp",
    "warp": "warp",
}


def method_names() -> tuple[str, ...]:
    """Every registered method, in table order."""
    return tuple(_ENTRIES)


def method_spec(name: str) -> MethodSpec:
    """The registered method `name`; a JrftError (a ValueError) naming the choices otherwise."""
    if name not in _ENTRIES:
        raise JrftError(f"method={name!r} is not valid; choose one of {', '.join(_ENTRIES)}")
    spec = importlib.import_module(f"jrft_cli.core.methods.{_ENTRIES[name]}").SPEC
    assert spec.name == name, (spec.name, name)
    return spec


def spec_for_options(options: Any) -> MethodSpec:
    """The method whose options class `options` is an instance of."""
    for name in _ENTRIES:
        spec = method_spec(name)
        if type(options) is spec.options:
            return spec
    raise TypeError(f"{type(options).__name__} is not the options class of a registered method; "
                    f"use e.g. SlashConfig or JRWarpConfig")


def apply_method(model: nn.Module, name: str, **options: Any) -> Any:
    """Apply method `name` with keyword options to a classifier (a module with `backbone` and
    `head_parameters()`): afterwards exactly its trainable parameters require grad. Returns the
    typed options it used."""
    spec = method_spec(name)
    parsed = spec.parse_options(options)
    spec.apply(model, parsed)
    return parsed


@lru_cache(maxsize=None)
def _read_method_yaml(name: str) -> tuple[tuple[str, Any], ...]:
    import yaml

    from jrft_cli.core.conf import config_dir

    path = config_dir() / "method" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return tuple((data or {}).items())


def _method_yaml(name: str) -> dict[str, Any]:
    return dict(_read_method_yaml(name))


def replace_options(options: Any, **changes: Any) -> Any:
    """A copy of `options` with `changes`, checked like a new instance."""
    return dataclasses.replace(options, **changes)
