"""The training / evaluation loop: AdamW, linear warm-up and decay, gradient accumulation,
dev evaluation per epoch or every N steps, best-so-far tracking; CPU or CUDA; resumable
(`state_dict` / `load_state_dict`, stop polling at step boundaries); data parallel over
torch.distributed (DDP) when a process group is up."""
from __future__ import annotations

import contextlib
import math
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.distributed as dist
from torch import nn

from jrft_cli.training.checkpoint import TrainingFailed, TrainingInterrupted, rng_state, set_rng_state
from jrft_cli.tasks.evaluation import TaskInfo, evaluate, loss_fn


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
    checkpoint_every: int = 0     # steps between periodic checkpoints (0 = only on a stop signal)
    group_by_length: bool = False  # batches of similar lengths (grouped_batches) instead of random ones


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from jrft_cli.core.errors import JrftError
        raise JrftError("hardware.device=cuda but no CUDA device is available; use hardware=cpu or hardware=auto")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively: AVX-512 BF16 (VDPBF16PS) or AMX tiles (AMX-BF16).
    Without either, bf16 matmuls are emulated and slower than fp32. torch.cpu's probes are private
    (torch >= 2.3); a torch without them counts as no native support."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a `hardware.precision` setting on `device` (None = plain fp32).

    CUDA: auto is bf16 where the GPU supports it, else fp32; bf16 and fp16 as asked. CPU: auto is bf16
    only where the CPU computes bf16 natively (`cpu_supports_bf16`), else fp32; bf16 as asked; fp16 is
    refused (most CPUs emulate it, and fp16 needs loss scaling, which jrft does only on CUDA). Other
    devices (mps): fp32, as before."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu":
        if precision == "fp16":
            from jrft_cli.core.errors import JrftError
            raise JrftError("hardware.precision=fp16 is not supported on CPU; use bf16 (autocast) or fp32")
        if precision == "auto":
            return torch.bfloat16 if cpu_supports_bf16() else None
        return torch.bfloat16
    return None


