"""One `jrft bench` run: plain settings in, the report dict out (writing it is report.write_report's job).

Nothing here knows Hydra: the command resolves the model name, loads the data and passes them in.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from jrft_cli.bench import report as report_mod
from jrft_cli.bench.inference import inference_rows
from jrft_cli.bench.rows import SUBJECT, method_rows, method_setup, run_axes
from jrft_cli.bench.steps import STEP_SECTIONS, step_sections
from jrft_cli.bench.targets import targets
from jrft_cli.bench.workload import Workload, synthetic_batch
from jrft_cli.tasks.evaluation import TaskInfo
from jrft_cli.training.loop import attention_implementation, autocast_dtype

SECTIONS = ("train", "eval", "private", "inference", "projection")


@dataclass
class BenchSettings:
    """What to measure. `data` None: a synthetic fixed batch of batch_size x seq_len tokens; else the
    name of the task whose `examples` (encoded, at most seq_len tokens) give Poisson batches."""
    model_name: str
    model_id: str
    methods: list[str]
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    vary: dict[str, list[str]] = field(default_factory=dict)
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    orderings: list[str] = field(default_factory=lambda: ["random"])   # other than random: needs `data`
    batches_per_round: int = 4               # loop batches per timed training call of an ordering row
    naive: bool = True
    d: int = 1024
    seed: int = 0
    batch_size: int = 32
    micro_batch_size: int | None = None      # None: the whole batch at once
    seq_len: int = 64
    steps: int = 10                          # timed round-robin rounds
    warmup: int = 3
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    opacus_mode: str = "auto"
    data: str | None = None
    examples: list[dict] | None = None
    num_labels: int = 2
    inference_methods: list[str] = field(default_factory=lambda: [SUBJECT])
    repeats: int = 20
    proj_layers: int = 24
    proj_hidden: int = 1024
    proj_dims: list[int] = field(default_factory=lambda: [1024, 4096, 16384, 65536])
    proj_repeats: int = 5
    max_dense_bytes: float = 4e9
    shift_step: bool = True
    shift_d: int = 4096
    shift_batch: int = 2
    shift_seq: int = 32
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The settings as the report's `config` (without the data itself)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("examples", "notes", "model_name", "model_id")}
        return {"model": self.model_name, "model_id": self.model_id, **out, "subject": SUBJECT}


def run_bench(s: BenchSettings, *, tokenizer: Any, collate: Callable | None, task: TaskInfo, task_record: dict[str, Any],
              device: torch.device, command: str, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every requested section; returns the report (schema report.SCHEMA). `task` is what the
    loss needs (regression or not); `task_record` the task config recorded in the artifact that the
    inference section exports."""
    env = report_mod.environment(device)
    report: dict[str, Any] = {"schema": report_mod.SCHEMA, "command": command,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": env,
                              "config": s.record(), "notes": list(s.notes)}
    needs_batch = any(x in s.sections for x in (*STEP_SECTIONS, "inference"))
    if needs_batch:
        if s.data is None:
            items, poisson = synthetic_batch(tokenizer, s.batch_size, s.seq_len, s.num_labels, s.seed), False
        else:
            items, poisson = s.examples or [], True
        axes = run_axes(s.precisions, s.orderings)
        work = Workload(items, collate, s.batch_size, s.micro_batch_size or s.batch_size, poisson, s.seed,
                        orderings=tuple(axes.get("ordering", ())), window=s.batches_per_round)
        report["config"]["workload"] = work.describe()
    else:
        report["config"]["workload"] = {"kind": "none"}

    steps = [x for x in STEP_SECTIONS if x in s.sections]
    if steps:
        rows = method_rows(s.methods, s.vary, d=s.d, seed=s.seed, naive=s.naive, axes=run_axes(s.precisions, s.orderings))

        def build(row: Any) -> torch.nn.Module:   # bf16 on CPU: eager attention, as `jrft train` loads it
            attn = attention_implementation(autocast_dtype(row.precision, device), device)
            return row.build(s.model_name, tokenizer, s.num_labels, s.seed, attn)
        report.update(step_sections(rows, build, steps, work, task, device, rounds=s.steps, warmup=s.warmup,
                                    noise_multiplier=s.noise_multiplier, max_grad_norm=s.max_grad_norm,
                                    opacus_mode=s.opacus_mode, log=log))
    if "inference" in s.sections:
        if log:
            log("inference: base, " + ", ".join(f"{m} (jrft, exported)" for m in s.inference_methods))
        work.draw(0)
        setups = [method_setup(m, d=s.d, seed=s.seed) for m in s.inference_methods]
        report["inference"] = inference_rows(
            setups, model_name=s.model_name, tokenizer=tokenizer, num_labels=s.num_labels, task_record=task_record,
            max_length=s.seq_len, seed=s.seed, items=work.items, collate=collate, device=device,
            repeats=s.repeats, warmup=3, log=log)
    if "projection" in s.sections:
        _projection(s, report, device, log)
    report["targets"] = targets(report)
    for t in report["targets"]:
        if not t["met"]:
            report["notes"].append(f"target missed: {t['name']} = {t['value']:.3f} (goal {t['target']}; {t['detail']})")
    env["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def _projection(s: BenchSettings, report: dict[str, Any], device: torch.device,
                log: Callable[[str], None] | None) -> None:
    import psutil

    from jrft_cli.bench.projection import projection_table, shift_vs_step

    # Never allocate more than half the free memory (the machine may be shared).
    max_dense = min(s.max_dense_bytes, psutil.virtual_memory().available / 2)
    if log:
        log(f"projection table: L={s.proj_layers}, H={s.proj_hidden}, d in {s.proj_dims}")
    report["projection"] = projection_table(s.proj_layers, s.proj_hidden, tuple(s.proj_dims), device,
                                            repeats=s.proj_repeats, max_dense_bytes=max_dense)
    if not s.shift_step:
        return
    h, L = s.proj_hidden, s.proj_layers
    need = 4 * (L * 12 * h * h + 50265 * h) * 1.5 + 4 * L * s.shift_d * h   # weights + slack + dense W
    free = psutil.virtual_memory().available
    if device.type == "cpu" and need > free * 0.8:
        report["notes"].append(f"z->shifts vs step skipped: the random L={L}, H={h} model needs about "
                               f"{need / 1e9:.1f} GB and {free / 1e9:.1f} GB are free")
    else:
        report["shift_vs_step"] = shift_vs_step(L, h, s.shift_d, s.shift_batch, s.shift_seq, steps=3, warmup=1,
                                                device=device, log=log)
