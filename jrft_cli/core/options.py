"""Typed method options: dataclasses that reject unknown, ill-typed or out-of-range values.

A method's options class is a frozen dataclass declared with `@method_options`. Its fields carry their
type (int, float, str, bool, tuple[str, ...], or a `Literal[...]` of choices) and, in `field(metadata=)`,
an optional lower bound (`min`, `min_exclusive`) and an alternative name used in config files
(`key`). Construction checks every value and raises TypeError / ValueError with one plain sentence
that names the class and the field, so a typo such as `SlashConfig(d=8, positon="output")` says which
options exist instead of a bare dataclass error.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from typing import Any, Literal, get_args, get_origin

__all__ = ["method_options", "options_from_dict", "options_to_dict", "option_names"]


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return "a list of strings"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(owner: str, name: str, tp: Any, value: Any) -> Any:
    """`value` checked against `tp` (ints are accepted where floats are; lists where tuples are)."""
    origin = get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(owner, name, args[0], value)
    bad = TypeError(f"{owner}: {name}={value!r} is not valid; it must be {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ValueError(f"{owner}: {name}={value!r} is not valid; choose one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ValueError(f"{owner}: {name}={value!r} is not valid; it must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _check(self: Any) -> None:
    owner = type(self).__name__
    hints = typing.get_type_hints(type(self))
    for f in dataclasses.fields(self):
        value = _coerce(owner, f.name, hints[f.name], getattr(self, f.name))
        low, strict = f.metadata.get("min"), f.metadata.get("min_exclusive", False)
        if low is not None and value is not None and (value < low or (strict and value == low)):
            rel = ">" if strict else ">="
            raise ValueError(f"{owner}: {f.name}={value!r} is not valid; it must be {rel} {low}")
        object.__setattr__(self, f.name, value)


def method_options(cls: type) -> type:
    """Class decorator: a frozen dataclass whose constructor checks its values (see the module doc)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise TypeError(_unknown_message(cls.__name__, unknown[0], names))
        init(self, *args, **kwargs)
        _check(self)

    cls.__init__ = checked_init
    return cls


def _unknown_message(owner: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    valid = ", ".join(names) if names else "none"
    return f"{owner}: unknown option {key!r}{hint}; valid options: {valid}"


def option_names(cls: type) -> list[str]:
    """The config-file names of an options class's fields."""
    return [f.metadata.get("key", f.name) for f in dataclasses.fields(cls)]


def options_from_dict(cls: type, values: dict[str, Any], ignore: tuple[str, ...] = ()) -> Any:
    """An options instance from a config dict (config-file names, e.g. `projection_seed`); keys in
    `ignore` belong to the caller (name, lr, head...) and are skipped; any other unknown key is an error."""
    by_key = {f.metadata.get("key", f.name): f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key in ignore:
            continue
        if key not in by_key:
            raise TypeError(_unknown_message(cls.__name__, key, list(by_key)))
        kwargs[by_key[key]] = value
    return cls(**kwargs)


def options_to_dict(options: Any) -> dict[str, Any]:
    """The config-file form of an options instance (inverse of `options_from_dict`)."""
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        out[f.metadata.get("key", f.name)] = list(value) if isinstance(value, tuple) else value
    return out
