"""Run-dir files: the resolved config, metrics.jsonl, the trained parameters, results.json.

results.json is written last and atomically (temp file + rename), so a crashed or interrupted run
never leaves one: its presence with status "completed" means the run finished.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch
from safetensors.torch import save_file

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_FILE = "checkpoint.pt"


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write a file so readers see either the old one or the complete new one, never a partial one
    (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (see `atomic_write`)."""
    def write(f: IO) -> None:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
    atomic_write(path, write)


def _json_default(o: Any) -> Any:
    if isinstance(o, (torch.Tensor,)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl, flushed at once (a crash keeps what was logged)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE

    def __call__(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that trained, by name (never the frozen backbone, never projection buffers)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: torch.nn.Module, run_dir: Path, config: dict[str, Any]) -> None:
    """Write the trained parameters and what rebuilds the model around them."""
    run_dir = Path(run_dir)
    save_file(trainable_state(model), str(run_dir / ADAPTER_WEIGHTS))
    write_json_atomic(run_dir / ADAPTER_CONFIG, config)


def read_results(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())
