"""`jrft export`: turn a run's artifact into a directory that plain transformers loads.

- jr (SLaSh): the shifts s_l = z W_l are folded into the backbone's biases (output ->
  `output.dense.bias`, intermediate -> `intermediate.dense.bias`, attention ->
  `attention.output.LayerNorm.bias`), so the backbone is the base architecture with changed bias
  values: no hooks, no extra cost at inference.
- jr_warp / warp: the prompt vectors (JR-WARP: (L, H); WARP: (k, H)) are precomputed and stored with
  the weights; jrft's modeling code inserts them after the embeddings.
- adapters: the bottleneck adapters are stored with the weights and rebuilt by jrft's modeling code
  (an adapter cannot be folded into the backbone's weights, so there is no plain checkpoint).
- lora: the injected LoRA layers are merged into the base weights (peft's merge) and removed.
- CLS head without prompt or adapters: a plain `AutoModelForSequenceClassification` checkpoint; the
  per-token head of a token task (NER) without prompt or adapters: a plain
  `AutoModelForTokenClassification` checkpoint (its classifier is the same linear layer per token).
  Other heads (mask, first) or a prompt or adapters: the weights plus `modeling_jrft.py` (imports
  only torch and transformers), loaded with `trust_remote_code=True`.
Every export also holds the tokenizer and `jrft_export.json` (task, labels, input format).
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jrft_cli import __version__
from jrft_cli.core.artifact import LoadedRun, load_artifact
from jrft_cli.core.backbone import SequenceClassifier
from jrft_cli.core.errors import JrftError
from jrft_cli.core.files import write_json_atomic
from jrft_cli.core.heads import TOKEN_HEADS
from jrft_cli.tasks.kinds import kind_of
from jrft_cli.core.registry import method_spec

EXPORT_NOTE = "jrft_export.json"
MODELING_FILE = "modeling_jrft.py"
REMOTE_CLASS = "JrftClassifier"
TEMPLATE = Path(__file__).parent / "export_template" / MODELING_FILE
# Largest |logit difference| tolerated between the run's model and its export, checked at export time.
VERIFY_TOL = 1e-4


def fold_shifts(model: SequenceClassifier) -> None:
    """Fold a SLaSh adapter into the backbone's biases and drop it (in place)."""
    try:
        model.adapter.fold()
    except ValueError as e:
        raise JrftError(str(e)) from None
    del model.adapter


@dataclass
class Prompt:
    """A prompt adapter's vectors (rows, H) and layout: how many rows enter after the embeddings and
    whether later rows shift the inserted position at each layer (JR-WARP) or not (WARP)."""
    vectors: torch.Tensor
    inserted: int
    layer_shifts: bool


def take_prompt(model: SequenceClassifier) -> Prompt:
    """A JR-WARP / WARP adapter's precomputed prompt vectors and layout; removes its hooks."""
    adapter = model.adapter
    with torch.no_grad():
        vectors = adapter.shifts().detach().clone()
    adapter.remove()
    del model.adapter
    return Prompt(vectors, adapter.num_inserted, adapter.layer_shifts)


def take_modules(model: SequenceClassifier) -> nn.Module:
    """The method's own modules (adapters), hooks removed; they are exported beside the weights."""
    adapter = model.adapter
    adapter.remove()
    del model.adapter
    return adapter


