"""The task artifact: `adapter_config.json` + `adapter.safetensors`, written and read back.

For jr / jr_warp / linear the pair holds only z and the head (a few KB); the frozen projections are
regenerated from the projection seed, the backbone from the base model id. Other methods save every
parameter that trained (full: all weights). Loading rebuilds the classifier with the same method and
options (through the registry) and loads the state with strict key checking.

Two writers share the format: a training run (`save_artifact`, with its task and labels) and the
library's `save_adapter` (an adapter alone, for `load_adapter` onto a bare backbone).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from jrft_cli import __version__
from jrft_cli.core.backbone import SequenceClassifier, count_parameters, load_tokenizer, model_id
from jrft_cli.core.errors import JrftError
from jrft_cli.core.heads import MASK_FORMAT_HEADS
from jrft_cli.core.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_FILE, read_json_file, write_json_atomic
from jrft_cli.core.options import option_names
from jrft_cli.core.registry import method_spec, spec_for_options

FORMAT = "jrft-adapter"
FORMAT_VERSION = 1
# adapter_config.json's record of adapter.safetensors' SHA-256, checked on load (absent in older artifacts).
WEIGHTS_CHECKSUM = "weights_sha256"


def _package_version(name: str) -> str | None:
    if not name.startswith("pkg:"):
        return None
    try:
        return importlib.metadata.version(name[4:].replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that trained, by name (never the frozen backbone, never projection buffers)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def run_artifact_info(model: SequenceClassifier, tokenizer: Any, *, method_config: dict[str, Any],
                      model_name: str, revision: str | None, task: dict[str, Any], num_labels: int,
                      max_length: int, seed: int) -> dict[str, Any]:
    """adapter_config.json of a training run: the artifact's explicit schema. `method_config` is the
    run's method settings as configured (recorded; the typed options are rebuilt from it on load)."""
    spec, options = method_spec(model.method), model.method_options
    opts = spec.options_dict(options)
    trainable, _ = count_parameters(model)
    head = model.head_kind   # as resolved for the model (decoders: the mask head reads the last token)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": spec.name,
        "d": opts.get("d"),
        "position": opts.get("position"),
        "projection": opts.get("projection"),
        "projection_seed": opts.get("projection_seed"),
        "z_init": opts.get("z_init"),
        "head": head,
        "mask_format": head in MASK_FORMAT_HEADS,
        "mask_token": tokenizer.mask_token,
        "mask_token_id": tokenizer.mask_token_id,
        "method_config": method_config,
        "base_model": {
            "name": model_name,
            "id": model_id(model_name),
            "revision": revision,
            "commit": getattr(model.config, "_commit_hash", None),   # the Hub commit when resolved from the Hub
            "package_version": _package_version(model_name),
            "model_type": model.config.model_type,
        },
        "task": task["name"],
        "task_config": task,
        "num_labels": num_labels,
        "is_regression": bool(task["is_regression"]),
        "label_names": task.get("label_names"),
        "max_length": max_length,
        "seed": seed,
        "trainable_params": trainable,
        "small_state": spec.small_state,
        "jrft_version": __version__,
        PROBE_KEY: probe_logits(model, probe_batch(tokenizer, head in MASK_FORMAT_HEADS, is_pair_task(task))),
    }


# adapter_config.json's record of the trained model's logits on two fixed probe inputs: a model rebuilt
# from the artifact must reproduce them, so an edit that changes the model (both copies of a projection
# seed, another base model) is refused instead of silently predicting something else.
PROBE_KEY = "probe_logits"
PROBE_TOL = 1e-3   # absolute and relative, on logits: far above float noise across devices, far below any real change


def is_pair_task(task: dict[str, Any]) -> bool:
    """True for a sentence-pair task config (GLUE's under `tsv`, a custom task's at the top; token
    tasks read one sentence)."""
    fields = (task.get("tsv") or task).get("text_fields")
    return fields is not None and len(fields) > 1


