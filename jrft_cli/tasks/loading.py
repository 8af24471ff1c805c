"""One entry for every task's data: GLUE (tasks.glue) or custom files / Hub datasets (tasks.files).

A task config with `loader: files` is a custom task; anything else is a GLUE task. Callers resolve the
task once (`resolve_task`) and then load splits from the resolved dict, which is also what a run
records, so eval and predict read the same data and labels later.
"""
from __future__ import annotations

from typing import Any

from jrft_cli.tasks.glue import Example
from jrft_cli.tasks.glue import load_split as load_glue_split


def is_custom(task: dict[str, Any]) -> bool:
    """True for tasks read from files or a Hub dataset (conf/task/custom.yaml)."""
    return task.get("loader") == "files"


def resolve_task(task: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The task dict a run uses and records: GLUE tasks as configured; custom tasks with their data
    location, label set, regression flag and metrics filled in (reads the training data)."""
    if not is_custom(task):
        return task
    from jrft_cli.tasks import files

    return files.resolve(task, data)


def load_split(task: dict[str, Any], split: str, data_dir: str | None, limit: int | None = None) -> list[Example]:
    """Examples of one split of a resolved task (`data_dir`: GLUE's glue_data/ root; custom tasks carry
    their own location)."""
    if is_custom(task):
        from jrft_cli.tasks import files

        return files.load_split(task, split, limit)
    return load_glue_split(task, split, data_dir, limit)


def text_field_count(task: dict[str, Any]) -> int:
    """1 for single-sentence tasks, 2 for sentence pairs."""
    if is_custom(task):
        return len(task["text_fields"])
    return len(task["tsv"]["text_fields"])
