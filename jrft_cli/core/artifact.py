"""The task artifact of a run: `adapter_config.json` + `adapter.safetensors`, and loading it back.

For jr / jr_warp / linear the pair holds only z and the head (a few KB); the frozen projections are
regenerated from `projection_seed`, the backbone from the base model id. Other methods save every
parameter that trained (full: all weights). Loading rebuilds the run's `SequenceClassifier` and
method exactly as `jrft train` did and loads the state with strict key checking.
"""
from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from jrft_cli import __version__
from jrft_cli.core.errors import JrftError
from jrft_cli.core.methods import SMALL_STATE_METHODS
from jrft_cli.core.backbone import SequenceClassifier, count_parameters, model_id, resolve_model_name
from jrft_cli.core.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_FILE, save_trainable

FORMAT = "jrft-adapter"
FORMAT_VERSION = 1
JR_METHODS = ("jr", "jr_warp")


def _package_version(name: str) -> str | None:
    if not name.startswith("pkg:"):
        return None
    try:
        return importlib.metadata.version(name[4:].replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def adapter_config(cfg: dict[str, Any], model: SequenceClassifier, tokenizer: Any, num_labels: int) -> dict[str, Any]:
    """The artifact's explicit schema, from the run's resolved config and its built model."""
    m, task = cfg["method"], cfg["task"]
    name = m["name"]
    jr = name in JR_METHODS
    adapter = getattr(model, "adapter", None)
    trainable, _ = count_parameters(model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": name,
        "d": m.get("d") if jr else None,
        "position": m.get("position", "output") if name == "jr" else None,
        "projection": m.get("projection", "dense") if jr else None,
        "projection_seed": int(m.get("projection_seed", cfg["seed"])) if jr else None,
        "z_init": m.get("z_init") if jr else None,
        "prompt_token_id": getattr(adapter, "prompt_token_id", None),
        "head": m.get("head", "mask"),
        "mask_format": m.get("head", "mask") == "mask",
        "mask_token": tokenizer.mask_token,
        "mask_token_id": tokenizer.mask_token_id,
        "method_config": m,
        "base_model": {
            "name": cfg["model"]["name"],
            "id": model_id(cfg["model"]["name"]),
            "revision": cfg["model"].get("revision"),
            "commit": getattr(model.config, "_commit_hash", None),   # the Hub commit when resolved from the Hub
            "package_version": _package_version(cfg["model"]["name"]),
            "model_type": model.config.model_type,
        },
        "task": task["name"],
        "task_config": task,
        "num_labels": num_labels,
        "is_regression": bool(task["is_regression"]),
        "label_names": task.get("label_names"),
        "max_length": cfg["data"]["max_length"],
        "seed": cfg["seed"],
        "trainable_params": trainable,
        "small_state": name in SMALL_STATE_METHODS,
        "jrft_version": __version__,
    }


def save_artifact(model: SequenceClassifier, run_dir: Path, cfg: dict[str, Any], tokenizer: Any,
                  num_labels: int) -> None:
    """Write adapter.safetensors (the trained parameters) and adapter_config.json into `run_dir`."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    save_trainable(model, Path(run_dir), adapter_config(cfg, model, tokenizer, num_labels))


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


def load_artifact(run_dir: Path) -> LoadedRun:
    """Rebuild the run's model (same backbone, method, projections) and load its trained state."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from jrft_cli.training.recipe import build_model

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    run_dir = Path(run_dir)
    info = read_adapter_config(run_dir)
    weights = run_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise JrftError(f"{str(run_dir)!r}: {ADAPTER_CONFIG} is there but {ADAPTER_WEIGHTS} is missing")
    base = info["base_model"]
    revision = {"revision": base["revision"]} if base.get("revision") else {}
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(base["name"]), **revision)
    if info["mask_format"] and tokenizer.mask_token_id != info["mask_token_id"]:
        raise JrftError(f"tokenizer of {base['name']!r}: mask token id {tokenizer.mask_token_id} differs from the "
                        f"run's {info['mask_token_id']}; the base model changed since training")
    cfg = {"method": info["method_config"], "seed": info["seed"],
           "model": {"name": base["name"], "revision": base.get("revision")}}
    model = build_model(cfg, tokenizer, info["num_labels"])
    if info.get("prompt_token_id") is not None and model.adapter.prompt_token_id != info["prompt_token_id"]:
        raise JrftError(f"jr_warp prompt token id {model.adapter.prompt_token_id} differs from the run's "
                        f"{info['prompt_token_id']}")
    state = load_file(str(weights))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise JrftError(f"{weights}: state does not match method {info['method']!r}: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    params = dict(model.named_parameters())
    for name, value in state.items():
        if params[name].shape != value.shape:
            raise JrftError(f"{weights}: {name} has shape {tuple(value.shape)}, the model expects "
                            f"{tuple(params[name].shape)}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    model.eval()
    config_path = run_dir / CONFIG_FILE
    run_config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    return LoadedRun(model, tokenizer, info, run_config)
