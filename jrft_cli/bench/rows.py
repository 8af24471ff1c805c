"""What a bench row is: its identity (a small dict of axes) and how its model is built.

A row's identity is a dict of axes, e.g. `{"method": "jr", "projection": "structured"}`; sections
match rows across tables by equal identities, and the label shown in tables joins the values
("jr structured"). Axes: `method` (a registered method, or `naive_jr`, the reference
implementation of bench/naive_jr.py), any method option varied with `--vary` (e.g. `projection`), and
the run axes `precision` (`hardware.precision`: fp32, bf16, fp16) and `ordering` (the batches a training
step takes: random or grouped, see bench/workload.py). A run axis joins a row's identity only when the
bench is asked for something other than its default (`DEFAULT_AXES`), so a row without it has the
default value; steps.py reads them where it builds and steps the row (`Trainer(precision=...)`).

Each method's settings come from the registry: its options, head, dropout and learning rates are
its conf/method/<name>.yaml (`MethodSpec.defaults()`), with the yaml's `${d}` / `${seed}` filled by
the bench's own d and seed, exactly the values `jrft train` would compose. Models are built by
`core.build.build_classifier`.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.core.options import option_names
from jrft_cli.core.registry import method_names, method_spec

# The method whose claims the bench checks: the naive reference re-implements it, the projection
# section times its z -> shifts map, and the inference section exports it by default.
SUBJECT = "jr"
NAIVE = "naive_jr"
# `jrft bench` without --vary: both projection kinds of every method that has a projection option.
DEFAULT_VARY: dict[str, list[str]] = {"projection": ["dense", "structured"]}
_INTERPOLATION = re.compile(r"^\$\{(\w+)\}$")
# Run axes and the value a row has when the axis is not in its identity.
DEFAULT_AXES: dict[str, str] = {"precision": "fp32", "ordering": "random"}
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class MethodSetup:
    """A method as the bench runs it: typed options and the recipe values of its conf/method yaml."""
    method: str
    options: Any
    head: str
    dropout: float | None
    lr: float                 # non-private learning rate (`lr`)
    dp_lr: float              # under DP: `dp_lr` when the method has one, else `lr` (as `jrft train`)

    def options_dict(self) -> dict[str, Any]:
        return method_spec(self.method).options_dict(self.options)

    def method_config(self) -> dict[str, Any]:
        """The method's config as a run records it (adapter_config.json's `method_config`)."""
        return {"name": self.method, **self.options_dict(), "head": self.head, "dropout": self.dropout,
                "lr": self.lr}

    def build(self, model_name: str, tokenizer: Any, num_labels: int, seed: int,
              attn_implementation: str | None = None) -> nn.Module:
        """The classifier with this method applied (deterministic for `seed`), on CPU."""
        from jrft_cli.core.build import build_classifier

        return build_classifier(model_name, num_labels, self.method, self.options, tokenizer=tokenizer, seed=seed,
                                head=self.head, dropout=self.dropout, attn_implementation=attn_implementation)


def method_setup(name: str, *, d: int, seed: int, overrides: dict[str, Any] | None = None) -> MethodSetup:
    """`name`'s defaults from the registry with `${d}` and `${seed}` resolved, plus option `overrides`."""
    spec = method_spec(name)
    top = {"d": d, "seed": seed}
    values: dict[str, Any] = {}
    for key, value in spec.defaults().items():
        m = _INTERPOLATION.match(value) if isinstance(value, str) else None
        if m:
            if m.group(1) not in top:
                raise JrftError(f"conf/method/{name}.yaml: {key}={value} refers to a setting the bench does not have")
            value = top[m.group(1)]
        values[key] = value
    values.update(overrides or {})
    try:
        options = spec.parse_options(values)
    except (TypeError, ValueError) as e:
        raise JrftError(f"method {name}: {e}") from None
    lr = values["lr"]
    return MethodSetup(name, options, values.get("head", "mask"), values.get("dropout"), lr,
                       values.get("dp_lr") or lr)


