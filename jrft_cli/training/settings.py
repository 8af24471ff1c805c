"""The composed training config's schema: every setting's type and range, checked in one place.

`check(cfg)` runs on the plain config dict before anything is loaded and before any run dir is
written, and raises one `JrftError` line naming the first bad key, its value and what it must be
(`train.lr='abc' is not valid; it must be a number (null = the method's default)`). Hydra composes
values without types (`seed=abc` arrives as the string 'abc'), so this is where types are enforced.

Sections and what checks them:
  seed, d, train.*, data.*, hardware.*, logger.*, run.*, model.*   the rules below (unknown keys refused)
  privacy.*          types here; ranges and choices in jrft_cli.dp.plan.resolve_plan
  method.*           the method's typed options (jrft_cli.core.registry), via the recipe
  task.*             the fields the code reads (a task file may carry more)
A new config key needs one rule here; nothing else reads the schema.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from jrft_cli.core.errors import JrftError


@dataclass(frozen=True)
class Rule:
    """One setting: its kind, whether null is allowed, an optional range or choices, and a note
    (e.g. what null means) appended to its error message."""
    kind: str                         # int | number | str | bool | str_list | int_map | any
    null: bool = False
    low: float | None = None
    low_open: bool = False            # low is excluded
    high: float | None = None
    high_open: bool = False           # high is excluded
    choices: tuple[str, ...] = ()
    pattern: str | None = None        # a str must match this (full match); `choices` name it in errors
    note: str = ""

    def describe_type(self) -> str:
        kind = {"int": "an integer", "number": "a number", "str": "a string", "bool": "true or false",
                "str_list": "a list of strings", "int_map": "a mapping of names to integers",
                "any": "a value"}[self.kind]
        return kind + (" or null" if self.null else "")

    def describe_range(self) -> str:
        if self.kind == "int" and self.high is None and self.low in (0, 1) and not self.low_open:
            return "a positive integer" if self.low == 1 else "an integer >= 0"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


def _int(low: int | None = None, **kw: Any) -> Rule:
    return Rule("int", low=low, **kw)


def _num(low: float | None = None, **kw: Any) -> Rule:
    return Rule("number", low=low, **kw)


DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WANDB_MODES = ("auto", "online", "offline", "disabled")

# section -> key -> rule. `None` as a section's rules: the section is checked elsewhere.
SCHEMA: dict[str, dict[str, Rule]] = {
    "": {
        "seed": _int(0),
        "d": Rule("any"),   # feeds method.d of jr / jr_warp (checked there first); see D_RULE
    },
    "train": {
        "epochs": _num(0),
        "max_steps": _int(0, note="(0 = use train.epochs)"),
        "batch_size": _int(1),
        "lr": _num(0, low_open=True, null=True, note="(null = the method's default)"),
        "warmup_ratio": _num(0, high=1, high_open=True),
        "weight_decay": _num(0),
        "grad_accum": _int(1),
        "eval_every": _int(0, note="(0 = once per epoch)"),
        "max_grad_norm": _num(0, null=True, note="(null or 0 = no clipping)"),
        "log_every": _int(1),
        "checkpoint_every": _int(0, null=True, note="(0 = only on a stop signal)"),
        "group_by_length": Rule("bool", note="(batches of similar lengths; not with privacy=dp)"),
    },
    "data": {
        "dir": Rule("str", null=True, note="(a glue_data/ root; null = the Hugging Face Hub)"),
        "limit_train": _int(1, null=True, note="(null = every row)"),
        "limit_eval": _int(1, null=True, note="(null = every row)"),
        "max_length": _int(8, note="(tokens per input; at most the model's limit)"),
        "train_subset": Rule("int_map", null=True),   # experiment=small_glue: task -> rows (feeds limit_train)
        # task=custom (tasks.files / tasks.loading check the files themselves)
        "train_file": Rule("str", null=True),
        "validation_file": Rule("str", null=True),
        "hub_dataset": Rule("str", null=True, note="(a Hub dataset id or a local dataset dir)"),
        "hub_config": Rule("str", null=True),
        "train_split": Rule("str", null=True, note="(null = train)"),
        "validation_split": Rule("str", null=True, note="(null = validation)"),
    },
    "hardware": {
        "device": Rule("str", pattern=r"auto|cpu|cuda(:\d+)?|mps", choices=DEVICES),
        "precision": Rule("str", choices=PRECISIONS),
        "num_threads": _int(1, null=True, note="(null = torch's default)"),
    },
    "logger": {
        "enabled": Rule("bool"),
        "project": Rule("str"),
        "entity": Rule("str", null=True),
        "mode": Rule("str", choices=WANDB_MODES),
        "group": Rule("str", null=True),
        "tags": Rule("str_list", null=True),
    },
    "run": {
        "save_trainable": Rule("bool"),
    },
    "model": {
        "key": Rule("str"),
        "name": Rule("str", note="(a Hub id, a local model directory or pkg:<package>)"),
        "revision": Rule("str", null=True),
    },
    "privacy": {
        "enabled": Rule("bool"),
        "epsilon": _num(null=True),
        "delta": _num(null=True),
        "noise_multiplier": _num(null=True),
        "max_grad_norm": _num(),
        "accountant": Rule("str"),
        "batch_size": Rule("int"),
        "micro_batch_size": Rule("int"),
        "epochs": _num(null=True),
        "constant_lr": Rule("bool"),
        "grad_sample_mode": Rule("str"),
    },
}
# Sections whose rules cover only the keys the code reads (a task file may carry more).
OPEN_SECTIONS: dict[str, dict[str, Rule]] = {
    "task": {
        "name": Rule("str"),
        "is_regression": Rule("bool"),
        "labels": Rule("any", null=True),
        "label_names": Rule("str_list", null=True),
        "metrics": Rule("str_list"),
        "main_metric": Rule("str"),
        "eval_splits": Rule("any"),
        "kind": Rule("str", null=True, choices=("classification", "regression", "tokens")),
    },
}
# A custom task (task=custom, `loader: files`) fills labels, regression and metrics from its data
# (tasks.loading.resolve_task): null means "from the data" there.
CUSTOM_TASK_RULES: dict[str, Rule] = {
    **OPEN_SECTIONS["task"],
    "loader": Rule("str", choices=("files",)),
    "text_fields": Rule("str_list"),
    "label_field": Rule("str"),
    "is_regression": Rule("bool", null=True, note="(null = regression when the training labels are floats)"),
    "metrics": Rule("str_list", null=True, note="(null = the task kind's defaults)"),
    "main_metric": Rule("str", null=True, note="(null = the first of task.metrics)"),
}
CUSTOM_TASK_KEYS = ("name", "loader", "text_fields", "label_field", "eval_splits")
# A token task (`kind: tokens`, tasks.conll): CoNLL files under data.dir/<dir_name>, or the Hub.
TOKEN_TASK_KEYS = ("name", "kind", "labels", "metrics", "main_metric", "eval_splits", "dir_name", "train_file", "hub")
# Keys the code indexes directly: a config without them (e.g. `~train.lr`) is refused by name.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "": ("seed",),
    "train": ("epochs", "max_steps", "batch_size", "lr", "warmup_ratio", "grad_accum", "eval_every"),
    "data": ("dir", "max_length"),
    "hardware": ("device",),
    "logger": ("enabled",),
    "model": ("name",),
    "task": ("name", "is_regression", "labels", "metrics", "main_metric", "eval_splits", "tsv", "hub", "glue_dir"),   # GLUE
    "method": ("name",),
}
CHECKED_ELSEWHERE = ("method",)
REQUIRED_SECTIONS = ("model", "task", "method", "train", "data", "hardware")


# `d` after the method's options: jr / jr_warp report a bad d as method.d; other methods ignore d,
# which must still be an integer.
D_RULE = Rule("int", note="(the width of z for jr / jr_warp)")


def _name(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _type_ok(rule: Rule, value: Any) -> bool:
    if rule.kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if rule.kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if rule.kind == "str":
        return isinstance(value, str)
    if rule.kind == "bool":
        return isinstance(value, bool)
    if rule.kind == "str_list":
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if rule.kind == "int_map":
        return isinstance(value, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
    return True


def check_value(name: str, rule: Rule, value: Any) -> None:
    """One setting against its rule; a JrftError naming `name` otherwise."""
    note = f" {rule.note}" if rule.note else ""
    if value is None:
        if rule.null:
            return
        raise JrftError(f"{name}=null is not valid; it must be {rule.describe_type()}{note}")
    if not _type_ok(rule, value):
        raise JrftError(f"{name}={value!r} is not valid; it must be {rule.describe_type()}{note}")
    if rule.kind == "number" and not math.isfinite(value):
        raise JrftError(f"{name}={value!r} is not valid; it must be a finite number{note}")
    if rule.kind in ("int", "number"):
        low_bad = rule.low is not None and (value < rule.low or (rule.low_open and value == rule.low))
        high_bad = rule.high is not None and (value > rule.high or (rule.high_open and value == rule.high))
        if low_bad or high_bad:
            raise JrftError(f"{name}={value!r} is not valid; it must be {rule.describe_range()}{note}")
    if rule.kind == "str" and (rule.choices or rule.pattern):
        ok = re.fullmatch(rule.pattern, value) if rule.pattern else value in rule.choices
        if not ok:
            raise JrftError(f"{name}={value!r} is not valid; choose one of {', '.join(rule.choices)}")


def _unknown(section: str, key: str, known: list[str]) -> JrftError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {_name(section, close[0])!r}?)" if close else ""
    where = f"the {section} section" if section else "the config"
    return JrftError(f"{_name(section, key)} is not a setting of {where}{hint}; valid keys: {', '.join(known)}")


def _check_section(section: str, values: Any, rules: dict[str, Rule], open_keys: bool) -> None:
    if not isinstance(values, dict):
        raise JrftError(f"{section}={values!r} is not valid; it must be a group of settings")
    for key, value in values.items():
        if key not in rules:
            if open_keys:
                continue
            raise _unknown(section, key, list(rules))
        check_value(_name(section, key), rules[key], value)


def check(cfg: dict[str, Any]) -> None:
    """Type- and range-check a composed config (a plain dict, interpolations resolved); raises one
    JrftError line for the first bad value. Method options are checked by the recipe (registry)."""
    missing = [s for s in REQUIRED_SECTIONS if not isinstance(cfg.get(s), dict)]
    if missing:
        raise JrftError(f"the config lacks the {missing[0]!r} section; compose it with `jrft train` (conf/config.yaml)")
    custom = cfg["task"].get("loader") is not None
    for section, keys in REQUIRED_KEYS.items():
        values = cfg.get(section, {}) if section else cfg
        if section == "task" and custom:
            keys = CUSTOM_TASK_KEYS
        elif section == "task" and cfg["task"].get("kind") == "tokens":
            keys = TOKEN_TASK_KEYS
        absent = [k for k in keys if not isinstance(values, dict) or k not in values]
        if absent:
            raise JrftError(f"{_name(section, absent[0])} is missing from the config; restore it (conf/ holds "
                            f"its default) instead of deleting it")
    top = SCHEMA[""]
    known = [*top, *(s for s in SCHEMA if s), *OPEN_SECTIONS, *CHECKED_ELSEWHERE]
    for key, value in cfg.items():
        if key in top:
            check_value(key, top[key], value)
        elif key not in known:
            raise _unknown("", key, known)
    for section, rules in SCHEMA.items():
        if section and section in cfg:
            if section == "privacy" and isinstance(cfg[section], dict) and not cfg[section].get("enabled"):
                _check_section(section, cfg[section], {"enabled": rules["enabled"]}, open_keys=False)
                continue
            _check_section(section, cfg[section], rules, open_keys=False)
    for section, rules in OPEN_SECTIONS.items():
        _check_section(section, cfg[section], CUSTOM_TASK_RULES if section == "task" and custom else rules,
                       open_keys=True)
    task = cfg["task"]
    if task.get("metrics") is not None and task.get("main_metric") is not None and task["main_metric"] not in task["metrics"]:
        raise JrftError(f"task.main_metric={task['main_metric']!r} is not valid; choose one of "
                        f"{', '.join(task['metrics'])} (task.metrics)")
    t = cfg["train"]
    if t["max_steps"] <= 0 and not t["epochs"] > 0:
        raise JrftError(f"train.epochs={t['epochs']!r} is not valid; it must be > 0 (or set train.max_steps > 0)")


def check_max_length(max_length: int, limit: int | None, model_name: str) -> None:
    """`data.max_length` within what the model's position embeddings cover (`limit`, None = unknown)."""
    if limit is not None and max_length > limit:
        raise JrftError(f"data.max_length={max_length} is not valid for model {model_name!r}; it must be <= "
                        f"{limit} (the model's longest input)")


def _method_recipe_rules() -> dict[str, Rule]:
    from jrft_cli.core.backbone import HEADS

    return {
        "name": Rule("str"),
        "lr": _num(0, low_open=True, note="(the method's default learning rate)"),
        "dp_lr": _num(0, low_open=True, null=True, note="(null = method.lr under privacy=dp)"),
        "head": Rule("str", choices=HEADS),
        "dropout": _num(0, high=1, high_open=True, null=True, note="(null = the model's own)"),
    }


# The keys of `method.*` that the recipe reads (the method's own options are checked by the registry).
METHOD_RECIPE_RULES: dict[str, Rule] = _method_recipe_rules()
