"""Typed method options: every field is type- and range-checked at construction, unknown keys are
refused with the valid ones listed, and config-file names round-trip."""
from __future__ import annotations

from dataclasses import field
from typing import Literal

import pytest

from jrft_cli.core.options import method_options, option_names, options_from_dict, options_to_dict


@method_options
class Demo:
    n: int = field(default=1, metadata={"min": 1})
    rate: float = field(default=0.5, metadata={"min": 0, "min_exclusive": True})
    kind: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ("x",)
    flag: bool = False
    seed: int = field(default=0, metadata={"key": "projection_seed"})


def test_valid_values_are_kept_and_normalised():
    d = Demo(n=3, rate=2, kind="b", names=["p", "q"], flag=True, seed=5)
    assert (d.n, d.rate, d.kind, d.names, d.flag, d.seed) == (3, 2.0, "b", ("p", "q"), True, 5)
    assert isinstance(d.rate, float)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"n": 0}, ValueError, r"Demo: n=0 is not valid; it must be >= 1"),
    ({"n": True}, TypeError, r"Demo: n=True is not valid; it must be an integer"),
    ({"n": "3"}, TypeError, r"Demo: n='3' is not valid; it must be an integer"),
    ({"rate": 0}, ValueError, r"Demo: rate=0.0 is not valid; it must be > 0"),
    ({"rate": float("nan")}, ValueError, r"Demo: rate=nan is not valid; it must be a finite number"),
    ({"rate": "fast"}, TypeError, r"Demo: rate='fast' is not valid; it must be a number"),
    ({"kind": "c"}, ValueError, r"Demo: kind='c' is not valid; choose one of a, b"),
    ({"names": "p"}, TypeError, r"Demo: names='p' is not valid; it must be a list of strings"),
    ({"names": [1]}, TypeError, r"it must be a list of strings"),
    ({"flag": 1}, TypeError, r"Demo: flag=1 is not valid; it must be true or false"),
    ({"nn": 1}, TypeError, r"Demo: unknown option 'nn' \(did you mean 'n'\?\); valid options: n, rate, kind"),
])
def test_bad_values_raise_with_the_field_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        Demo(**kwargs)


def test_frozen():
    with pytest.raises(Exception):
        Demo().n = 4


def test_config_file_names_round_trip_and_unknown_keys_are_refused():
    assert option_names(Demo) == ["n", "rate", "kind", "names", "flag", "projection_seed"]
    d = options_from_dict(Demo, {"n": 2, "projection_seed": 9, "lr": 1e-3}, ignore=("lr",))
    assert d.seed == 9 and d.n == 2
    assert options_to_dict(d) == {"n": 2, "rate": 0.5, "kind": "a", "names": ["x"], "flag": False,
                                  "projection_seed": 9}
    assert options_from_dict(Demo, options_to_dict(d)) == d
    with pytest.raises(TypeError, match=r"Demo: unknown option 'lr'; valid options"):
        options_from_dict(Demo, {"lr": 1e-3})
