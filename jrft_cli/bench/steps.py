"""The train, eval and private sections: optimizer steps and evaluation forwards of every row.

- train:   one optimizer step of jrft's own loop (`Trainer.train_step`, at the row's precision) over
           the round's batch (its micro-batches accumulated), with the method's learning rate; a row
           with an `ordering` axis steps on that ordering's window of loop batches instead
           (bench/workload.py);
- eval:    jrft's evaluation forward (`tasks.evaluation.predict`: eval mode, no_grad, at the row's
           precision) over the round's batch, on the train row's model;
- private: one DP-SGD step (`PrivateTrainer.private_step` on the round's logical batch: the shift
           path for some methods, opacus for others, as the registry's `MethodSpec.dp` says), or
           the naive reference's opacus GradSampleModule step (bench/naive_jr.py).
Eval and private rows are measured for the `random` ordering only: evaluation sorts its inputs by
length whatever their order, and private steps take Poisson batches. A bf16 row on CPU loads the backbone
with eager attention, as `jrft train` does (training.loop.attention_implementation).
All rows of all three sections are timed in one `timing.measure` call: a row's train, eval and
private calls follow each other in every round, so their ratios see the same machine load.
Throughput (examples/s) is the median over rounds of the call's examples that round over its time.
"""
from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from jrft_cli.bench.rows import RowSpec
from jrft_cli.bench.timing import Timing, measure
from jrft_cli.bench.workload import Workload
from jrft_cli.core.backbone import count_parameters
from jrft_cli.tasks.evaluation import TaskInfo, predict
from jrft_cli.training.loop import LoopConfig, Trainer, attention_implementation, autocast_dtype

STEP_SECTIONS = ("train", "eval", "private")


@dataclass
class _Call:
    section: str
    row: RowSpec
    info: dict[str, Any]
    fn: Callable[[], Any]
    examples: Callable[[], int]              # examples the call processes in the current round
    sizes: list[int] = field(default_factory=list)   # ... in each timed round


def _options(row: RowSpec, model: torch.nn.Module) -> dict[str, Any]:
    """The row's method options as its model was built (e.g. with the tokenizer's prompt token id)."""
    from jrft_cli.core.registry import method_spec

    if row.naive or not hasattr(model, "method_options"):
        return row.options
    return method_spec(row.method).options_dict(model.method_options)


def _train_call(row: RowSpec, model: torch.nn.Module, work: Workload, task: TaskInfo, device: torch.device,
                total_steps: int) -> _Call:
    trainable, total = count_parameters(model)
    cfg = LoopConfig(max_steps=total_steps, batch_size=work.micro_batch_size, lr=row.lr, warmup_ratio=0.0)
    trainer = Trainer(model, work.data, {}, work.collate, task, cfg, device, precision=row.precision)
    # rows varied on the ordering step on that ordering's loop batches; the others on the round's batch
    loop = "ordering" in row.id
    micro = (lambda: work.windows[row.ordering]) if loop else (lambda: work.micro)
    return _Call("train", row, {"options": _options(row, model), "lr": row.lr, "trainable_params": trainable,
                                "total_params": total, "batches": "loop" if loop else "round",
                                **_precision_info(row, model)},
                 lambda: trainer.train_step(micro()), lambda: sum(len(m) for m in micro()))


def _precision_info(row: RowSpec, model: torch.nn.Module) -> dict[str, Any]:
    """The row's precision and the attention kernel its backbone runs (as results.json records them)."""
    config = getattr(model, "config", None)
    return {"precision": row.precision, "attn_implementation": getattr(config, "_attn_implementation", None)}


def _eval_call(row: RowSpec, model: torch.nn.Module, work: Workload, device: torch.device) -> _Call:
    amp = autocast_dtype(row.precision, device)
    return _Call("eval", row, {"options": _options(row, model), "batches": "round", **_precision_info(row, model)},
                 lambda: predict(model, work.items, work.collate, work.micro_batch_size, device, amp),
                 lambda: len(work.items))


