"""Custom tasks (tasks.files, through tasks.loading): every file format through `datasets`, a local dataset
directory through the Hub path, labels read from the training data, regression, and the one-line errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jrft_cli.core.errors import JrftError
from jrft_cli.tasks.loading import load_split, resolve_task, text_field_count

TRAIN = [("a fine film", "pos"), ("a dull mess", "neg"), ("warm and funny", "pos"), ("i hated it", "neg")]
DEV = [("great fun", "pos"), ("boring", "neg")]


def custom(**changes) -> dict:
    task = {"name": "custom", "loader": "files", "text_fields": ["text"], "label_field": "label",
            "is_regression": None, "labels": None, "label_names": None, "metrics": None, "main_metric": None,
            "eval_splits": [{"name": "dev"}]}
    task.update(changes)
    return task


def data(train: Path | None = None, dev: Path | None = None, **more) -> dict:
    return {"dir": None, "train_file": str(train) if train else None, "validation_file": str(dev) if dev else None,
            "hub_dataset": None, "hub_config": None, "train_split": None, "validation_split": None, **more}


def write_csv(path: Path, rows, header=("text", "label"), delimiter=",") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def write(path: Path, rows, header=("text", "label")) -> Path:
    """rows in the format the suffix names (csv, tsv, json, jsonl, parquet)."""
    records = [dict(zip(header, r)) for r in rows]
    suffix = path.suffix
    if suffix == ".csv":
        return write_csv(path, rows, header)
    if suffix == ".tsv":
        return write_csv(path, rows, header, "\t")
    if suffix == ".json":
        path.write_text(json.dumps(records))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".parquet":
        import pandas as pd
        pd.DataFrame(records).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_loads_the_same_examples(suffix, tmp_path):
    task = resolve_task(custom(), data(write(tmp_path / f"train{suffix}", TRAIN), write(tmp_path / f"dev{suffix}", DEV)))
    assert (task["labels"], task["label_names"], task["is_regression"]) == (["neg", "pos"], ["neg", "pos"], False)
    assert (task["metrics"], task["main_metric"]) == (["accuracy", "f1_macro"], "accuracy")
    train = load_split(task, "train", None)
    assert [(e.texts, e.label) for e in train] == [((t,), ["neg", "pos"].index(l)) for t, l in TRAIN]
    assert [e.label for e in load_split(task, "dev", None)] == [1, 0]
    assert len(load_split(task, "train", None, limit=3)) == 3
    assert text_field_count(task) == 1
    assert json.loads(json.dumps(task)) == task          # recordable as it is (artifact, results, export)


def test_integer_labels_sort_as_numbers_and_pairs_read_two_columns(tmp_path):
    rows = [("a", "b", 10), ("c", "d", 2), ("e", "f", 1), ("g", "h", 2)]
    header = ("premise", "hypothesis", "y")
    task = resolve_task(custom(text_fields=["premise", "hypothesis"], label_field="y"),
                        data(write(tmp_path / "t.jsonl", rows, header), write(tmp_path / "d.jsonl", rows[:2], header)))
    assert task["labels"] == ["1", "2", "10"] and not task["is_regression"]
    assert [(e.texts, e.label) for e in load_split(task, "dev", None)] == [(("a", "b"), 2), (("c", "d"), 1)]
    assert text_field_count(task) == 2


def test_float_labels_are_regression_and_given_labels_fix_the_order(tmp_path):
    rows = [("a", 0.5), ("b", 3.25), ("c", 1.0)]
    task = resolve_task(custom(), data(write(tmp_path / "t.csv", rows), write(tmp_path / "d.csv", rows)))
    assert task["is_regression"] and task["labels"] is None and task["metrics"] == ["pearson", "spearman"]
    assert [e.label for e in load_split(task, "dev", None)] == [0.5, 3.25, 1.0]
    forced = resolve_task(custom(is_regression=True), data(write(tmp_path / "i.csv", [("a", 1), ("b", 2)]),
                                                            tmp_path / "d.csv"))
    assert forced["is_regression"]
    ordered = resolve_task(custom(labels=["pos", "neg"]), data(write(tmp_path / "p.csv", TRAIN), tmp_path / "d.csv"))
    assert ordered["labels"] == ["pos", "neg"] and load_split(ordered, "train", None)[0].label == 0


def test_a_local_dataset_dir_loads_through_the_hub_path(tmp_path):
    root = tmp_path / "my_dataset"
    root.mkdir()
    write(root / "train.csv", TRAIN)
    write(root / "validation.csv", DEV)
    task = resolve_task(custom(), data(hub_dataset=str(root)))
    assert task["data"] == {"hub_dataset": str(root), "hub_config": None,
                            "splits": {"train": "train", "dev": "validation"}}
    assert [e.label for e in load_split(task, "dev", None)] == [1, 0]


def test_errors_are_one_line_and_name_the_problem(tmp_path):
    train = write(tmp_path / "train.csv", TRAIN)
    dev = write(tmp_path / "dev.csv", DEV)
    cases = [
        (custom(), data(tmp_path / "missing.csv", dev), r"data.train_file '.*missing.csv' does not exist"),
        (custom(), data(train, tmp_path / "nope.csv"), r"data.validation_file '.*nope.csv' does not exist"),
        (custom(label_field="sentiment"), data(train, dev),
         r"has no column 'sentiment' \(task.label_field\); its columns are: text, label"),
        (custom(text_fields=["review"]), data(train, dev), r"has no column 'review' \(task.text_fields\)"),
        (custom(), data(train, write(tmp_path / "odd.csv", [("fine", "meh")])),
         r"odd.csv row 1: label 'meh' never occurs in the training data; training labels: \['neg', 'pos'\]"),
        (custom(is_regression=True), data(train, dev), r"train.csv row 1: regression label 'pos' is not a number"),
        (custom(), data(None, dev), "task=custom needs data.train_file"),
        (custom(), data(train, dev, hub_dataset="x/y"), "not both"),
        (custom(), data(tmp_path / "train.xlsx", dev), r"unknown file type '.xlsx'"),
        (custom(text_fields=["a", "b", "c"]), data(train, dev), "task.text_fields=.* is not valid"),
        (custom(), data(write(tmp_path / "one.csv", [("x", "pos"), ("y", "pos")]), dev), "one class only"),
        (custom(metrics=["auc"]), data(train, dev), "'auc' is not a metric"),
    ]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    cases.append((custom(), data(empty, dev), r"data.train_file '.*empty.csv' is empty"))
    cases.append((custom(), data(write(tmp_path / "header.csv", []), dev), r"header.csv' has no rows"))
    for task, where, message in cases:
        with pytest.raises(JrftError, match=message) as e:
            loaded = resolve_task(task, where)
            load_split(loaded, "dev", None)
        assert "\n" not in str(e.value)
