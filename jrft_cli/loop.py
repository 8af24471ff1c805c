"""The training / evaluation loop: AdamW, linear warm-up and decay, gradient accumulation,
dev evaluation per epoch or every N steps, best-so-far tracking; CPU or CUDA."""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import nn

from jrft_cli.metrics import compute_metrics


@dataclass
class LoopConfig:
    epochs: float = 3
    max_steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    grad_accum: int = 1
    eval_every: int = 0
    max_grad_norm: float | None = None
    log_every: int = 10
    seed: int = 0


@dataclass
class TaskInfo:
    is_regression: bool
    metrics: Sequence[str]
    main_metric: str


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from jrft_cli.errors import JrftError
        raise JrftError("hardware.device=cuda but no CUDA device is available; use hardware=cpu or hardware=auto")
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting (None = plain fp32)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool, reduction: str = "mean") -> torch.Tensor:
    if is_regression:
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)
    return nn.functional.cross_entropy(logits.float(), labels, reduction=reduction)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on a GPU; the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a pure function of (seed, epoch), so a resumed run
    can recompute it and skip what it had done."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def batches(items: Sequence[dict], order: Sequence[int], batch_size: int) -> Iterator[list[dict]]:
    for i in range(0, len(order), batch_size):
        yield [items[j] for j in order[i:i + batch_size]]


@torch.no_grad()
def predict(model: nn.Module, data: Sequence[dict], collate: Callable, batch_size: int, device: torch.device,
            amp: torch.dtype | None = None) -> torch.Tensor:
    """Logits (N, C) for `data`, in order."""
    was_training = model.training
    model.eval()
    out = []
    for items in batches(data, range(len(data)), batch_size):
        batch = {k: v.to(device) for k, v in collate(items).items() if k != "labels"}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(model(**batch).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, data: Sequence[dict], collate: Callable, task: TaskInfo, batch_size: int,
             device: torch.device, amp: torch.dtype | None = None) -> dict[str, float]:
    """Dev metrics of `model` on `data` (GLUE metric names -> values)."""
    logits = predict(model, data, collate, batch_size, device, amp)
    labels = [it["labels"] for it in data]
    preds = logits.squeeze(-1).tolist() if task.is_regression else logits.argmax(-1).tolist()
    return compute_metrics(list(task.metrics), preds, labels)


class Trainer:
    """One training run. `run()` returns the summary that goes into results.json."""

    def __init__(self, model: nn.Module, train_data: Sequence[dict], eval_sets: dict[str, Sequence[dict]],
                 collate: Callable, task: TaskInfo, cfg: LoopConfig, device: torch.device,
                 precision: str = "fp32", logger: Logger | None = None,
                 on_metrics: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.model, self.train_data, self.eval_sets = model, train_data, eval_sets
        self.collate, self.task, self.cfg, self.device = collate, task, cfg, device
        self.amp = autocast_dtype(precision, device)
        self.logger, self.on_metrics = logger, on_metrics
        self.params = [p for p in model.parameters() if p.requires_grad]
        micro_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
        self.steps_per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, round(cfg.epochs * self.steps_per_epoch))
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = round(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor(warmup))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.final: dict[str, float] | None = None

    def _lr_factor(self, warmup: int) -> Callable[[int], float]:
        total = self.total_steps

        def factor(step: int) -> float:  # linear warm-up then linear decay to 0 (as transformers' schedule)
            if step < warmup:
                return step / max(1, warmup)
            return max(0.0, (total - step) / max(1, total - warmup))
        return factor

    def _emit(self, record: dict[str, Any]) -> None:
        record = {"step": self.step, **record}
        self.history.append(record)
        if self.on_metrics:
            self.on_metrics(record)
        if self.logger:
            self.logger.log({k: v for k, v in record.items() if k != "step"}, self.step)

    def evaluate_all(self) -> dict[str, float]:
        """Metrics over every eval split; the first split's names are plain, later ones prefixed."""
        out: dict[str, float] = {}
        for i, (name, data) in enumerate(self.eval_sets.items()):
            m = evaluate(self.model, data, self.collate, self.task, max(64, self.cfg.batch_size), self.device, self.amp)
            out.update(m if i == 0 else {f"{name}_{k}": v for k, v in m.items()})
        return out

    def _eval_and_track(self) -> None:
        metrics = self.evaluate_all()
        self.final = metrics
        main = metrics[self.task.main_metric]
        if self.best is None or main > self.best["metrics"][self.task.main_metric]:
            self.best = {"metrics": metrics, "step": self.step}
        self._emit({f"dev/{k}": v for k, v in metrics.items()} | {"epoch": self.step / self.steps_per_epoch})

    def train_step(self, micro: list[list[dict]]) -> float:
        """One optimizer step over micro-batches (gradient accumulation). Returns the mean loss."""
        self.model.train()
        total = 0.0
        for items in micro:
            batch = {k: v.to(self.device) for k, v in self.collate(items).items()}
            labels = batch.pop("labels")
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = self.model(**batch)
            loss = loss_fn(logits, labels, self.task.is_regression) / len(micro)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        start = time.perf_counter()
        seen, window_loss, window_n = 0, 0.0, 0
        epoch = 0
        while self.step < self.total_steps:
            order = epoch_order(len(self.train_data), cfg.seed, epoch)
            micro = list(batches(self.train_data, order, cfg.batch_size))
            # One optimizer step per window of grad_accum micro-batches; the last window may be shorter.
            for w in range(0, len(micro), cfg.grad_accum):
                window = micro[w:w + cfg.grad_accum]
                window_loss += self.train_step(window)
                seen += sum(len(m) for m in window)
                window_n += 1
                self.step += 1
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    self._emit({"train/loss": window_loss / window_n, "train/lr": self.scheduler.get_last_lr()[0],
                                "train/examples_per_s": seen / (now - start), "epoch": self.step / self.steps_per_epoch})
                    window_loss, window_n = 0.0, 0
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                    self._eval_and_track()
                if self.step >= self.total_steps:
                    break
            epoch += 1
            if not cfg.eval_every and self.step < self.total_steps:
                self._eval_and_track()
        self._eval_and_track()
        wall = time.perf_counter() - start
        return {
            "dev": self.final,
            "best_dev": {**self.best["metrics"], "step": self.best["step"]},
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "wall_time_s": wall,
            "examples_per_s": seen / wall if wall > 0 else 0.0,
            "peak_memory_mb": peak_memory_mb(self.device),
        }