def precision_name(amp: torch.dtype | None) -> str:
    """The precision a run resolved to, as results.json records it: fp32, bf16 or fp16."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def attention_implementation(amp: torch.dtype | None, device: torch.device) -> str | None:
    """The attention implementation to load the backbone with (None = the model's default, SDPA).

    bf16 on CPU takes eager attention: torch's CPU flash-attention backward in bf16 runs about 12x
    slower than in fp32 and cancels the bf16 matmul gain (measured on MiniLM: 1.16x with SDPA, about
    2x with eager; eager in fp32 gains nothing, so fp32 keeps SDPA)."""
    return "eager" if device.type == "cpu" and amp == torch.bfloat16 else None


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


# Examples per length-sorted megabatch, in batches (as transformers' LengthGroupedSampler).
MEGABATCH_BATCHES = 50


def grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                    megabatch: int = MEGABATCH_BATCHES) -> list[list[int]]:
    """One epoch's batches (example indices) grouped by length: the epoch's random order
    (`epoch_order`) cut into megabatches of `megabatch * batch_size` examples, each sorted by length and
    cut into batches, then the batch order shuffled. A pure function of (seed, epoch, lengths), so a
    resumed run recomputes it.

    Sorting inside a megabatch leaves batches of similar lengths, hence little padding (SST-2: 65% of
    the tokens are padding in random batches, 4% grouped). The final shuffle matters: transformers' order
    (batches running long to short through each megabatch) cost jr on SST-2 10.7 points after the first
    epoch and 2.4 at the end of three; with the shuffle it ended 0.2 below random batches (one seed)."""
    order = epoch_order(len(lengths), seed, epoch)
    size = megabatch * batch_size
    flat = [i for start in range(0, len(order), size)
            for i in sorted(order[start:start + size], key=lambda j: lengths[j])]
    cut = [flat[i:i + batch_size] for i in range(0, len(flat), batch_size)]
    # a stream of its own (offset past every epoch_order seed), so the shuffle is not tied to that order
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + (1 << 40))
    return [cut[i] for i in torch.randperm(len(cut), generator=g).tolist()]


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = False) -> list[list[int]]:
    """One epoch's batches (example indices) as the ordinary loop takes them: the epoch's shuffled
    order cut into batches, or with `group_by_length` batches of similar lengths (`grouped_batches`)."""
    if group_by_length:
        return grouped_batches(lengths, batch_size, seed, epoch)
    order = epoch_order(len(lengths), seed, epoch)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def shard(items: list[dict], rank: int, world_size: int) -> list[dict]:
    """Rank `rank`'s contiguous slice of one global batch (sizes differ by at most one)."""
    per, extra = divmod(len(items), world_size)
    start = rank * per + min(rank, extra)
    return items[start:start + per + (1 if rank < extra else 0)]


class Trainer:
    """One training run. `run()` returns the summary that goes into results.json.

    Resumable: `state_dict()` / `load_state_dict()` hold the trainable parameters, optimizer,
    scheduler, grad scaler, RNG states, position in the data, best-so-far and history (plain
    dicts of tensors and python values; subclasses extend them via super()). `should_stop`
    is polled at every step boundary; when it returns a signal number, `on_checkpoint` gets
    the state and `run()` raises TrainingInterrupted. With a torch.distributed process group up
    the model trains under DistributedDataParallel: `cfg.batch_size` is the GLOBAL batch, each
    rank takes a slice of it, and only rank 0 evaluates, logs and checkpoints.
    """

    def __init__(self, model: nn.Module, train_data: Sequence[dict], eval_sets: dict[str, Sequence[dict]],
                 collate: Callable, task: TaskInfo, cfg: LoopConfig, device: torch.device,
                 precision: str = "fp32", logger: Logger | None = None,
                 on_metrics: Callable[[dict[str, Any]], None] | None = None,
                 should_stop: Callable[[], int | None] | None = None,
                 on_checkpoint: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.model, self.train_data, self.eval_sets = model, train_data, eval_sets
        self.collate, self.task, self.cfg, self.device = collate, task, cfg, device
        self.amp = autocast_dtype(precision, device)
        self.logger, self.on_metrics = logger, on_metrics
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps_per_epoch, self.total_steps = self.plan_steps()
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = self.make_scheduler()
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.should_stop, self.on_checkpoint = should_stop, on_checkpoint
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world_size > 1 else 0
        self.train_model: nn.Module = model
        if self.world_size > 1:
            # broadcast_buffers=False: every rank builds the same frozen buffers (projections) from
            # the seed; find_unused_parameters: some trainable params (e.g. a pooler's) may not
            # reach the loss.
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False, find_unused_parameters=True)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.final: dict[str, float] | None = None
        # progress between log lines and for throughput (restored on resume)
        self.seen, self.window_loss, self.window_n, self.elapsed_s = 0, 0.0, 0, 0.0
        self._epoch_batches: tuple[int, list[list[dict]]] | None = None   # (epoch, its micro-batches)

    # -- what a subclass may change: the step count, the schedule, when an epoch ends, one step ------
    def plan_steps(self) -> tuple[float, int]:
        """(steps per epoch, total optimizer steps): one step per window of grad_accum micro-batches."""
        cfg = self.cfg
        micro_per_epoch = math.ceil(len(self.train_data) / cfg.batch_size)
        per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
        return per_epoch, cfg.max_steps if cfg.max_steps > 0 else max(1, round(cfg.epochs * per_epoch))

    def make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        """Linear warm-up over warmup_ratio of the steps, then linear decay to 0."""
        warmup = round(self.cfg.warmup_ratio * self.total_steps)
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor(warmup))

    def epoch_ends(self, step: int) -> bool:
        """True when step `step` (1-based) completes a pass over the training data."""
        return step % self.steps_per_epoch == 0

    def take_step(self) -> tuple[float, int, int]:
        """Take the next optimizer step. Returns (loss, how many losses it sums, examples seen):
        here the step's mean loss, 1, and the window's example count."""
        window = self._next_window()
        return self.train_step(window), 1, sum(len(m) for m in window)

    def _next_window(self) -> list[list[dict]]:
        """The micro-batches of the next step: the epoch's shuffled order, cut into batches, grad_accum
        per step (an epoch's last window may be shorter); recomputed from `step` alone, so resumable."""
        cfg = self.cfg
        epoch, window = divmod(self.step, self.steps_per_epoch)
        if self._epoch_batches is None or self._epoch_batches[0] != epoch:
            lengths = [len(it["input_ids"]) for it in self.train_data]
            indices = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
            self._epoch_batches = epoch, [[self.train_data[i] for i in b] for b in indices]
        return self._epoch_batches[1][window * cfg.grad_accum:(window + 1) * cfg.grad_accum]

    # -- resume ----------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: trainable params only (never the
        frozen backbone), optimizer, scheduler, scaler, RNG states, data position, progress."""
        return {
            "trainable": self.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state(),
            "step": self.step,
            "total_steps": self.total_steps,
            "best": self.best,
            "final": self.final,
            "history": self.history,
            "seen": self.seen,
            "window_loss": self.window_loss,
            "window_n": self.window_n,
            "elapsed_s": self.elapsed_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s output (same model, data and config)."""
        if state["total_steps"] != self.total_steps:
            raise ValueError(f"checkpoint plans {state['total_steps']} steps, this run {self.total_steps}: "
                             "the training budget or data changed")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value.to(params[name].device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step, self.best, self.final = state["step"], state["best"], state["final"]
        self.history = list(state["history"])
        self.seen, self.window_loss, self.window_n = state["seen"], state["window_loss"], state["window_n"]
        self.elapsed_s = state["elapsed_s"]

    def _stop_requested(self) -> int | None:
        """The stop signal, agreed across ranks (a rank that got none joins the one that did)."""
        signum = self.should_stop() if self.should_stop else None
        if self.world_size > 1:
            flag = torch.tensor([signum or 0], dtype=torch.long)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item()) or None
        return signum

    def _checkpoint(self) -> Any:
        if self.on_checkpoint and self.is_main:
            return self.on_checkpoint(self.state_dict())
        return None

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
        if not self.is_main:
            return
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
        if not self.is_main:  # rank 0 evaluates; the others meet it at the next gradient all-reduce
            return
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
        for i, items in enumerate(micro):
            if self.world_size > 1:
                total += self._ddp_micro_step(items, len(micro), last=i == len(micro) - 1)
                continue
            batch = {k: v.to(self.device) for k, v in self.collate(items).items()}
            labels = batch.pop("labels")
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = self.model(**batch)
            loss = loss_fn(logits, labels, self.task.kind) / len(micro)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
        if self.world_size > 1:
            reduced = torch.tensor([total], dtype=torch.float64)
            dist.all_reduce(reduced)
            total = float(reduced.item())
        if not math.isfinite(total):   # before the update: the weights stay as they were at the last finite step
            raise TrainingFailed(f"the training loss is {total} (the run diverged; a lower train.lr may help)",
                                 self.step + 1)
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

    def _ddp_micro_step(self, items: list[dict], n_micro: int, last: bool) -> float:
        """Forward/backward of this rank's slice of one global micro-batch. The local loss is the
        slice's loss SUM over the global batch size, times world size: DDP's gradient average
        then equals the single-process gradient of the global mean loss, even for uneven slices.
        Returns this rank's share of the (global mean) loss."""
        local = shard(items, self.rank, self.world_size)
        weight = self.world_size / (len(items) * n_micro)
        if not local:  # a batch smaller than the world: join the all-reduce with a zero gradient
            local, weight = items[:1], 0.0
        batch = {k: v.to(self.device) for k, v in self.collate(local).items()}
        labels = batch.pop("labels")
        sync = contextlib.nullcontext() if last else self.train_model.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = self.train_model(**batch)
            loss = loss_fn(logits, labels, self.task.kind, reduction="sum") * weight
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return loss.item() / self.world_size

    def run(self) -> dict[str, Any]:
        """Train to `total_steps`, then evaluate; returns the summary (on rank 0; other ranks: the steps).

        The schedule, for every trainer: poll for a stop signal before each step (checkpoint, then
        raise TrainingInterrupted); log every log_every steps and at the last; evaluate every eval_every
        steps, or at each epoch's end without it; checkpoint every checkpoint_every steps; a final
        evaluation after the last step. Subclasses change `take_step`, `epoch_ends`, `plan_steps`."""
        cfg = self.cfg
        start = time.perf_counter() - self.elapsed_s   # a resumed run counts its earlier time
        while self.step < self.total_steps:
            self.elapsed_s = time.perf_counter() - start
            signum = self._stop_requested()
            if signum:
                raise TrainingInterrupted(signum, self.step, self._checkpoint())
            loss, count, examples = self.take_step()
            self.step += 1
            self.seen += examples
            self.window_loss += loss
            self.window_n += count
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                now = time.perf_counter()
                self._emit({"train/loss": self.window_loss / max(1, self.window_n),
                            "train/lr": self.scheduler.get_last_lr()[0],
                            "train/examples_per_s": self.seen / (now - start),
                            "epoch": self.step / self.steps_per_epoch})
                self.window_loss, self.window_n = 0.0, 0
            if self.step < self.total_steps:
                if (self.step % cfg.eval_every == 0) if cfg.eval_every else self.epoch_ends(self.step):
                    self._eval_and_track()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.elapsed_s = time.perf_counter() - start
                    self._checkpoint()
        self._eval_and_track()
        if not self.is_main:
            return {"steps": self.step}
        return self.summary(time.perf_counter() - start)

    def summary(self, wall: float) -> dict[str, Any]:
        """The finished run's part of results.json (after the final evaluation)."""
        return {
            "dev": self.final,
            "best_dev": {**self.best["metrics"], "step": self.best["step"]},
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "wall_time_s": wall,
            "examples_per_s": self.seen / wall if wall > 0 else 0.0,
            "peak_memory_mb": peak_memory_mb(self.device),
        }
