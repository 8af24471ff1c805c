"""Custom tasks: your own data from files (CSV, TSV, JSON, JSONL, Parquet) or a Hub dataset, read
with `datasets`.

A custom task config (conf/task/custom.yaml: text columns, label column, optional regression flag)
and the run's data settings (data.train_file / data.validation_file, or data.hub_dataset with its
config and split names) are resolved once, at training time, into a self-contained task dict
(`resolve`): the data's location (files as absolute paths), the label set read from the training
data (sorted; or the order given in task.labels), whether it is regression, and the metrics. That
dict is what the run records (adapter_config.json, results.json, exports), so eval, predict, export
and table work on it as on a GLUE task.

Classification labels are compared as strings (`1` in a CSV and `1` in JSON are the same class).
Token classification (a `tokens` + `tags` column pair) is not here yet.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from jrft_cli.core.errors import JrftError
from jrft_cli.tasks.glue import Example
from jrft_cli.tasks.metrics import METRICS

# file suffix -> (datasets builder, its options)
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".tab": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
CLASSIFICATION_METRICS = ("accuracy", "f1_macro")
REGRESSION_METRICS = ("pearson", "spearman")
SPLITS = ("train", "dev")

_cache: dict[tuple, Any] = {}   # (source, split) -> datasets.Dataset, so resolving then loading reads once


def _datasets():
    import datasets   # heavy: only when a custom task is used

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _where(task: dict[str, Any], split: str) -> str:
    source = task["data"]
    if "hub_dataset" in source:
        return f"{source['hub_dataset']} split {source['splits'][split]}"
    return source["files"][split]


def _read(task: dict[str, Any], split: str):
    """The split as a datasets.Dataset (one JrftError for a missing, empty or unreadable source)."""
    source = task["data"]
    key = (repr(sorted(source.items())), split)
    if key in _cache:
        return _cache[key]
    if "hub_dataset" in source:
        name, config, split_name = source["hub_dataset"], source.get("hub_config"), source["splits"][split]
        try:
            ds = _datasets().load_dataset(name, config, split=split_name)
        except Exception as e:   # network, unknown dataset or split: one actionable line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise JrftError(f"data.hub_dataset {name!r} (config {config!r}, split {split_name!r}) cannot be loaded "
                            f"({reason[:200]})") from None
    else:
        path = Path(source["files"][split])
        key_name = "data.train_file" if split == "train" else "data.validation_file"
        if not path.is_file():
            raise JrftError(f"{key_name} {str(path)!r} does not exist")
        if path.stat().st_size == 0:
            raise JrftError(f"{key_name} {str(path)!r} is empty")
        builder, options = FORMATS[path.suffix.lower()]
        try:
            ds = _datasets().load_dataset(builder, data_files=str(path), split="train", **options)
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "corresponds to no data" in reason:   # datasets' words for a file with a header only
                raise JrftError(f"{key_name} {str(path)!r} has no rows") from None
            raise JrftError(f"{key_name} {str(path)!r} cannot be read as {path.suffix.lower()[1:]} ({reason[:200]})") from None
    if len(ds) == 0:
        raise JrftError(f"{_where(task, split)} has no rows")
    missing = [c for c in (*task["text_fields"], task["label_field"]) if c not in ds.column_names]
    if missing:
        which = "task.label_field" if missing[0] == task["label_field"] else "task.text_fields"
        raise JrftError(f"{_where(task, split)} has no column {missing[0]!r} ({which}); its columns are: "
                        f"{', '.join(ds.column_names)}")
    _cache[key] = ds
    return ds


def _label_string(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))   # 1.0 (a float column with a gap) is class 1
    return str(value)


def _check_text_fields(fields: Any) -> tuple[str, ...]:
    if isinstance(fields, str):
        fields = [fields]
    if not isinstance(fields, (list, tuple)) or not 1 <= len(fields) <= 2 or not all(isinstance(f, str) for f in fields):
        raise JrftError(f"task.text_fields={fields!r} is not valid; give one column name, or two for sentence pairs, "
                        f"e.g. task.text_fields=[text]")
    return tuple(fields)


def _source(data: dict[str, Any]) -> dict[str, Any]:
    files = data.get("train_file"), data.get("validation_file")
    hub = data.get("hub_dataset")
    if hub and any(files):
        raise JrftError("task=custom takes data.train_file/data.validation_file or data.hub_dataset, not both")
    if hub:
        return {"hub_dataset": str(hub), "hub_config": data.get("hub_config"),
                "splits": {"train": data.get("train_split") or "train",
                           "dev": data.get("validation_split") or "validation"}}
    for key, value in zip(("data.train_file", "data.validation_file"), files):
        if not value:
            raise JrftError(f"task=custom needs {key} (CSV, TSV, JSON, JSONL or Parquet), or data.hub_dataset")
        suffix = Path(str(value)).suffix.lower()
        if suffix not in FORMATS:
            raise JrftError(f"{key} {str(value)!r}: unknown file type {suffix or '(none)'!r}; use one of "
                            f"{', '.join(FORMATS)}")
    return {"files": {split: str(Path(os.path.expanduser(str(v))).resolve()) for split, v in zip(SPLITS, files)}}


def _numeric(value: Any, where: str, row: int) -> float:
    if isinstance(value, bool) or value is None:
        number = None
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
    if number is None or not math.isfinite(number):
        raise JrftError(f"{where} row {row}: regression label {value!r} is not a number")
    return number


def resolve(task: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The self-contained task dict of a custom task (see the module docstring); reads the training data."""
    resolved = dict(task)
    resolved["text_fields"] = list(_check_text_fields(task.get("text_fields")))
    if not isinstance(task.get("label_field"), str):
        raise JrftError(f"task.label_field={task.get('label_field')!r} is not valid; give the label column's name")
    resolved["data"] = _source(data)
    train = _read(resolved, "train")
    labels = train[task["label_field"]]
    where = _where(resolved, "train")
    regression = task.get("is_regression")
    if regression is None:   # floats are scores; integers and strings are classes
        dtype = getattr(train.features[task["label_field"]], "dtype", "")
        regression = str(dtype).startswith("float") and not all(float(v).is_integer() for v in labels if v is not None)
    resolved["is_regression"] = bool(regression)
    if resolved["is_regression"]:
        for n, value in enumerate(labels, 1):
            _numeric(value, where, n)
        resolved["labels"], resolved["label_names"] = None, None
    else:
        for n, value in enumerate(labels, 1):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise JrftError(f"{where} row {n}: no label in column {task['label_field']!r}")
        seen = {_label_string(v) for v in labels}
        given = task.get("labels")
        if given:
            order = [_label_string(v) for v in given]
            unknown = sorted(seen - set(order))
            if unknown:
                raise JrftError(f"{where}: label {unknown[0]!r} is not in task.labels {order}")
        else:
            numeric = all(_is_number(v) for v in seen)
            order = sorted(seen, key=float) if numeric else sorted(seen)
        if len(order) < 2:
            raise JrftError(f"{where}: the training labels have one class only ({order}); classification needs two "
                            f"or more (or set task.is_regression=true)")
        resolved["labels"], resolved["label_names"] = order, list(order)
    metrics = task.get("metrics") or list(REGRESSION_METRICS if resolved["is_regression"] else CLASSIFICATION_METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise JrftError(f"task.metrics: {unknown[0]!r} is not a metric; choose from {', '.join(METRICS)}")
    resolved["metrics"] = list(metrics)
    main = task.get("main_metric") or metrics[0]
    if main not in metrics:
        raise JrftError(f"task.main_metric={main!r} is not one of task.metrics {list(metrics)}")
    resolved["main_metric"] = main
    resolved["eval_splits"] = [{"name": "dev"}]
    return resolved


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_split(task: dict[str, Any], split: str, limit: int | None = None) -> list[Example]:
    """Examples of `train` or `dev` of a resolved custom task (labels as class indices or floats)."""
    if split not in SPLITS:
        raise JrftError(f"task {task['name']}: unknown split {split!r}; choose train or dev")
    ds = _read(task, split)
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    where = _where(task, split)
    fields = task["text_fields"]
    index = None if task["is_regression"] else {name: i for i, name in enumerate(task["labels"])}
    out = []
    for n, row in enumerate(ds, 1):
        texts = tuple("" if row[f] is None else str(row[f]) for f in fields)
        value = row[task["label_field"]]
        if index is None:
            label: float | int = _numeric(value, where, n)
        else:
            key = None if value is None else _label_string(value)
            if key not in index:
                raise JrftError(f"{where} row {n}: label {value!r} never occurs in the training data; "
                                f"training labels: {task['labels']}")
            label = index[key]
        out.append(Example(texts, label))
    return out
