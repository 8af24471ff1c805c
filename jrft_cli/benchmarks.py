"""Benchmarks: step times measured in one process (comparable numbers on the same machine)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch


def private_step_times(model_name: str, examples: Sequence[dict], collate: Any, mask_token_id: int,
                       pad_token_id: int, batch_size: int = 256, micro_batch_size: int = 32, steps: int = 3,
                       methods: Sequence[str] = ("jr", "full", "lora"), d: int = 1024,
                       seed: int = 0) -> dict[str, Any]:
    """Milliseconds per optimizer step at the same logical batch: non-private jr, and DP-SGD for each
    of `methods` (jr/jr_warp/linear on the fast path, full/bitfit/lora through opacus; "lora:ghost"
    forces an opacus grad_sample_mode).

    Every variant runs the SAME logical batches (Poisson draws of expected size `batch_size` over
    `examples`, split into `micro_batch_size` micro-batches; the non-private step accumulates over
    the same micro-batches). Rounds are interleaved across variants, after one warm-up step each,
    so load drifts on a shared machine hit all of them alike. Returns {"ms_per_step": {variant:
    median}, "ratio_to_jr": {variant: median / non-private jr}, "batch_sizes": [...], ...}.
    """
    from jrft_cli.loop import LoopConfig, TaskInfo, Trainer
    from jrft_cli.methods import apply_method
    from jrft_cli.modeling import SequenceClassifier
    from jrft_cli.privacy import poisson_sample
    from jrft_cli.private import PrivacyPlan, PrivateTrainer

    n = len(examples)
    q = batch_size / n
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(ex["input_ids"]) for ex in examples])
    # sorted by length, as PrivateTrainer.private_step orders its micro-batches (less padding)
    batches = [b[torch.argsort(lengths[b], stable=True)] for b in (poisson_sample(n, q, gen) for _ in range(steps + 1))]
    task = TaskInfo(False, ["accuracy"], "accuracy")
    lr = {"full": 2e-5, "lora": 5e-4, "bitfit": 1e-3}
    options = {"jr": {"d": d}, "jr_warp": {"d": d, "prompt_token_id": pad_token_id},
               "lora": {"r": 1}}
    cpu = torch.device("cpu")

    def build(method: str) -> torch.nn.Module:
        torch.manual_seed(seed)
        head = "cls" if method in ("lora", "bitfit") else "mask"
        model = SequenceClassifier(model_name, 2, head=head, dropout=0.0 if method != "full" else None,
                                   mask_token_id=mask_token_id)
        apply_method(model, method, **options.get(method, {}))
        return model

    def cfg(method: str) -> LoopConfig:
        return LoopConfig(epochs=1, batch_size=micro_batch_size, lr=lr.get(method, 3e-3), seed=seed)

    variants: dict[str, Any] = {}
    base = Trainer(build("jr"), examples, {}, collate, task, cfg("jr"), cpu)

    def nonprivate(idx: torch.Tensor) -> None:
        items = [examples[i] for i in idx.tolist()]
        base.train_step([items[i:i + micro_batch_size] for i in range(0, len(items), micro_batch_size)])
    variants["jr (non-private)"] = nonprivate
    for spec in methods:                    # "lora" or "lora:ghost" (an opacus grad_sample_mode)
        method, _, mode = spec.partition(":")
        plan = PrivacyPlan(noise_multiplier=1.0, sample_rate=q, steps=steps + 1, delta=1 / (2 * n),
                           max_grad_norm=1.0, batch_size=batch_size, micro_batch_size=micro_batch_size,
                           grad_sample_mode=mode or "auto")
        trainer = PrivateTrainer(build(method), examples, {}, collate, task, cfg(method), cpu, plan, method)
        variants[f"{spec} (DP)"] = lambda idx, t=trainer: t.private_step(idx)

    times: dict[str, list[float]] = {k: [] for k in variants}
    for r, idx in enumerate(batches):
        for name, step in variants.items():
            start = time.perf_counter()
            step(idx)
            if r > 0:                       # round 0 is the warm-up
                times[name].append((time.perf_counter() - start) * 1000)
    ms = {k: statistics.median(v) for k, v in times.items()}
    ref = ms["jr (non-private)"]
    return {"ms_per_step": ms, "ratio_to_jr": {k: v / ref for k, v in ms.items()},
            "all_ms": times, "batch_sizes": [int(b.numel()) for b in batches[1:]],
            "batch_size": batch_size, "micro_batch_size": micro_batch_size, "threads": torch.get_num_threads()}
