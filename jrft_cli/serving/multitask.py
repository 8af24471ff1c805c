"""Many tasks, one frozen backbone, one batch: each example gets its own task's shifts and head.

A jr task is z (its shifts s_l = z W_l, precomputed here as an (L, H) table row) and a linear head, so
one backbone serves any number of tasks: each forward gathers every row's shifts from the table into
the adapter's per-example shift tensor (`JointShift.example_shifts`) and every row's head from a
stacked head table. The outputs equal each task's own model on the same inputs (up to float summation
order and padding: within 1e-5).

Grouping, asked of the adapters rather than of method names: tasks whose adapters hook the backbone the
same way (`share_key`: SLaSh at one position; JR-WARP with one prompt id) share one adapter instance;
adapters that leave the inputs alone (`layout_key` None: SLaSh at any position) are installed together,
so every jr task of a batch runs in ONE forward pass (a row of a task at another position gets a zero
shift there, which adds exactly nothing). JR-WARP prepends its prompt token (one more input position),
so a batch's JR-WARP rows run as a second forward pass of their own, again all their tasks at once.
Only adapter methods (jr, jr_warp) can share a backbone: every other method changes its weights.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.tasks.evaluation import batches
from jrft_cli.tasks.glue import Example, encode, make_collate

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class TaskEntry:
    """One served task: what formats its inputs, which adapter group shifts it, and its head's row."""
    name: str
    path: Path
    task: dict[str, Any]              # the task config it was trained on
    method: str
    d: int | None
    mask_format: bool
    max_length: int
    head_kind: str                    # a readout of core.heads.READOUTS
    num_labels: int
    share_key: tuple
    layout_key: tuple | None
    index: int                        # row in the stacked head table
    group_index: int                  # row in its group's shift table

    @property
    def is_regression(self) -> bool:
        return bool(self.task["is_regression"])

    @property
    def is_pair(self) -> bool:
        return len(self.task["tsv"]["text_fields"]) > 1

    @property
    def label_names(self) -> list[str]:
        names = self.task.get("label_names") or [str(v) for v in self.task.get("labels") or []]
        return list(names)

    def describe(self) -> dict[str, Any]:
        """What a client needs to know about the task (GET /tasks)."""
        return {"name": self.name, "task": self.task["name"], "method": self.method, "d": self.d,
                "pair": self.is_pair, "regression": self.is_regression,
                "labels": None if self.is_regression else self.label_names, "max_length": self.max_length}


@dataclass
class _Group:
    """One adapter instance and the shift table of every task it serves (row n_tasks: zeros)."""
    adapter: nn.Module
    layout_key: tuple | None
    rows: list[torch.Tensor] = field(default_factory=list)
    table: torch.Tensor | None = None


def parse_target(spec: str) -> tuple[str, Path]:
    """`NAME=PATH` -> (NAME, PATH); a bare PATH is named after its directory."""
    name, sep, rest = spec.partition("=")
    if sep and not Path(spec).exists():
        if not NAME_PATTERN.match(name):
            raise JrftError(f"target {spec!r}: task name {name!r} is not valid; use letters, digits, '_', '-', '.'")
        return name, Path(rest)
    path = Path(spec)
    name = path.resolve().name
    if not NAME_PATTERN.match(name):
        raise JrftError(f"target {spec!r}: its directory name {name!r} cannot be a task name; give one as NAME=PATH")
    return name, path