def _label_config(info: dict[str, Any]) -> dict[str, Any]:
    names = info.get("label_names") or [f"LABEL_{i}" for i in range(info["num_labels"])]
    if kind_of(info["task_config"]).name == "regression":
        names = [info["task"]]
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _build_remote(model: SequenceClassifier, info: dict[str, Any], prompt: Prompt | None,
                  modules: nn.Module | None) -> nn.Module:
    """The remote-code classifier (from the template) holding `model`'s weights."""
    from jrft_cli.serving.export_template.modeling_jrft import JrftClassifier

    config = copy.deepcopy(model.hf.config if model.head_kind == "cls" else model.backbone.config)
    config.num_labels = info["num_labels"]
    for k, v in _label_config(info).items():
        setattr(config, k, v)
    config.jrft_head = model.head_kind
    config.jrft_mask_token_id = info["mask_token_id"]
    config.jrft_prompt_rows = 0 if prompt is None else int(prompt.vectors.shape[0])
    config.jrft_prompt_inserted = 0 if prompt is None else prompt.inserted
    config.jrft_prompt_layer_shifts = bool(prompt and prompt.layer_shifts)
    config.jrft_adapters = None if modules is None else {"size": modules.size, "non_linearity": modules.non_linearity}
    auto = "AutoModelForTokenClassification" if model.head_kind in TOKEN_HEADS else "AutoModelForSequenceClassification"
    config.auto_map = {auto: f"{MODELING_FILE[:-3]}.{REMOTE_CLASS}"}
    config.architectures = [REMOTE_CLASS]
    exported = JrftClassifier(config)
    if model.head_kind == "cls":
        state = {f"hf.{k}": v for k, v in model.hf.state_dict().items()}
    else:
        state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    if prompt is not None:
        state["jrft_prompt"] = prompt.vectors
    if modules is not None:
        state.update({f"jrft_adapters.{k.removeprefix('blocks.')}": v for k, v in modules.state_dict().items()})
    exported.load_state_dict(state, strict=True)
    return exported.eval()


@dataclass
class ExportResult:
    out_dir: Path
    remote_code: bool
    max_abs_diff: float     # run model vs export on probe inputs