def probe_batch(tokenizer: Any, mask_format: bool, pair: bool) -> dict[str, torch.Tensor]:
    """Two fixed inputs in the run's input format (the mask token appended for mask heads; pairs for pair tasks)."""
    mask = f" {tokenizer.mask_token}" if mask_format else ""
    firsts = ["a short probe sentence" + mask, "another, somewhat longer probe sentence for the check" + mask]
    seconds = ["and its second part", "second"] if pair else None
    return dict(tokenizer(firsts, seconds, padding=True, return_tensors="pt"))


@torch.no_grad()
def probe_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[list[float]]:
    """The model's logits on `batch` (eval mode, fp32), as plain lists."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = model(**{k: v.to(device) for k, v in batch.items()})
    model.train(was_training)
    return logits.float().cpu().tolist()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_pair(path: Path, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """adapter.safetensors, then adapter_config.json recording the weights file's checksum."""
    path.mkdir(parents=True, exist_ok=True)
    bad = [n for n, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise JrftError(f"{path}: refusing to save non-finite weights ({', '.join(bad[:3])})")
    weights = path / ADAPTER_WEIGHTS
    save_file(state, str(weights))
    write_json_atomic(path / ADAPTER_CONFIG, {**info, WEIGHTS_CHECKSUM: file_sha256(weights)})


def save_artifact(model: nn.Module, run_dir: Path, info: dict[str, Any]) -> None:
    """Write adapter.safetensors (the trained parameters) and adapter_config.json (`info`, plus the
    weights file's SHA-256) into `run_dir`."""
    _write_pair(Path(run_dir), trainable_state(model), info)


@dataclass
class LoadedRun:
    """A run's model rebuilt from its artifact, with what evaluating or exporting it needs."""
    model: SequenceClassifier
    tokenizer: Any
    info: dict[str, Any]                  # adapter_config.json
    run_config: dict[str, Any] | None     # config.yaml (the resolved training config), when present


def is_run_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_adapter_config(run_dir: Path) -> dict[str, Any]:
    """adapter_config.json, checked for the format this jrft reads and for agreement between the
    fields it records twice; a corrupt or edited file is one JrftError naming it."""
    path = Path(run_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise JrftError(f"{str(run_dir)!r} is not a jrft run dir: no {ADAPTER_CONFIG} "
                        f"(train with run.save_trainable=true, or pass an export dir)")
    info = read_json_file(path, ADAPTER_CONFIG, RESTORE)
    if not isinstance(info, dict):
        raise JrftError(f"{path}: {ADAPTER_CONFIG} is not a JSON object; {RESTORE}")
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise JrftError(f"{path}: format {info.get('format')!r} version {info.get('format_version')!r} is not "
                        f"readable; this jrft reads {FORMAT!r} version {FORMAT_VERSION}")
    _check_agreement(path, info)
    return info


# What to do about a damaged artifact file.
RESTORE = "restore the run dir's files from a copy, or train the run again"


def _check_agreement(path: Path, info: dict[str, Any]) -> None:
    """Fields adapter_config.json records twice (top level and method_config / task_config) must agree:
    an edit to one copy (e.g. method_config.projection_seed) would silently change the model."""
    required = ("method", "method_config") + (RUN_KEYS if "task_config" in info else ())
    missing = [k for k in required if k not in info]
    if missing:
        raise JrftError(f"{path}: {ADAPTER_CONFIG} lacks {missing[0]!r}; {RESTORE}")
    method_config = info["method_config"]
    if not isinstance(method_config, dict):
        raise JrftError(f"{path}: method_config is not a mapping; {RESTORE}")
    pairs = [("method", info["method"], "method_config.name", method_config.get("name", info["method"]))]
    options = spec = None
    try:
        spec = method_spec(info["method"])
        options = spec.options_dict(_options_of(info))
    except JrftError as e:
        raise JrftError(f"{path}: {e}") from None
    for key in OPTION_COPIES:
        if info.get(key) is not None or key in info and key in options:
            pairs.append((key, info.get(key), f"method_config.{key}", options.get(key)))
    if "task_config" in info:
        task = info["task_config"]
        if not isinstance(task, dict):
            raise JrftError(f"{path}: task_config is not a mapping; {RESTORE}")
        regression = task.get("is_regression")
        num_labels = 1 if regression else len(task.get("labels") or [])
        head = method_config.get("head", "mask")
        # the head a run records is the configured one, or what it becomes: per-token on token tasks,
        # the last token on decoders (core.backbone.resolve_head)
        becomes = {head, "tokens"} | ({"last"} if head in (*MASK_FORMAT_HEADS, "first") else set())
        recorded = info["head"] if info["head"] in becomes else head
        pairs += [
            ("task", info["task"], "task_config.name", task.get("name")),
            ("is_regression", info["is_regression"], "task_config.is_regression", regression),
            ("num_labels", info["num_labels"], "the task's label count", num_labels),
            ("label_names", info.get("label_names"), "task_config.label_names", task.get("label_names")),
            ("head", info["head"], "method_config.head", recorded),
            ("mask_format", info["mask_format"], "the head's input format", recorded in MASK_FORMAT_HEADS),
        ]
    for key, top, other, copy in pairs:
        if top != copy:
            raise JrftError(f"{path}: {ADAPTER_CONFIG} disagrees with itself: {key}={top!r} but {other}={copy!r} "
                            f"(the file was edited or damaged); {RESTORE}")


# Top-level copies of method options in a run's adapter_config.json.
OPTION_COPIES = ("d", "position", "projection", "projection_seed", "z_init")
# What a run artifact (as opposed to a library adapter) must hold.
RUN_KEYS = ("task", "task_config", "num_labels", "is_regression", "head", "mask_format", "mask_token_id",
            "base_model", "max_length", "seed")


def _options_of(info: dict[str, Any]) -> Any:
    spec = method_spec(info["method"])
    values = dict(info["method_config"])
    if info.get("prompt_token_id") is not None:
        # written by jrft before JR-WARP's prompt moved after the embeddings (it was an input id then,
        # shifting BERT-style positions): the trained z belongs to another model
        raise JrftError(f"{ADAPTER_CONFIG}: this {info['method']} run was trained with the prompt as a prepended "
                        "input token (jrft before JR-WARP inserted it after the embeddings); retrain it with this jrft")
    try:
        return spec.parse_options(values)
    except (TypeError, ValueError) as e:
        raise JrftError(f"{ADAPTER_CONFIG}: method_config is not valid for {info['method']!r} ({e})") from None


def _load_state(model: nn.Module, weights: Path, method: str, keys: set[str] | None = None,
                checksum: str | None = None) -> None:
    """Copy the tensors of `weights` into `model`'s trainable parameters (all of them must be there);
    the file must match `checksum` (adapter_config.json's record, when it has one) and hold finite values."""
    try:
        state = load_file(str(weights))
    except Exception as e:   # safetensors raises its own SafetensorError (and OSError) for a damaged file
        reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise JrftError(f"{weights} is not a readable safetensors file ({reason[:160]}); {RESTORE}") from None
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if keys is not None:
        state = {k: v for k, v in state.items() if k in keys}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise JrftError(f"{weights}: state does not match method {method!r}: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    params = dict(model.named_parameters())
    for name, value in state.items():
        if params[name].shape != value.shape:
            raise JrftError(f"{weights}: {name} has shape {tuple(value.shape)}, the model expects "
                            f"{tuple(params[name].shape)}")
    if checksum is not None and file_sha256(weights) != checksum:
        raise JrftError(f"{weights}: its SHA-256 differs from the one {ADAPTER_CONFIG} records (the file changed "
                        f"since it was saved); {RESTORE}")
    bad = [n for n, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise JrftError(f"{weights}: {', '.join(bad[:3])} hold NaN or infinite values; such weights give no "
                        f"meaningful output (train the run again)")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def load_artifact(run_dir: Path) -> LoadedRun:
    """Rebuild the run's model (same backbone, method, projections) and load its trained state."""
    import yaml
    from transformers.utils import logging as hf_logging

    from jrft_cli.core.build import build_classifier

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    run_dir = Path(run_dir)
    info = read_adapter_config(run_dir)
    weights = run_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise JrftError(f"{str(run_dir)!r}: {ADAPTER_CONFIG} is there but {ADAPTER_WEIGHTS} is missing")
    base = info["base_model"]
    tokenizer = load_tokenizer(base["name"], base.get("revision"))
    if info["mask_format"] and tokenizer.mask_token_id != info["mask_token_id"]:
        raise JrftError(f"tokenizer of {base['name']!r}: mask token id {tokenizer.mask_token_id} differs from the "
                        f"run's {info['mask_token_id']}; the base model changed since training")
    method_config = info["method_config"]
    options = _options_of(info)
    model = build_classifier(base["name"], info["num_labels"], info["method"], options, tokenizer=tokenizer,
                             seed=info["seed"], head=info.get("head") or method_config.get("head", "mask"),
                             dropout=method_config.get("dropout"), revision=base.get("revision"))
    _load_state(model, weights, info["method"], checksum=info.get(WEIGHTS_CHECKSUM))
    model.eval()
    if info.get(PROBE_KEY) is not None:
        _check_probe(run_dir, model, tokenizer, info)
    config_path = run_dir / CONFIG_FILE
    run_config = None
    if config_path.is_file():
        try:
            run_config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            run_config = None   # only its data.dir is read, as a default; the artifact itself is complete
        if not isinstance(run_config, dict):
            run_config = None
    return LoadedRun(model, tokenizer, info, run_config)


def _check_probe(run_dir: Path, model: nn.Module, tokenizer: Any, info: dict[str, Any]) -> None:
    want = torch.tensor(info[PROBE_KEY], dtype=torch.float32)
    got = torch.tensor(probe_logits(model, probe_batch(tokenizer, info["mask_format"], is_pair_task(info["task_config"]))))
    if want.shape != got.shape or not torch.allclose(got, want, atol=PROBE_TOL, rtol=PROBE_TOL):
        diff = float((got - want).abs().max()) if want.shape == got.shape else float("inf")
        raise JrftError(f"{Path(run_dir) / ADAPTER_CONFIG}: the model rebuilt from this artifact does not reproduce "
                        f"the run's outputs (max |logit diff| {diff:.3g} > {PROBE_TOL}): the file's settings or the "
                        f"base model {info['base_model']['name']!r} changed since training; {RESTORE}")


# ---------------------------------------------------------------- the library's adapter files

def save_adapter(adapter: nn.Module, path: Path, backbone: nn.Module | None = None) -> None:
    """Write a SLaSh / JR-WARP adapter (its z and options; the projections regenerate from the seed)
    in the artifact format. `backbone` (optional) records the base model's name and type."""
    spec, options = _adapter_spec(adapter)
    config = getattr(backbone, "config", None)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": spec.name,
        "method_config": {"name": spec.name, **spec.options_dict(options)},
        "base_model": {"name": getattr(config, "_name_or_path", None),
                       "model_type": getattr(config, "model_type", None)},
        "small_state": True,
        "jrft_version": __version__,
    }
    _write_pair(Path(path), {"adapter.z": adapter.z.detach().cpu().contiguous()}, info)


def load_adapter(backbone: nn.Module, path: Path) -> nn.Module:
    """Attach the adapter saved in `path` (by `save_adapter` or a `jrft train` run of jr / jr_warp) to
    `backbone` and load its z. The backbone is frozen; the adapter is returned."""
    path = Path(path)
    info = read_adapter_config(path)
    spec = method_spec(info["method"])
    if spec.attach is None:
        raise JrftError(f"{path}: method {info['method']!r} is not an adapter method; use load_artifact")
    adapter = spec.attach(backbone, _options_of(info))
    holder = nn.Module()
    holder.adapter = adapter
    _load_state(holder, path / ADAPTER_WEIGHTS, info["method"], keys={"adapter.z"},
                checksum=info.get(WEIGHTS_CHECKSUM))
    return adapter


def _adapter_spec(adapter: nn.Module):
    config = getattr(adapter, "config", None)
    if config is None:
        raise TypeError(f"save_adapter takes an adapter made by jrft_cli.core.attach, not {type(adapter).__name__}")
    return spec_for_options(config), config