class MultiTaskModel:
    """One backbone serving every given jr / jr_warp run artifact, mixed in one batch.

        model = MultiTaskModel.load({"sent": "runs/sst2", "sim": "runs/stsb"})
        model.predict([("sent", ("a fine film",)), ("sim", ("A man sings.", "A man is singing."))])
    """

    def __init__(self, backbone: nn.Module, tokenizer: Any, tasks: dict[str, TaskEntry], groups: dict[tuple, _Group],
                 head_weight: torch.Tensor, head_bias: torch.Tensor, base_model: dict[str, Any]) -> None:
        self.backbone = backbone.eval()
        self.tokenizer = tokenizer
        self.tasks = tasks
        self.groups = groups
        self.head_weight = head_weight          # (T, C_max, H): task t's head in rows [:num_labels]
        self.head_bias = head_bias              # (T, C_max)
        self.base_model = base_model
        self._collate = make_collate(tokenizer, False)
        self._layouts = sorted({g.layout_key for g in groups.values()}, key=lambda k: (k is not None, str(k)))

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, targets: dict[str, str | Path] | Sequence[str]) -> "MultiTaskModel":
        """Load run dirs of jr / jr_warp runs on one base model: a dict NAME -> PATH, or `NAME=PATH` / `PATH`
        strings. A different base model, a non-adapter method, a `cls` head or a non-run dir is a JrftError."""
        from jrft_cli.core.artifact import load_adapter, read_adapter_config
        from jrft_cli.core.backbone import SequenceClassifier, load_tokenizer
        from jrft_cli.core.files import ADAPTER_WEIGHTS
        from jrft_cli.core.heads import READOUTS, TOKEN_HEADS
        from jrft_cli.core.registry import method_spec
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        pairs = list(targets.items()) if isinstance(targets, dict) else [parse_target(str(t)) for t in targets]
        if not pairs:
            raise JrftError("no targets given; pass at least one run dir (NAME=PATH)")
        names = [n for n, _ in pairs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise JrftError(f"task name(s) {', '.join(dup)} given twice; name targets apart with NAME=PATH")
        infos = {}
        for name, path in pairs:
            path = Path(path)
            if not path.exists():
                raise JrftError(f"target {name}={path}: does not exist; pass a run dir of a jr or jr_warp run")
            if (path / "jrft_export.json").is_file():
                raise JrftError(f"target {name}={path} is an export dir (shifts folded into its weights); tasks share "
                                f"a backbone only as run dirs (adapter_config.json + adapter.safetensors)")
            info = read_adapter_config(path)
            if "task_config" not in info:
                raise JrftError(f"target {name}={path} holds an adapter without a task or head (save_adapter); pass "
                                f"the run dir of a jrft train run")
            spec = method_spec(info["method"])
            if not spec.has_adapter:
                raise JrftError(f"target {name}={path} is a {info['method']!r} run, which changes the backbone's "
                                f"weights; only adapter methods (jr, jr_warp) share one backbone: serve it alone")
            if info["head"] in TOKEN_HEADS:
                raise JrftError(f"target {name}={path} is a token task ({info['task']}); a mixed batch holds sequence "
                                f"tasks (one label per input): serve it alone")
            if info["head"] not in READOUTS:
                raise JrftError(f"target {name}={path} has the {info['head']!r} head (the model family's own); tasks "
                                f"share a batch with a linear head on a readout ({', '.join(READOUTS)}): serve it alone")
            infos[name] = (path, info)
        first_name, (_, first) = pairs[0][0], infos[pairs[0][0]]
        base = first["base_model"]
        for name, (path, info) in infos.items():
            other = info["base_model"]
            if (other["name"], other.get("revision")) != (base["name"], base.get("revision")):
                raise JrftError(f"targets {first_name} and {name} are on different base models ({base['name']!r} vs "
                                f"{other['name']!r}); one batch needs one backbone: serve them separately")

        tokenizer = load_tokenizer(base["name"], base.get("revision"))
        backbone = SequenceClassifier(base["name"], 1, head=first["head"], revision=base.get("revision"),
                                      mask_token_id=tokenizer.mask_token_id).backbone
        backbone.requires_grad_(False)
        tasks: dict[str, TaskEntry] = {}
        groups: dict[tuple, _Group] = {}
        heads: list[tuple[torch.Tensor, torch.Tensor]] = []
        hidden = backbone.config.hidden_size
        for name, (path, info) in infos.items():
            if info["mask_format"] and tokenizer.mask_token_id != info["mask_token_id"]:
                raise JrftError(f"target {name}={path}: mask token id {info['mask_token_id']} differs from the "
                                f"tokenizer's {tokenizer.mask_token_id}; the base model changed since training")
            adapter = load_adapter(backbone, path)
            with torch.no_grad():
                shifts = adapter.shifts().detach().clone()
            adapter.remove()                       # installed only for the forward passes that need it
            key = adapter.share_key
            group = groups.get(key)
            if group is None:
                adapter.z.requires_grad_(False)
                group = groups[key] = _Group(adapter, adapter.layout_key)
            group.rows.append(shifts)
            state = load_file(str(path / ADAPTER_WEIGHTS))
            weight, bias = state.get("head.weight"), state.get("head.bias")
            if weight is None or bias is None or weight.shape != (info["num_labels"], hidden):
                raise JrftError(f"target {name}={path}: {ADAPTER_WEIGHTS} has no head of shape "
                                f"({info['num_labels']}, {hidden})")
            heads.append((weight, bias))
            tasks[name] = TaskEntry(name, path, info["task_config"], info["method"], info.get("d"),
                                    bool(info["mask_format"]), int(info["max_length"]), info["head"],
                                    int(info["num_labels"]), key, group.layout_key, len(heads) - 1,
                                    len(group.rows) - 1)
        for group in groups.values():
            # the last row is all zeros: what rows of other groups' tasks get in a shared pass
            group.table = torch.cat([torch.stack(group.rows), torch.zeros_like(group.rows[0])[None]])
            group.rows = []
        c_max = max(w.size(0) for w, _ in heads)
        head_weight = torch.zeros(len(heads), c_max, hidden)
        head_bias = torch.zeros(len(heads), c_max)
        for i, (w, b) in enumerate(heads):
            head_weight[i, :w.size(0)] = w
            head_bias[i, :b.size(0)] = b
        return cls(backbone, tokenizer, tasks, groups, head_weight, head_bias, dict(base))

    # ----------------------------------------------------------------------------------- inference
    def check_row(self, task: str, texts: tuple[str, ...], where: str = "") -> TaskEntry:
        """The task entry for one input row; a JrftError naming `where` for an unknown task or a wrong
        number of texts (pair tasks take two)."""
        entry = self.tasks.get(task)
        if entry is None:
            raise JrftError(f"{where}unknown task {task!r}; known tasks: {', '.join(self.tasks)}")
        want = 2 if entry.is_pair else 1
        if len(texts) != want:
            kind = "sentence pairs (two texts)" if entry.is_pair else "one text"
            raise JrftError(f"{where}task {task!r} ({entry.task['name']}) takes {kind}; got {len(texts)} text(s)")
        return entry

    def encode_rows(self, rows: Sequence[tuple[str, tuple[str, ...]]]) -> list[dict]:
        """Token ids of each (task, texts) row, formatted as its task was trained (mask token, max_length)."""
        by_task: dict[str, list[int]] = defaultdict(list)
        for i, (task, texts) in enumerate(rows):
            self.check_row(task, tuple(texts), f"row {i + 1}: ")
            by_task[task].append(i)
        items: list[dict | None] = [None] * len(rows)
        for task, idx in by_task.items():
            entry = self.tasks[task]
            encoded = encode([Example(tuple(rows[i][1]), 0) for i in idx], self.tokenizer,
                             mask_format=entry.mask_format, max_length=entry.max_length)
            for i, item in zip(idx, encoded):
                item["task_index"] = entry.index
                item["task"] = task
                items[i] = item
        return items   # type: ignore[return-value]

    @torch.no_grad()
    def logits(self, items: Sequence[dict]) -> list[torch.Tensor]:
        """Each encoded row's logits (num_labels of its task), from one forward pass per input layout."""
        out: list[torch.Tensor | None] = [None] * len(items)
        for layout in self._layouts:
            idx = [i for i, it in enumerate(items) if self.tasks[it["task"]].layout_key == layout]
            if not idx:
                continue
            for i, row in zip(idx, self._forward([items[i] for i in idx], layout)):
                out[i] = row
        return out   # type: ignore[return-value]

    def _forward(self, items: list[dict], layout: tuple | None) -> list[torch.Tensor]:
        from jrft_cli.core.heads import READOUTS, TOKEN_HEADS

        batch = self._collate(items)
        entries = [self.tasks[it["task"]] for it in items]
        active = [(key, g) for key, g in self.groups.items() if g.layout_key == layout]
        for key, group in active:
            zero = group.table.size(0) - 1
            rows = torch.tensor([e.group_index if e.share_key == key else zero for e in entries])
            group.adapter.example_shifts = group.table[rows]
            group.adapter.reinstall()
        try:
            kwargs = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
            hidden = self.backbone(input_ids=batch["input_ids"], **kwargs).last_hidden_state
        finally:
            for _, group in active:
                group.adapter.remove()
                group.adapter.example_shifts = None
        # an adapter may prepend positions (JR-WARP): the input's own are the last T, as in SequenceClassifier
        hidden = hidden[:, hidden.size(1) - batch["input_ids"].size(1):]
        features = torch.empty(len(items), hidden.size(-1))
        for kind in {e.head_kind for e in entries}:
            rows = [i for i, e in enumerate(entries) if e.head_kind == kind]
            sel = torch.tensor(rows)
            features[sel] = READOUTS[kind](hidden[sel], batch["input_ids"][sel], batch["attention_mask"][sel],
                                           self.tokenizer.mask_token_id)
        tid = torch.tensor([e.index for e in entries])
        logits = torch.einsum("bch,bh->bc", self.head_weight[tid], features) + self.head_bias[tid]
        return [logits[i, :e.num_labels] for i, e in enumerate(entries)]

    def predict(self, rows: Sequence[tuple[str, tuple[str, ...]]], batch_size: int = 64) -> list[dict[str, Any]]:
        """One record per (task, texts) row, in order: `task`, `label`, `score` (the predicted class's
        probability; the value for regression) and, for classification, `probs` (the task's classes in
        order). Rows of different tasks are batched together, `batch_size` rows per batch."""
        items = self.encode_rows(rows)
        records: list[dict[str, Any]] = []
        for chunk in batches(items, range(len(items)), batch_size):
            for item, logit in zip(chunk, self.logits(chunk)):
                records.append(self.record(self.tasks[item["task"]], logit))
        return records

    @staticmethod
    def record(entry: TaskEntry, logit: torch.Tensor) -> dict[str, Any]:
        """The output record of one row (the same fields as serving.inference.predict_rows, plus `task`)."""
        if entry.is_regression:
            value = float(logit[0])
            return {"task": entry.name, "label": value, "score": value}
        probs = logit.float().softmax(-1)
        i = int(probs.argmax())
        names = entry.label_names
        return {"task": entry.name, "label": names[i] if i < len(names) else str(i), "score": float(probs[i]),
                "probs": probs.tolist()}

    def describe(self) -> dict[str, Any]:
        """The base model and every task (GET /tasks)."""
        return {"base_model": self.base_model.get("name"), "tasks": [e.describe() for e in self.tasks.values()]}


def parse_lines(lines: Sequence[str], model: MultiTaskModel) -> list[tuple[str, tuple[str, ...]]]:
    """Input lines `NAME<TAB>text` (pairs: `NAME<TAB>text1<TAB>text2`) -> (task, texts) rows; blank lines
    are skipped; an unknown task or a wrong number of fields is a JrftError naming the line."""
    rows = []
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        task, sep, rest = line.partition("\t")
        if not sep:
            raise JrftError(f"input line {n}: expected 'NAME<TAB>text' (pairs: 'NAME<TAB>text1<TAB>text2'), with NAME "
                            f"one of {', '.join(model.tasks)}")
        texts = tuple(rest.split("\t"))
        model.check_row(task, texts, f"input line {n}: ")
        rows.append((task, texts))
    return rows

