"""The task artifact: `adapter_config.json` + `adapter.safetensors`, written and read back.

For jr / jr_warp / linear the pair holds only z and the head (a few KB); the frozen projections are
regenerated from the projection seed, the backbone from the base model id. Other methods save every
parameter that trained (full: all weights). Loading rebuilds the classifier with the same method and
options (through the registry) and loads the state with strict key checking.

Two writers share the format: a training run (`save_artifact`, with its task and labels) and the
library's `save_adapter` (an adapter alone, for `load_adapter` onto a bare backbone).
"""
from __future__ import annotations

import importlib.metadata
import json
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
from jrft_cli.core.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_FILE, write_json_atomic
from jrft_cli.core.registry import method_spec, spec_for_options

FORMAT = "jrft-adapter"
FORMAT_VERSION = 1


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
    head = model.head_kind
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
    }


def save_artifact(model: nn.Module, run_dir: Path, info: dict[str, Any]) -> None:
    """Write adapter.safetensors (the trained parameters) and adapter_config.json (`info`) into `run_dir`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(run_dir / ADAPTER_WEIGHTS))
    write_json_atomic(run_dir / ADAPTER_CONFIG, info)


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
    """adapter_config.json, checked for the format this jrft reads."""
    path = Path(run_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise JrftError(f"{str(run_dir)!r} is not a jrft run dir: no {ADAPTER_CONFIG} "
                        f"(train with run.save_trainable=true, or pass an export dir)")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise JrftError(f"{path}: format {info.get('format')!r} version {info.get('format_version')!r} is not "
                        f"readable; this jrft reads {FORMAT!r} version {FORMAT_VERSION}")
    return info


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


def _load_state(model: nn.Module, weights: Path, method: str, keys: set[str] | None = None) -> None:
    """Copy the tensors of `weights` into `model`'s trainable parameters (all of them must be there)."""
    state = load_file(str(weights))
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
    _load_state(model, weights, info["method"])
    model.eval()
    config_path = run_dir / CONFIG_FILE
    run_config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    return LoadedRun(model, tokenizer, info, run_config)


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
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({"adapter.z": adapter.z.detach().cpu().contiguous()}, str(path / ADAPTER_WEIGHTS))
    write_json_atomic(path / ADAPTER_CONFIG, info)


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
    _load_state(holder, path / ADAPTER_WEIGHTS, info["method"], keys={"adapter.z"})
    return adapter


def _adapter_spec(adapter: nn.Module):
    config = getattr(adapter, "config", None)
    if config is None:
        raise TypeError(f"save_adapter takes an adapter made by jrft_cli.core.attach, not {type(adapter).__name__}")
    return spec_for_options(config), config
