"""`jrft export`: turn a run's artifact into a directory that plain transformers loads.

- jr (SLaSh): the shifts s_l = z W_l are folded into the backbone's biases (BERT: output ->
  `output.dense.bias`, intermediate -> `intermediate.dense.bias`, attention ->
  `attention.output.LayerNorm.bias`; other families: core.families), so the backbone is the base
  architecture with changed bias values: no hooks, no extra cost at inference. Where the family has
  no bias there, the config option that adds one is set when the family has it (Llama's `mlp_bias`:
  the other new biases are zero); otherwise the export is remote code that adds the bias itself.
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
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jrft_cli import __version__
from jrft_cli.core import families
from jrft_cli.core.artifact import LoadedRun, file_sha256, load_artifact, probe_batch
from jrft_cli.core.backbone import SequenceClassifier
from jrft_cli.core.errors import JrftError
from jrft_cli.core.files import (ADAPTER_CONFIG, CHECKPOINT_FILE, METRICS_FILE, RESULTS_FILE, read_json_file,
                                 write_json_atomic)
from jrft_cli.core.heads import TOKEN_HEADS
from jrft_cli.core.registry import method_spec
from jrft_cli.tasks.kinds import kind_of

EXPORT_NOTE = "jrft_export.json"
MODELING_FILE = "modeling_jrft.py"
REMOTE_CLASS = "JrftClassifier"
TEMPLATE = Path(__file__).parent / "export_template" / MODELING_FILE
# Largest |logit difference| tolerated between the run's model and its export, checked at export time.
VERIFY_TOL = 1e-4


@dataclass
class BiasFix:
    """What folding needed where the shift position had no bias: a config flag set (with the modules
    it gives biases), or bias paths (inside each block) that the remote code adds."""
    config_flags: dict[str, bool]
    extra_biases: list[str]


def _add_zero_bias(module: nn.Module) -> None:
    if getattr(module, "bias", None) is None:
        weight = module.weight
        module.bias = nn.Parameter(torch.zeros(families.out_features(module), dtype=weight.dtype, device=weight.device),
                                   requires_grad=False)


def add_shift_biases(model: SequenceClassifier) -> BiasFix:
    """Give the shift targets of the model's SLaSh adapter a (zero) bias where they have none, so the
    shifts fold: by the family's config option when there is one (every module it covers gets a zero
    bias, as a model built with the option would have), else on the targets alone (in place)."""
    adapter = model.adapter
    if all(getattr(t, "bias", None) is not None for t in adapter._targets):
        return BiasFix({}, [])
    backbone = model.backbone
    layers = families.find_layers(backbone)
    option = families.bias_option(backbone, adapter.position)
    if option is not None:
        flag, paths = option
        for layer in layers:
            for path in paths:
                _add_zero_bias(layer.get_submodule(path))
        setattr(backbone.config, flag, True)
        return BiasFix({flag: True}, [])
    for target in adapter._targets:
        _add_zero_bias(target)
    return BiasFix({}, [families.locate_path(layers[0], adapter.position, families.family_of(backbone))])


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
                  modules: nn.Module | None, extra_biases: list[str]) -> nn.Module:
    """The remote-code classifier (from the template) holding `model`'s weights."""
    from jrft_cli.serving.export_template.modeling_jrft import JrftClassifier

    config = copy.deepcopy(model.hf.config if model.head_kind == "cls" else model.backbone.config)
    config.num_labels = info["num_labels"]
    for k, v in _label_config(info).items():
        setattr(config, k, v)
    config.jrft_head = model.head_kind
    config.jrft_mask_token_id = info["mask_token_id"]
    config.jrft_layers = families.layers_path(model.backbone)
    config.jrft_extra_biases = list(extra_biases)
    config.jrft_prompt_rows = 0 if prompt is None else int(prompt.vectors.shape[0])
    config.jrft_prompt_inserted = 0 if prompt is None else prompt.inserted
    config.jrft_prompt_layer_shifts = bool(prompt and prompt.layer_shifts)
    config.jrft_prompt_insert = families.family_of(model.backbone).warp_insert
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
    return probe_batch(tokenizer, info["mask_format"], kind_of(info["task_config"]).is_pair(info["task_config"]))


