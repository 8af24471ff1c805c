"""The private trainer: DP-SGD steps (jrft_cli.dp) inside the ordinary loop's schedule.

Each step draws a Poisson logical batch (every example joins with probability q = B/N), splits it
into physical micro-batches (memory stays bounded whatever the batch), clips each example's
gradient jointly over all trainable tensors, sums, adds N(0, (sigma C)^2) noise, divides by the
EXPECTED batch size q*N, and takes an optimizer step; the accountant records (sigma, q) for every
step actually run, empty batches (a noise-only step) included. Stopping, logging, evaluation and
checkpoints are the ordinary Trainer's; an epoch is a pass in expectation (1/q steps).
"""
from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.core.registry import method_spec
from jrft_cli.dp.accounting import Accountant
from jrft_cli.dp.mechanism import add_noise, micro_batches, poisson_sample
from jrft_cli.dp.plan import PrivacyPlan, resolve_plan
from jrft_cli.dp.samplers import ShiftGradSampler, freeze_shared_embeddings, make_sampler
from jrft_cli.training.checkpoint import TrainingFailed
from jrft_cli.tasks.evaluation import TaskInfo, loss_fn
from jrft_cli.training.loop import Logger, LoopConfig, Trainer


class PrivateTrainer(Trainer):
    """DP-SGD over Poisson logical batches built from micro-batches; see the module docstring.

    Overrides the ordinary Trainer's step (`take_step`), step count and epoch length (the plan's),
    epoch ends (expected passes) and scheduler (constant unless the plan says otherwise); adds the
    accountant and both generators to its state. `run()` returns the loop's summary;
    `privacy_record()` is results.json's `privacy` entry; dev evaluations log `privacy/epsilon`
    (spent so far) and `privacy/steps`.
    """

    def __init__(self, model: nn.Module, train_data: Sequence[dict], eval_sets: dict[str, Sequence[dict]],
                 collate: Callable, task: TaskInfo, cfg: LoopConfig, device: torch.device, privacy: PrivacyPlan,
                 method: str, precision: str = "fp32", logger: Logger | None = None,
                 on_metrics: Callable[[dict[str, Any]], None] | None = None, **hooks: Any) -> None:
        # the plan's settings and the loop's, checked as `jrft train` checks them (no accounting: resolved)
        resolve_plan(privacy.settings(), grad_accum=cfg.grad_accum, loop_max_grad_norm=cfg.max_grad_norm,
                     group_by_length=cfg.group_by_length)
        self.plan, self.method = privacy, method
        dp_support = method_spec(method).dp
        self.frozen_for_privacy = freeze_shared_embeddings(model) if dp_support.freeze_shared_embeddings else []
        super().__init__(model, train_data, eval_sets, collate, task,
                         # batch_size here only sizes evaluation batches: keep them physical
                         replace(cfg, batch_size=privacy.micro_batch_size),
                         device, precision, logger, on_metrics, **hooks)
        if self.amp == torch.float16:
            raise JrftError("hardware.precision=fp16 is not supported with privacy=dp (its loss scaling would scale "
                            "the per-example norms); use bf16 or fp32")
        self.accountant = Accountant(privacy.accountant)
        self.sampler_generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 17)
        self.noise_generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + 29)
        self.sampler = make_sampler(model, self.params, method, privacy.grad_sample_mode, privacy.max_grad_norm)
        self.last_batch: torch.Tensor | None = None          # indices of the last logical batch
        self.lengths = torch.tensor([len(ex["input_ids"]) for ex in train_data], dtype=torch.long)

    # -- what differs from the ordinary loop
    def plan_steps(self) -> tuple[float, int]:
        """The plan's steps; an epoch is 1/q steps (one pass over the data in expectation)."""
        return 1 / self.plan.sample_rate, self.plan.steps

    def make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        """A constant learning rate unless the plan asks for the ordinary warm-up and decay."""
        if self.plan.constant_lr:
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        return super().make_scheduler()

    def epoch_ends(self, step: int) -> bool:
        """True when step `step` completes another expected pass (floor(step * q) goes up)."""
        q = self.plan.sample_rate
        return math.floor(step * q + 1e-9) > math.floor((step - 1) * q + 1e-9)

    def take_step(self) -> tuple[float, int, int]:
        """One private step; the loss logged is the mean over the examples the steps drew."""
        loss, size = self.private_step()
        return loss, size, size

    # -- one private step
    def private_step(self, indices: torch.Tensor | None = None) -> tuple[float, int]:
        """Sample, clip, sum, noise, step, account. Returns (summed loss, logical batch size).

        `indices` replaces the Poisson draw (benchmarks only: the accounting assumes Poisson batches)."""
        plan, n = self.plan, len(self.train_data)
        idx = poisson_sample(n, plan.sample_rate, self.sampler_generator) if indices is None else indices
        self.last_batch = idx
        # Order within a logical batch does not change the clipped sum: group similar lengths into
        # the same micro-batch to cut padding.
        idx = idx[torch.argsort(self.lengths[idx], stable=True)]
        self.model.train()
        sums: list[torch.Tensor] | None = None
        total_loss = 0.0
        for mb in micro_batches(idx, plan.micro_batch_size):
            batch = {k: v.to(self.device) for k, v in self.collate([self.train_data[i] for i in mb.tolist()]).items()}
            labels = batch.pop("labels")
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = self.model(**batch)
            losses = loss_fn(logits, labels, self.task.kind, reduction="none")
            clipped, _ = self.sampler.clipped_sum(losses, plan.max_grad_norm)
            sums = clipped if sums is None else [a + b for a, b in zip(sums, clipped)]
            total_loss += float(losses.detach().sum())
        if sums is None:  # an empty Poisson batch still takes its (noise-only) step
            sums = [torch.zeros_like(p) for p in self.params]
        if not math.isfinite(total_loss) or not all(bool(torch.isfinite(s).all()) for s in sums):
            # before the update and the accountant's step: the weights stay as at the last finite step
            raise TrainingFailed(f"the training loss is {total_loss} (the run diverged; a lower method.dp_lr or "
                                 "train.lr may help)", self.step + 1)
        noisy = add_noise(sums, plan.noise_multiplier, plan.max_grad_norm, self.noise_generator)
        expected = plan.sample_rate * n        # divide by the EXPECTED batch size, never the realised one
        for p, g in zip(self.params, noisy):
            p.grad = (g / expected).to(p.dtype)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accountant.step(plan.noise_multiplier, plan.sample_rate)
        return total_loss, int(idx.numel())

    def epsilon_spent(self) -> float:
        return self.accountant.epsilon(self.plan.delta)

    def _emit(self, record: dict[str, Any]) -> None:
        if any(k.startswith("dev/") for k in record):
            record = {**record, "privacy/epsilon": self.epsilon_spent(), "privacy/steps": self.accountant.steps}
        super()._emit(record)

    def privacy_record(self) -> dict[str, Any]:
        """results.json's `privacy`: the epsilon SPENT (by the steps actually run) and the settings."""
        p = self.plan
        return {
            "epsilon": self.epsilon_spent(),
            "target_epsilon": p.target_epsilon,
            "delta": p.delta,
            "noise_multiplier": p.noise_multiplier,
            "sample_rate": p.sample_rate,
            "steps": self.accountant.steps,
            "accountant": p.accountant,
            "max_grad_norm": p.max_grad_norm,
            "batch_size": p.batch_size,
            "micro_batch_size": p.micro_batch_size,
            "sampling": "poisson",
            "grad_sampler": "fast" if isinstance(self.sampler, ShiftGradSampler) else f"opacus-{self.sampler.mode}",
            "frozen_for_privacy": self.frozen_for_privacy,
        }

    # -- checkpointing: the base trainer's state plus the ledger and both generators
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "accountant": self.accountant.state_dict(),
                "sampler_generator": self.sampler_generator.get_state(),
                "noise_generator": self.noise_generator.get_state(),
                "privacy_plan": asdict(self.plan)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("privacy_plan")
        if saved is not None:
            changed = [k for k in ("noise_multiplier", "sample_rate", "delta", "max_grad_norm", "accountant")
                       if saved.get(k) != getattr(self.plan, k)]
            if changed:
                raise JrftError(f"cannot resume: the checkpoint's privacy settings differ in {', '.join(changed)}")
        base = {k: v for k, v in state.items()
                if k not in ("accountant", "sampler_generator", "noise_generator", "privacy_plan")}
        super().load_state_dict(base)
        self.accountant.load_state_dict(state["accountant"])
        self.sampler_generator.set_state(state["sampler_generator"])
        self.noise_generator.set_state(state["noise_generator"])
