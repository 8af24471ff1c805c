"""Run-dir files: the resolved config, metrics.jsonl, the trained parameters, results.json.

results.json is written last and atomically (temp file + rename), so a crashed or interrupted run
never leaves one: its presence with status "completed" means the run finished.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable

import torch
from safetensors.torch import save_file

from jrft_cli.core.errors import JrftError

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".jrft.lock"


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


def read_json_file(path: Path, what: str, advice: str) -> Any:
    """A JSON file jrft wrote, or one JrftError naming the file, what is wrong and `advice` (what to
    do) when it is unreadable, empty or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError("the file is empty")
        return json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:   # JSONDecodeError is a ValueError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise JrftError(f"{path}: {what} is unreadable ({reason}); {advice}") from None


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """results.json of a run dir (None without one); a corrupt one is a JrftError saying what to do."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return None
    results = read_json_file(path, RESULTS_FILE, "delete it to train this run dir again")
    if not isinstance(results, dict):
        raise JrftError(f"{path}: {RESULTS_FILE} is not a JSON object; delete it to train this run dir again")
    return results


class RunDirBusy(JrftError):
    """Another live process holds the run dir's lock (see `RunDirLock`)."""


class RunDirLock:
    """One writer per run dir: an exclusive `flock` on `<run dir>/.jrft.lock`, held for the run's life.

    The kernel drops the lock when its process ends, however it ends (kill -9 included), so a lock
    left by a dead process never blocks a relaunch; the file's text (pid, host, start time) only
    names the holder in the error. The file stays in the run dir (removing it would race a waiter).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunDirLock":
        """Take the lock (creating the run dir); RunDirBusy when another live process holds it."""
        lock = cls(run_dir)
        if not lock.try_acquire():
            raise RunDirBusy(f"run dir {run_dir} is in use by another jrft process ({lock.holder()}); wait for "
                             f"it to end, or use another hydra.run.dir / hydra.sweep.dir")
        return lock

    def try_acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def record_holder(self) -> None:
        """Write who holds the lock into the file (named in a second writer's error). Called once the
        run is accepted, so a refused or skipped relaunch leaves the run dir's files untouched."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                                f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "its pid not yet recorded"
        except OSError:
            return "its pid unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor drops the flock
            self._fd = None