def _probe_inputs(tokenizer: Any, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    mask = f" {info['mask_token']}" if info["mask_format"] else ""
    firsts = ["a short probe sentence" + mask, "another, somewhat longer probe sentence for the check" + mask]
    pair = kind_of(info["task_config"]).is_pair(info["task_config"])
    seconds = ["and its second part", "second"] if pair else None
    return dict(tokenizer(firsts, seconds, padding=True, return_tensors="pt"))


def _build_plain_tokens(model: SequenceClassifier, info: dict[str, Any]) -> nn.Module | None:
    """The family's stock `AutoModelForTokenClassification` holding a per-token-head run's weights (its
    classifier is the same one linear layer on every position), or None when the family's differs."""
    from transformers import AutoModelForTokenClassification

    config = copy.deepcopy(model.backbone.config)
    config.num_labels = info["num_labels"]
    for k, v in _label_config(info).items():
        setattr(config, k, v)
    try:
        exported = AutoModelForTokenClassification.from_config(config)
    except ValueError:   # the family has no token-classification model
        return None
    classifier = getattr(exported, "classifier", None)
    if not isinstance(classifier, nn.Linear) or classifier.weight.shape != model.head.weight.shape:
        return None
    exported.base_model.load_state_dict(model.backbone.state_dict(), strict=True)
    classifier.load_state_dict(model.head.state_dict(), strict=True)
    return exported.eval()


def export_run(run_dir: Path, out_dir: Path, *, overwrite: bool = False, verify: bool = True) -> ExportResult:
    """Export the run in `run_dir` into `out_dir` (see the module docstring)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise JrftError(f"--out {str(out_dir)!r} exists and is not empty; choose a new directory or pass --overwrite")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    loaded: LoadedRun = load_artifact(Path(run_dir))
    info, reference = loaded.info, loaded.model
    model = copy.deepcopy(reference)
    spec = method_spec(info["method"])
    prompt, modules = None, None
    if spec.export == "fold":
        fold_shifts(model)
    elif spec.export == "prompt":
        prompt = take_prompt(model)
    elif spec.export == "modules":
        modules = take_modules(model)
    elif spec.export == "merge":
        spec.merge(model.backbone)
    # our own heads, a prompt or adapters need modeling_jrft.py (the per-token head alone does not)
    plain_tokens = None
    if model.head_kind in TOKEN_HEADS and prompt is None and modules is None:
        plain_tokens = _build_plain_tokens(model, info)
    remote = plain_tokens is None and (model.head_kind != "cls" or prompt is not None or modules is not None)
    if plain_tokens is not None:
        exported = plain_tokens
    elif remote:
        exported = _build_remote(model, info, prompt, modules)
    else:
        exported = model.hf.eval()
        for k, v in _label_config(info).items():
            setattr(exported.config, k, v)
        exported.config.num_labels = info["num_labels"]

    diff = 0.0
    if verify:
        batch = _probe_inputs(loaded.tokenizer, info)
        with torch.no_grad():
            want = reference(**batch)
            got = exported(**batch).logits
        diff = float((want - got).abs().max())
        if not diff <= VERIFY_TOL:
            raise JrftError(f"export check failed: logits differ from the run's model by {diff:.3g} (> {VERIFY_TOL})")

    if out_dir.exists() and overwrite:
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exported.save_pretrained(str(out_dir))
    if remote:
        shutil.copyfile(TEMPLATE, out_dir / MODELING_FILE)
    loaded.tokenizer.save_pretrained(str(out_dir))
    note = export_note(info, remote, Path(run_dir))
    write_json_atomic(out_dir / EXPORT_NOTE, note)
    (out_dir / "README.md").write_text(readme(note))
    return ExportResult(out_dir, remote, diff)


def export_note(info: dict[str, Any], remote: bool, run_dir: Path) -> dict[str, Any]:
    """jrft_export.json: what a user (or `jrft eval`/`predict`) needs to feed the exported model."""
    kind = kind_of(info["task_config"])
    if kind.name == "tokens":
        fmt = ("one sentence as its words, each encoded with a leading space (tokenizer(words, "
               "is_split_into_words=True), RoBERTa-style tokenizers with add_prefix_space=True); logits are "
               "(batch, tokens, tags): a word's tag is read at its first sub-token")
    elif info["mask_format"]:
        fmt = (f"append the mask token {info['mask_token']!r} to the first sentence, separated by a space "
               f"(pair tasks: text1 + ' {info['mask_token']}' then text2 as the tokenizer's second sequence); "
               f"the head reads the first mask token")
    else:
        fmt = "plain tokenizer input (one sentence, or a pair as the tokenizer's two sequences)"
    return {
        "format": "jrft-export",
        "format_version": 1,
        "method": info["method"],
        "head": info["head"],
        "task_kind": kind.name,
        "auto_class": _auto_class(kind.name),
        "remote_code": remote,
        "mask_format": info["mask_format"],
        "mask_token": info["mask_token"],
        "input_format": fmt,
        "max_length": info["max_length"],
        "task": info["task"],
        "task_config": info["task_config"],
        "num_labels": info["num_labels"],
        "is_regression": info["is_regression"],
        "label_names": info["label_names"],
        "base_model": info["base_model"],
        "d": info.get("d"),
        "position": info.get("position"),
        "projection": info.get("projection"),
        "seed": info["seed"],
        "source_run": str(run_dir.resolve()),
        "jrft_version": __version__,
    }


def _auto_class(kind: str) -> str:
    return "AutoModelForTokenClassification" if kind == "tokens" else "AutoModelForSequenceClassification"


def readme(note: dict[str, Any]) -> str:
    trust = ", trust_remote_code=True" if note["remote_code"] else ""
    mask = f" {note['mask_token']}" if note["mask_format"] else ""
    auto = note.get("auto_class", "AutoModelForSequenceClassification")
    if note.get("task_kind") == "tokens":
        text = f'[["Peter", "lives", "in", "Berlin"]], is_split_into_words=True, '
    else:
        text = f'["a sentence{mask}"], '
    return f"""# jrft export: {note['task']} / {note['method']} on {note['base_model']['id']}

Load (jrft not needed):

```python
from transformers import {auto}, AutoTokenizer
model = {auto}.from_pretrained(DIR{trust}).eval()
tok = AutoTokenizer.from_pretrained(DIR)
batch = tok({text}return_tensors="pt", truncation=True, max_length={note['max_length']})
logits = model(**batch).logits
```

Input format: {note['input_format']}.
Labels: {note['label_names']}.
"""


def is_export_dir(path: Path) -> bool:
    return (Path(path) / EXPORT_NOTE).is_file()


def load_export(path: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer, note) of an export dir, loaded through transformers' Auto classes."""
    import transformers
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = Path(path)
    note = json.loads((path / EXPORT_NOTE).read_text())
    auto = getattr(transformers, note.get("auto_class", "AutoModelForSequenceClassification"))
    model = auto.from_pretrained(str(path), trust_remote_code=bool(note["remote_code"]))
    return model.eval(), AutoTokenizer.from_pretrained(str(path)), note