@dataclass
class RowSpec:
    """One row to measure: its identity and its method's settings (for the naive reference, those
    of SUBJECT, which it re-implements)."""
    id: dict[str, Any]
    setup: MethodSetup
    naive: bool = False

    @property
    def label(self) -> str:
        return label(self.id)

    @property
    def method(self) -> str:
        return self.id["method"]

    @property
    def precision(self) -> str:
        return self.id.get("precision", DEFAULT_AXES["precision"])

    @property
    def ordering(self) -> str:
        return self.id.get("ordering", DEFAULT_AXES["ordering"])

    @property
    def lr(self) -> float:
        return self.setup.lr

    @property
    def dp_lr(self) -> float:
        return self.setup.dp_lr

    @property
    def options(self) -> dict[str, Any]:
        if self.naive:
            from jrft_cli.bench.naive_jr import naive_options

            return naive_options(self.setup.options)
        return self.setup.options_dict()

    def build(self, model_name: str, tokenizer: Any, num_labels: int, seed: int,
              attn_implementation: str | None = None) -> nn.Module:
        """The row's model on CPU (deterministic for `seed`); `attn_implementation`: the backbone's
        attention kernel (None = the model's default; the naive reference always takes the default)."""
        if self.naive:
            from jrft_cli.bench.naive_jr import build_naive_jr

            return build_naive_jr(model_name, tokenizer, num_labels, self.setup.options, seed=seed,
                                  head=self.setup.head, dropout=self.setup.dropout)
        return self.setup.build(model_name, tokenizer, num_labels, seed, attn_implementation)


def label(row_id: dict[str, Any]) -> str:
    """A row's table label: its axis values joined by spaces ("jr structured", "full")."""
    return " ".join(str(v) for v in row_id.values() if v is not None)


def parse_vary(items: list[str]) -> dict[str, list[str]]:
    """`--vary KEY=V1,V2` arguments as {KEY: [V1, V2]} (later KEYs replace earlier ones)."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise JrftError(f"--vary {item!r} is not valid; write OPTION=VALUE,VALUE (e.g. projection=dense,structured)")
        out[key.strip()] = list(dict.fromkeys(vals))
    return out


def applicable(vary: dict[str, list[str]], methods: list[str]) -> dict[str, list[str]]:
    """The entries of `vary` whose option at least one of `methods` has."""
    names = {n for m in methods if m in method_names() for n in option_names(method_spec(m).options)}
    return {k: v for k, v in vary.items() if k in names}


def _typed(value: str) -> Any:
    """A --vary value as the yaml would read it (int, float, bool or string)."""
    import yaml

    return yaml.safe_load(value)


def run_axes(precisions: list[str] | None = None, orderings: list[str] | None = None) -> dict[str, list[str]]:
    """The run axes rows vary on: each of `precisions`, `orderings` that is not just its default
    (DEFAULT_AXES); an unknown value is a JrftError naming the choices."""
    from jrft_cli.bench.workload import ORDERINGS

    out: dict[str, list[str]] = {}
    for axis, values, choices in (("precision", precisions, PRECISIONS), ("ordering", orderings, ORDERINGS)):
        values = list(dict.fromkeys(values or [DEFAULT_AXES[axis]]))
        bad = [v for v in values if v not in choices]
        if bad:
            raise JrftError(f"--{axis}s {','.join(bad)} not valid; choose from {','.join(choices)}")
        if values != [DEFAULT_AXES[axis]]:
            out[axis] = values
    return out


def method_rows(methods: list[str], vary: dict[str, list[str]], *, d: int, seed: int, naive: bool,
                axes: dict[str, list[str]] | None = None) -> list[RowSpec]:
    """The rows of the train / eval / private sections: every method of `methods` (registry names),
    once per combination of the `vary` values of the options it has and of the run `axes` (`run_axes`);
    then, with `naive`, the naive reference of SUBJECT (with SUBJECT's defaults, fp32). Everything is
    checked here, before any model loads: an unknown method, a `vary` key no method has, or a bad value
    is a JrftError."""
    known = set(method_names())
    bad = [m for m in methods if m not in known]
    if bad:
        raise JrftError(f"--methods {','.join(bad)} not valid; choose from {','.join(method_names())}")
    used: set[str] = set()
    rows: list[RowSpec] = []
    run_names, run_values = list(axes or {}), list((axes or {}).values())
    for name in dict.fromkeys(methods):
        options = [k for k in vary if k in option_names(method_spec(name).options)]
        used.update(options)
        for combo in itertools.product(*(vary[k] for k in options)):
            overrides = {k: _typed(v) for k, v in zip(options, combo)}
            setup = method_setup(name, d=d, seed=seed, overrides=overrides)
            for run in itertools.product(*run_values):
                rows.append(RowSpec({"method": name, **dict(zip(options, combo)), **dict(zip(run_names, run))}, setup))
    unused = [k for k in vary if k not in used]
    if unused:
        have = sorted({n for m in methods for n in option_names(method_spec(m).options)})
        raise JrftError(f"--vary {','.join(unused)}: no method of --methods {','.join(methods)} has such an option; "
                        f"their options: {', '.join(have) or 'none'}")
    if naive:
        rows.append(RowSpec({"method": NAIVE}, method_setup(SUBJECT, d=d, seed=seed), naive=True))
    return rows