def _private_call(row: RowSpec, model: torch.nn.Module, work: Workload, task: TaskInfo, device: torch.device,
                  total_steps: int, noise_multiplier: float, max_grad_norm: float, opacus_mode: str) -> _Call:
    expected = work.sample_rate * len(work.data)
    if row.naive:
        from jrft_cli.bench.naive_jr import NaivePrivateStep

        runner = NaivePrivateStep(model, work.collate, device, lr=row.dp_lr, max_grad_norm=max_grad_norm,
                                  noise_multiplier=noise_multiplier, is_regression=task.is_regression)
        fn, path = (lambda: runner.step(work.micro, expected)), "opacus GradSampleModule (functorch)"
    else:
        # Imported here: the non-private bench sections never load the DP samplers (or opacus).
        from jrft_cli.dp.plan import PrivacyPlan
        from jrft_cli.dp.samplers import sampler_label
        from jrft_cli.training.private_loop import PrivateTrainer

        # delta only feeds the accountant's epsilon, which the bench never asks for.
        plan = PrivacyPlan(noise_multiplier=noise_multiplier, sample_rate=work.sample_rate, steps=total_steps,
                           delta=1e-5, max_grad_norm=max_grad_norm, batch_size=round(expected),
                           micro_batch_size=work.micro_batch_size, grad_sample_mode=opacus_mode)
        runner = PrivateTrainer(model, work.data, {}, work.collate, task,
                                LoopConfig(max_steps=total_steps, batch_size=work.micro_batch_size, lr=row.dp_lr),
                                device, plan, row.method, precision=row.precision)
        fn, path = (lambda: runner.private_step(work.indices)), sampler_label(row.method, opacus_mode)
    trainable, _ = count_parameters(model)    # after the trainer: DP may freeze shared embeddings
    return _Call("private", row, {"options": _options(row, model), "lr": row.dp_lr, "path": path, "trainable_params": trainable,
                                  "noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm, "batches": "round", **_precision_info(row, model)},
                 fn, lambda: len(work.items))


def step_sections(rows: list[RowSpec], build: Callable[[RowSpec], torch.nn.Module], sections: list[str],
                  work: Workload, task: TaskInfo, device: torch.device, *, rounds: int, warmup: int, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0,
                  opacus_mode: str = "auto", log: Callable[[str], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Measure `rows` (their models made by `build`) in the requested step `sections` (of train,
    eval, private); a row dict's `batches` says what it stepped on: `round` (the round's batch, shared
    by every row) or `loop` (its ordering's loop batches); returns
    {section: [row dict, ...]} with rows in `rows`' order. Each row dict holds `id`, `label`,
    `options`, the timing (median_ms, q1_ms, q3_ms, rounds, warmup, memory_mb, memory_kind),
    `examples_per_s` and section fields (train: lr, trainable/total params; private: lr, path, ...)."""
    wanted = [s for s in STEP_SECTIONS if s in sections]
    if not wanted or not rows:
        return {}
    total_steps = warmup + rounds + 1
    calls: list[_Call] = []
    for row in rows:
        random_order = row.ordering == "random"      # eval and private rows: see the module docstring
        if "train" in wanted or ("eval" in wanted and random_order):
            model = build(row).to(device)
            if "train" in wanted:
                calls.append(_train_call(row, model, work, task, device, total_steps))
            if "eval" in wanted and random_order:
                calls.append(_eval_call(row, model, work, device))
        if "private" in wanted and random_order:
            calls.append(_private_call(row, build(row).to(device), work, task, device, total_steps,
                                       noise_multiplier, max_grad_norm, opacus_mode))
    with warnings.catch_warnings():   # opacus' full backward hooks on frozen-input modules: expected
        warnings.filterwarnings("ignore", message="Full backward hook is firing")

        def before_round(r: int) -> None:
            work.draw(r)
            if r > 0:
                for c in calls:
                    c.sizes.append(c.examples())

        timings = measure({f"{c.section}: {c.row.label}": c.fn for c in calls}, rounds=rounds, warmup=warmup,
                          device=device, memory=True, before_round=before_round, log=log)
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in wanted}
    for c in calls:
        t = timings[f"{c.section}: {c.row.label}"]
        out[c.section].append({"id": dict(c.row.id), "label": c.row.label, **c.info, **t.stats(),
                               "examples_per_s": examples_per_s(t, c.sizes), "examples": list(c.sizes),
                               "mean_batch": statistics.mean(c.sizes)})
    return out


def examples_per_s(timing: Timing, sizes: list[int]) -> float:
    """Median over rounds of (examples in the round's batch) / (the call's seconds)."""
    return statistics.median(n / (ms / 1e3) for n, ms in zip(sizes, timing.times_ms))