def check_out_dir(run_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """`--out` may be a new or empty directory, or with `overwrite` an earlier export; never the run
    being exported, a directory above it, or one holding run dirs (their results would be deleted)."""
    run_r, out_r = Path(run_dir).resolve(), Path(out_dir).resolve()
    if out_r == run_r or out_r in run_r.parents:
        raise JrftError(f"--out {str(out_dir)!r} holds the run being exported ({run_dir}); choose a directory outside it")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise JrftError(f"--out {str(out_dir)!r} is a file; choose a directory")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise JrftError(f"--out {str(out_dir)!r} exists and is not empty; choose a new directory or pass --overwrite")
    if not is_export_dir(out_dir):
        raise JrftError(f"--out {str(out_dir)!r} is not an earlier export (no {EXPORT_NOTE}); --overwrite only replaces "
                        f"an export dir, so choose a new directory")
    runs = [p for p in out_dir.rglob("*") if p.name in RUN_FILES]
    if runs:
        raise JrftError(f"--out {str(out_dir)!r} holds run files ({runs[0]}); --overwrite would delete them, so choose "
                        f"a new directory")


# Files of a run dir: an export dir never holds them, so a directory that does is never overwritten.
RUN_FILES = (ADAPTER_CONFIG, RESULTS_FILE, CHECKPOINT_FILE, METRICS_FILE)


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
    """Export the run in `run_dir` into `out_dir` (see the module docstring). The export is written
    next to `out_dir` and moved into place when complete, so a failure leaves an earlier export intact."""
    out_dir = Path(out_dir)
    check_out_dir(Path(run_dir), out_dir, overwrite)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    loaded: LoadedRun = load_artifact(Path(run_dir))
    info, reference = loaded.info, loaded.model
    model = copy.deepcopy(reference)
    spec = method_spec(info["method"])
    prompt, modules = None, None
    fix = BiasFix({}, [])
    if spec.export == "fold":
        fix = add_shift_biases(model)
        fold_shifts(model)
    elif spec.export == "prompt":
        prompt = take_prompt(model)
    elif spec.export == "modules":
        modules = take_modules(model)
    elif spec.export == "merge":
        spec.merge(model.backbone)
    # our own heads, a prompt, adapters or biases the family cannot declare need modeling_jrft.py
    # (the per-token head alone does not)
    plain_tokens = None
    if model.head_kind in TOKEN_HEADS and prompt is None and modules is None and not fix.extra_biases:
        plain_tokens = _build_plain_tokens(model, info)
    remote = plain_tokens is None and (model.head_kind != "cls" or prompt is not None or modules is not None
                                       or bool(fix.extra_biases))
    if plain_tokens is not None:
        exported = plain_tokens
    elif remote:
        exported = _build_remote(model, info, prompt, modules, fix.extra_biases)
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

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.export-"))
    try:
        exported.save_pretrained(str(staging))
        if remote:
            shutil.copyfile(TEMPLATE, staging / MODELING_FILE)
        loaded.tokenizer.save_pretrained(str(staging))
        note = export_note(info, remote, Path(run_dir), fix)
        write_json_atomic(staging / EXPORT_NOTE, note)
        (staging / "README.md").write_text(readme(note))
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out_dir, remote, diff)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` (absent, empty, or an earlier export checked by `check_out_dir`) by `staging`."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_note(info: dict[str, Any], remote: bool, run_dir: Path, fix: BiasFix | None = None) -> dict[str, Any]:
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
    elif info["head"] == "last":
        fmt = ("plain tokenizer input (one sentence, or a pair as the tokenizer's two sequences); the head reads "
               "the last token the attention mask keeps")
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
        "base_model": _portable_base_model(info["base_model"]),
        "d": info.get("d"),
        "position": info.get("position"),
        "projection": info.get("projection"),
        "seed": info["seed"],
        "bias_config_flags": fix.config_flags if fix else {},   # set so the folded shifts have biases to live in
        "bias_added_by_remote_code": fix.extra_biases if fix else [],
        "source_run": run_dir.resolve().name,   # its name only: no path of this machine goes into an export
        "jrft_version": __version__,
    }


def _portable_base_model(base: dict[str, Any]) -> dict[str, Any]:
    """The base model record without a local path: a model loaded from a directory keeps its name only."""
    name = base.get("name")
    if isinstance(name, str) and os.path.isabs(os.path.expanduser(name)):
        return {**base, "name": Path(name).name}
    return base


AUTO_CLASSES = ("AutoModelForSequenceClassification", "AutoModelForTokenClassification")


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


def read_export_note(path: Path) -> dict[str, Any]:
    """jrft_export.json of an export dir, checked; a corrupt one is one JrftError naming it."""
    note_path = Path(path) / EXPORT_NOTE
    note = read_json_file(note_path, EXPORT_NOTE, REEXPORT)
    missing = [k for k in NOTE_KEYS if not isinstance(note, dict) or k not in note]
    if missing:
        raise JrftError(f"{note_path}: {EXPORT_NOTE} lacks {missing[0]!r}; {REEXPORT}")
    if note.get("format") != "jrft-export" or not isinstance(note["remote_code"], bool):
        raise JrftError(f"{note_path}: not a jrft export note (format {note.get('format')!r}); {REEXPORT}")
    return note


NOTE_KEYS = ("format", "remote_code", "mask_format", "max_length", "task_config", "num_labels", "is_regression")
REEXPORT = "export the run again (jrft export RUN_DIR --out DIR)"


def load_export(path: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer, note) of an export dir. jrft runs only the code it ships: a remote-code export
    loads through jrft's own copy of the modeling class, and only when the dir's `modeling_jrft.py` is
    byte-identical to it (an edited one is refused; it would run for plain transformers users with
    trust_remote_code=True); a plain checkpoint loads with trust_remote_code=False."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = Path(path)
    note = read_export_note(path)
    if note["remote_code"]:
        modeling = path / MODELING_FILE
        if not modeling.is_file() or file_sha256(modeling) != file_sha256(TEMPLATE):
            raise JrftError(f"{modeling} is not the modeling code this jrft ships (it was edited, replaced or removed); "
                            f"jrft runs no code from an export dir: {REEXPORT}")
    try:
        if note["remote_code"]:
            from jrft_cli.serving.export_template.modeling_jrft import JrftClassifier

            config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
            model = JrftClassifier.from_pretrained(str(path), config=config)
        else:
            auto = note.get("auto_class", "AutoModelForSequenceClassification")
            if auto not in AUTO_CLASSES:
                raise JrftError(f"{path / EXPORT_NOTE}: auto_class {auto!r} is not one of {', '.join(AUTO_CLASSES)}; "
                                f"{REEXPORT}")
            model = getattr(transformers, auto).from_pretrained(str(path), trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:   # transformers and safetensors raise many types for a damaged checkpoint
        reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise JrftError(f"export dir {str(path)!r} cannot be loaded ({type(e).__name__}: {reason[:160]}); "
                        f"{REEXPORT}") from None
    return model.eval(), tokenizer, note
