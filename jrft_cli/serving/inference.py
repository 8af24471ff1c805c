"""Loading a trained target (a run dir or an export dir) for `jrft eval` and `jrft predict`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.tasks.evaluation import TaskInfo, evaluate, predict, predictions
from jrft_cli.tasks.kinds import kind_of


class _Logits(nn.Module):
    """Adapts a transformers classifier (returns an output object) to the loop's `model(**batch) -> logits`."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.hf(**batch).logits


@dataclass
class Target:
    """A model ready for inference, with what formats its inputs and names its outputs."""
    path: Path
    kind: str                       # "run" | "export"
    model: nn.Module                # model(**batch) -> logits (B, C), token tasks (B, T, C)
    tokenizer: Any
    task: dict[str, Any]            # the task config it was trained on
    mask_format: bool
    max_length: int
    data_dir: str | None            # the training run's data.dir, when known

    @property
    def label_names(self) -> list[str]:
        names = self.task.get("label_names") or [str(v) for v in self.task.get("labels", [])]
        return list(names)


def target_task(path: str | Path) -> dict[str, Any]:
    """The task config a target was trained on, read from its JSON (no model loaded).
    A path that is neither a run dir nor an export dir is a one-line error."""
    from jrft_cli.core.artifact import is_run_dir, read_adapter_config
    from jrft_cli.serving.export import is_export_dir, read_export_note

    path = Path(path)
    if not path.exists():
        raise JrftError(f"target {str(path)!r} does not exist; pass a run dir (with adapter_config.json) "
                        f"or an export dir (with jrft_export.json)")
    if is_export_dir(path):
        return read_export_note(path)["task_config"]
    if is_run_dir(path):
        return read_adapter_config(path)["task_config"]
    raise JrftError(f"target {str(path)!r} is neither a jrft run dir (no adapter_config.json) nor an export dir "
                    f"(no jrft_export.json)")


def load_target(path: str | Path, task: str | None = None) -> Target:
    """A run dir (adapter_config.json) or an export dir (jrft_export.json), checked against `task=` (when
    given) before any model is loaded; anything else is a one-line error."""
    from jrft_cli.core.artifact import load_artifact
    from jrft_cli.serving.export import is_export_dir, load_export

    path = Path(path)
    check_task(target_task(path), task)
    if is_export_dir(path):
        hf, tokenizer, note = load_export(path)
        return Target(path, "export", _Logits(hf), tokenizer, note["task_config"], bool(note["mask_format"]),
                      _input_limit(int(note["max_length"]), tokenizer, hf.config), None)
    loaded = load_artifact(path)
    data_dir = ((loaded.run_config or {}).get("data") or {}).get("dir")
    return Target(path, "run", loaded.model, loaded.tokenizer, loaded.info["task_config"],
                  bool(loaded.info["mask_format"]),
                  _input_limit(int(loaded.info["max_length"]), loaded.tokenizer, loaded.model.config), data_dir)


def _input_limit(max_length: int, tokenizer: Any, config: Any) -> int:
    """The run's max_length, but never beyond what the model's positions cover (runs trained before
    jrft checked data.max_length could record more; a long input would then crash the model)."""
    from jrft_cli.core.backbone import max_input_length

    limit = max_input_length(tokenizer, config)
    return max_length if limit is None else min(max_length, limit)


def check_task(trained: dict[str, Any], task: str | None) -> None:
    """`task=` must name a known task and the one the target was trained on (a custom task goes by the
    name it was trained under)."""
    from jrft_cli.core.conf import group_choices

    if task is None or task == trained["name"]:
        return
    choices = group_choices("task")
    if task not in choices:
        raise JrftError(f"task={task!r} is not valid; choose one of {', '.join(choices)}")
    if task != trained["name"]:
        raise JrftError(f"task={task!r} does not match the target, which was trained on task "
                        f"{trained['name']!r}; use task={trained['name']} (or leave task= out)")


def evaluate_target(target: Target, split: str | None = None, data_dir: str | None = None,
                    limit: int | None = None, batch_size: int = 64) -> tuple[dict[str, float], int]:
    """(metrics, number of examples) on one eval split (default: the task's main dev split)."""
    task = target.task
    split = split or task["eval_splits"][0]["name"]
    kind = kind_of(task)
    if data_dir is None:   # JRFT_GLUE_DIR only locates GLUE-style data
        env = os.environ.get("JRFT_GLUE_DIR") if kind.reads_glue_dir else None
        data_dir = env or target.data_dir
    examples = kind.load(task, split, data_dir, limit)
    data = kind.encode(examples, target.tokenizer, mask_format=target.mask_format, max_length=target.max_length)
    collate = kind.collate(target.tokenizer)
    return evaluate(target.model, data, collate, TaskInfo.from_task(task), batch_size, torch.device("cpu")), len(data)


def parse_rows(lines: Sequence[str], task: dict[str, Any]) -> list[tuple[str, ...]]:
    """Input lines -> tuples: one text per line, or `text1<TAB>text2` for pair tasks; for token tasks
    the line's words (split on whitespace)."""
    kind = kind_of(task)
    rows = []
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        rows.append(kind.parse_line(line, task, n))
    return rows


def predict_rows(target: Target, rows: Sequence[tuple[str, ...]], batch_size: int = 64) -> list[dict[str, Any]]:
    """One record per row: `label` and `score` (the predicted class's probability; the value for regression),
    plus `probs` (one per class) for classification. Token tasks: `words` and `tags` (one per word;
    words beyond the run's max length get no prediction: tag `O`, counted in `dropped`)."""
    if not rows:
        return []
    task = target.task
    kind = kind_of(task)
    data = kind.encode(kind.blank_examples(rows), target.tokenizer, mask_format=target.mask_format,
                       max_length=target.max_length)
    collate = kind.collate(target.tokenizer)
    if kind.name == "tokens":
        names = target.label_names
        outside = "O" if "O" in names else names[0]
        tagged = predictions(target.model, data, collate, kind, batch_size, torch.device("cpu"))
        return [{"words": list(r), "tags": [names[t] for t in tags] + [outside] * (len(r) - len(tags)),
                 "dropped": len(r) - len(tags)} for r, tags in zip(rows, tagged)]
    logits = predict(target.model, data, collate, batch_size, torch.device("cpu"))
    if kind.name == "regression":
        return [{"label": float(v), "score": float(v)} for v in logits.squeeze(-1).tolist()]
    probs = logits.softmax(-1)
    names = target.label_names
    out = []
    for p in probs:
        i = int(p.argmax())
        out.append({"label": names[i] if i < len(names) else str(i), "score": float(p[i]), "probs": p.tolist()})
    return out
