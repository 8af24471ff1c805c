"""Interrupt and resume: stop signals, and the run dir's checkpoint.pt.

A signal handler only sets a flag; the training loop polls it at step boundaries, saves a
checkpoint there (a consistent state) and raises `TrainingInterrupted`. The checkpoint holds
plain dicts of tensors and python values, so it loads with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import torch

from jrft_cli.core.errors import JrftError
from jrft_cli.core.files import CHECKPOINT_FILE, atomic_write  # noqa: F401 (the checkpoint's name in a run dir)

CHECKPOINT_VERSION = 1
# EX_TEMPFAIL: "try again later" -- a run stopped by a signal, resumable from its checkpoint.
INTERRUPTED_EXIT_CODE = 75
# SIGUSR2: what submitit (1.5) asks SLURM to send before a timeout and on preemption.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary on a signal; the checkpoint (if any) is written."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.hand_on: Callable[[], None] = lambda: None   # set by whoever installed the handlers
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}{where}")


class TrainingFailed(JrftError):
    """Training cannot go on (a non-finite loss, weights or metrics). The recipe records it in
    results.json (status "failed", the error, no metrics) and the run exits non-zero."""

    def __init__(self, message: str, step: int | None = None) -> None:
        self.step = step
        super().__init__(message)


class StopSignals:
    """Context manager: while active, SIGTERM/SIGINT/SIGUSR2 set `received` instead of killing.

    `previous[signum]` keeps the handler that was installed before (e.g. submitit's requeue
    handler), so the caller can hand the signal on once the checkpoint is safe.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def __call__(self) -> int | None:
        """The first stop signal received so far (None if none): the loop's poll."""
        return self.received

    def __enter__(self) -> "StopSignals":
        import threading

        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            for s in self.signals:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    def hand_on(self) -> None:
        """Call the handler that was installed before ours for the received signal, if it was a
        python callable (submitit: checkpoint the submission, requeue the job, exit)."""
        if self.received is None:
            return
        prev = self.previous.get(self.received)
        if callable(prev):
            prev(self.received, None)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` atomically (temp file in the same dir + rename): a kill mid-write
    leaves the previous checkpoint intact."""
    atomic_write(path, lambda f: torch.save({"version": CHECKPOINT_VERSION, **state}, f), binary=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain python values only). An
    unreadable one (truncated, not a jrft checkpoint, another version) is one JrftError saying how to
    restart: delete the file, and the relaunch trains the run from scratch."""
    path = Path(path)
    restart = f"delete {path} to train this run from scratch"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise JrftError(f"{path}: the checkpoint is unreadable ({reason[:160]}); {restart}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise JrftError(f"{path}: checkpoint version {version!r}, this jrft reads {CHECKPOINT_VERSION}; {restart}")
    return state


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, as tensors and plain values."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
