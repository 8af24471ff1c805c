"""`jrft bench`'s measurements: every method side by side in one process, same model, batch, length.

Sections (each a list of row dicts in the report):
- train:      median optimizer-step time after warm-up, peak memory, trainable parameters
              (jrft's own loop.Trainer.train_step); train and private rows are timed in shared
              round-robin rounds (run_rows);
- private:    median DP-SGD step time (private.PrivateTrainer.private_step: fast path for jr/jr_warp/
              linear, opacus for full/bitfit/lora) and the naive reference (naive_jr.py);
- inference:  base model vs jr with hooks vs the `jrft export` of that jr model;
- projection: the projection table (benchmarks.projection_table) and z -> shifts time against one
              jr training step at RoBERTa-large shapes (random weights, nothing downloaded).
Memory is CUDA max allocated on a GPU and the growth of the process's resident set (psutil,
sampled while the steps run, over the RSS just before them) on CPU.
Nothing here knows Hydra: the command passes plain config dicts.
"""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from jrft_cli.bench.measure import _sync, inference_latency, projection_table, time_shift_step
from jrft_cli.training.loop import LoopConfig, Trainer
from jrft_cli.tasks.evaluation import TaskInfo
from jrft_cli.core.backbone import count_parameters

SCHEMA = "jrft-bench/1"
METHOD_CHOICES = ("full", "bitfit", "lora", "linear", "jr", "jr_warp", "naive_jr")
SECTIONS = ("train", "private", "inference", "projection")
# Methods with a private step (dp/samplers.py) besides the naive reference.
PRIVATE_METHODS = ("full", "bitfit", "lora", "linear", "jr", "jr_warp")
_TASK = TaskInfo(is_regression=False, metrics=("accuracy",), main_metric="accuracy")


@dataclass
class Row:
    """One measured configuration (label unique within its section)."""
    label: str
    method: str
    build: Callable[[], nn.Module]       # builds the model (method applied) on CPU
    lr: float
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- inputs and memory

def synthetic_batch(tokenizer: Any, batch_size: int, seq_len: int, num_labels: int = 2, seed: int = 0) -> list[dict]:
    """`batch_size` items of exactly `seq_len` tokens in the mask-head format: [CLS] random... [MASK] [SEP]."""
    if seq_len < 4:
        raise ValueError(f"seq_len={seq_len} is too short; it must be >= 4")
    g = torch.Generator().manual_seed(seed)
    specials = set(tokenizer.all_special_ids)
    low = 1000 if tokenizer.vocab_size > 2000 else max(specials) + 1
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    items = []
    for _ in range(batch_size):
        body = torch.randint(low, tokenizer.vocab_size, (seq_len - 3,), generator=g).tolist()
        ids = [first] + body + [tokenizer.mask_token_id, last]
        item = {"input_ids": ids, "attention_mask": [1] * seq_len,
                "labels": int(torch.randint(0, num_labels, (1,), generator=g))}
        if with_types:
            item["token_type_ids"] = [0] * seq_len
        items.append(item)
    return items


def release_memory() -> None:
    """Collect garbage and give freed heap back to the OS, so one row's RSS does not hide the next's."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the code inside `with`: CUDA max allocated on a GPU; on CPU the peak growth of
    the process RSS over its value at entry (psutil, sampled every `interval` seconds)."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss_growth"
        self.mb = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        self._proc = psutil.Process(os.getpid())
        self._start = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.mb = (self._peak - self._start) / 2**20


def _stats(times_s: list[float]) -> dict[str, float]:
    ms = [t * 1e3 for t in times_s]
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"step_ms": statistics.median(ms), "q1_ms": q[0], "q3_ms": q[2]}


def time_steps(step: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> tuple[dict[str, float], PeakMemory]:
    """Run `step` warmup + steps times; median/quartile ms of the last `steps`, and peak memory over all."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps}, warmup={warmup}: need steps >= 1 and warmup >= 0")
    times = []
    with PeakMemory(device) as mem:
        for i in range(warmup + steps):
            _sync()
            start = time.perf_counter()
            step()
            _sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return _stats(times), mem


# ---------------------------------------------------------------- sections

@dataclass
class Runner:
    """A row made ready to step: its section, its result fields so far, and its step function."""
    section: str
    info: dict[str, Any]
    step: Callable[[], Any]
    keep: Any = None          # the model / trainer, kept alive while the rounds run


def prepare_train(row: Row, items: list[dict], collate: Callable, device: torch.device, total_steps: int) -> Runner:
    """A non-private row: its model on `device` and loop.Trainer.train_step on the fixed batch."""
    model = row.build().to(device)
    trainable, total = count_parameters(model)
    cfg = LoopConfig(max_steps=total_steps, batch_size=len(items), lr=row.lr, warmup_ratio=0.0)
    trainer = Trainer(model, items, {}, collate, _TASK, cfg, device)
    info = {"label": row.label, "method": row.method, **row.extra, "trainable_params": trainable, "total_params": total}
    return Runner("train", info, lambda: trainer.train_step([items]), trainer)


def prepare_private(row: Row, items: list[dict], collate: Callable, device: torch.device, total_steps: int,
                    noise_multiplier: float = 1.0, max_grad_norm: float = 1.0) -> Runner:
    """A private row on the fixed batch `items`.

    jrft's methods: `private.PrivateTrainer.private_step` with sampling rate 1 over a training set that
    is exactly the batch (every step sees the whole batch, as the non-private rows do), one
    micro-batch. `naive_jr`: naive_jr.NaivePrivateStep (opacus GradSampleModule)."""
    model = row.build().to(device)
    trainable, _ = count_parameters(model)
    if row.method == "naive_jr":
        from jrft_cli.bench.naive_jr import NaivePrivateStep

        runner = NaivePrivateStep(model, collate, device, lr=row.lr, max_grad_norm=max_grad_norm,
                                  noise_multiplier=noise_multiplier)
        step, path = (lambda: runner.step(items)), "opacus GradSampleModule (functorch)"
    else:
        from jrft_cli.dp.plan import PrivacyPlan
        from jrft_cli.dp.samplers import sampler_label
        from jrft_cli.training.private_loop import PrivateTrainer

        plan = PrivacyPlan(noise_multiplier=noise_multiplier, sample_rate=1.0, steps=total_steps, delta=1e-5,
                           max_grad_norm=max_grad_norm, batch_size=len(items), micro_batch_size=len(items))
        runner = PrivateTrainer(model, items, {}, collate, _TASK,
                                LoopConfig(max_steps=total_steps, batch_size=len(items), lr=row.lr),
                                device, plan, row.method)
        step = runner.private_step
        path = sampler_label(row.method)
    info = {"label": row.label, "method": row.method, **row.extra, "path": path, "trainable_params": trainable,
            "noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm}
    return Runner("private", info, step, runner)


def run_rows(prepare: list[Callable[[], Runner]], steps: int, warmup: int, device: torch.device,
             log: Callable[[str], None] = print) -> list[tuple[str, dict[str, Any]]]:
    """Build every row and run its warm-up steps (at least one) one row at a time, measuring the row's
    peak memory over them; then time `steps` rounds, one step of every row per round (round-robin, so
    load drifting on a shared machine hits every row alike). Returns (section, row dict) in order."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps}, warmup={warmup}: need steps >= 1 and warmup >= 0")
    runners: list[Runner] = []
    for make in prepare:
        release_memory()
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        runner = make()
        log(f"{runner.section}: {runner.info['label']} (warm-up)")
        with warnings.catch_warnings():   # opacus' full backward hooks on frozen-input modules: expected
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            with PeakMemory(device) as mem:
                for _ in range(max(1, warmup)):
                    runner.step()
        # On a GPU: this row's own peak (other rows' weights stay resident and are subtracted).
        runner.info.update(memory_mb=mem.mb - base / 2**20, memory_kind=mem.kind)
        runners.append(runner)
    times: list[list[float]] = [[] for _ in runners]
    log(f"timing {steps} round-robin rounds of {len(runners)} rows")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(steps):
            for k, runner in enumerate(runners):
                _sync()
                start = time.perf_counter()
                runner.step()
                _sync()
                times[k].append(time.perf_counter() - start)
    return [(r.section, {**r.info, **_stats(t), "steps": steps, "warmup": warmup}) for r, t in zip(runners, times)]


def inference_rows(build_base: Callable[[], nn.Module], build_jr: Callable[[], nn.Module], cfg: dict[str, Any],
                   tokenizer: Any, items: list[dict], collate: Callable, device: torch.device, repeats: int,
                   warmup: int, num_labels: int = 2) -> tuple[list[dict[str, Any]], float]:
    """Latency of the base model, jr with hooks, and the `jrft export` of that jr model (loaded through
    transformers, trust_remote_code); returns (rows, max |logit diff| jr vs exported)."""
    import tempfile
    from pathlib import Path

    from jrft_cli.core.artifact import save_artifact
    from jrft_cli.training.recipe import artifact_info
    from jrft_cli.serving.export import export_run, load_export

    base, jr = build_base().eval(), build_jr().eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_artifact(jr, Path(tmp) / "run", artifact_info(cfg, jr, tokenizer, num_labels))
        export_run(Path(tmp) / "run", Path(tmp) / "export")
        exported, _, _ = load_export(Path(tmp) / "export")
    base, jr, exported = base.to(device), jr.to(device), exported.to(device)
    batch = {k: v.to(device) for k, v in collate(items).items() if k != "labels"}
    with torch.no_grad():
        diff = (jr(**batch) - exported(**batch).logits).abs().max().item()
    stats = inference_latency({"base": lambda: base(**batch), "jr (hooks)": lambda: jr(**batch),
                               "exported": lambda: exported(**batch)}, repeats=repeats, warmup=warmup)
    ref = stats["base"]["median_ms"]
    return [{"model": name, **s, "vs_base": s["median_ms"] / ref} for name, s in stats.items()], diff


class _MaskHeadModel(nn.Module):
    """A random-weight encoder + linear head on the mask position: enough for methods.apply_method."""

    def __init__(self, backbone: nn.Module, num_labels: int, mask_token_id: int) -> None:
        super().__init__()
        self.backbone, self.mask_token_id = backbone, mask_token_id
        self.head = nn.Linear(backbone.config.hidden_size, num_labels)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden[:, hidden.size(1) - input_ids.size(1):]
        pos = (input_ids == self.mask_token_id).int().argmax(dim=1)
        return self.head(hidden[torch.arange(hidden.size(0), device=hidden.device), pos])


def shift_vs_step(layers: int = 24, hidden: int = 1024, d: int = 4096, batch_size: int = 2, seq_len: int = 32,
                  steps: int = 3, warmup: int = 1, kinds: tuple[str, ...] = ("structured", "dense"),
                  device: torch.device | str = "cpu", shift_repeats: int = 5, vocab_size: int = 50265,
                  log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """z -> shifts time (forward + backward) as a fraction of one jr training step, for a RoBERTa
    encoder of the given shapes (defaults: RoBERTa-large) with random weights (nothing downloaded).
    `fraction` is the median over rounds of (shift time / step time) measured back to back."""
    from transformers import RobertaConfig, RobertaModel

    from jrft_cli.core.registry import apply_method

    device = torch.device(device)
    heads = max(1, hidden // 64)
    config = RobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=514,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    log(f"shift vs step: building a random RoBERTa (L={layers}, H={hidden})")
    torch.manual_seed(0)
    mask_id = 4
    model = _MaskHeadModel(RobertaModel(config, add_pooling_layer=False), 2, mask_id).to(device)
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(batch_size):
        ids = [0] + torch.randint(10, vocab_size, (seq_len - 3,), generator=g).tolist() + [mask_id, 2]
        items.append({"input_ids": ids, "attention_mask": [1] * seq_len, "labels": int(torch.randint(0, 2, (1,), generator=g))})

    def collate(its: list[dict]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([i["input_ids"] for i in its]),
                "attention_mask": torch.tensor([i["attention_mask"] for i in its]),
                "labels": torch.tensor([i["labels"] for i in its])}

    out = []
    for kind in kinds:
        log(f"shift vs step: jr d={d} {kind}")
        apply_method(model, "jr", d=d, projection=kind)
        model.to(device)
        trainer = Trainer(model, items, {}, collate, _TASK,
                          LoopConfig(max_steps=warmup + steps, batch_size=batch_size, lr=3e-3, warmup_ratio=0.0), device)
        for _ in range(warmup):
            trainer.train_step([items])
        # Each round times one step and, right after it, the z -> shifts map: the machine's load (shared
        # here) then hits both alike, and the fraction is the median of the per-round ratios.
        step_ms, shift_ms = [], []
        for _ in range(steps):
            _sync()
            start = time.perf_counter()
            trainer.train_step([items])
            _sync()
            step_ms.append((time.perf_counter() - start) * 1e3)
            shift_ms.append(time_shift_step(model.adapter.projection, d, device, shift_repeats) * 1e3)
        out.append({"kind": kind, "d": d, "layers": layers, "hidden": hidden, "batch_size": batch_size,
                    "seq_len": seq_len, "shift_ms": statistics.median(shift_ms),
                    "jr_step_ms": statistics.median(step_ms),
                    "fraction": statistics.median(z / t for z, t in zip(shift_ms, step_ms)), "steps": steps})
        model.adapter.remove_hooks()
        del model.adapter, trainer
        release_memory()
    return out


# ---------------------------------------------------------------- targets and environment

def _find(rows: list[dict], label: str) -> dict | None:
    return next((r for r in rows if r["label"] == label), None)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets evaluated on this report's rows (a target whose rows are absent is left out)."""
    tr, pr = report.get("train", []), report.get("private", [])
    out = []

    def add(name: str, value: float, goal: str, met: bool, detail: str) -> None:
        out.append({"name": name, "value": value, "target": goal, "met": bool(met), "detail": detail})

    full, jr = _find(tr, "full"), _find(tr, "jr dense")
    if full and jr:
        v = jr["step_ms"] / full["step_ms"]
        add("jr step / full step", v, "<= 0.70", v <= 0.70, f"{jr['step_ms']:.1f} / {full['step_ms']:.1f} ms")
    pjr = _find(pr, "jr dense")
    if pjr and jr:
        v = pjr["step_ms"] / jr["step_ms"]
        add("private jr step / jr step", v, "<= 1.10", v <= 1.10, f"{pjr['step_ms']:.1f} / {jr['step_ms']:.1f} ms")
    pfull = _find(pr, "full")
    if pjr and pfull:
        v = pfull["step_ms"] / pjr["step_ms"]
        add("opacus private full step / private jr step", v, ">= 4", v >= 4,
            f"{pfull['step_ms']:.1f} / {pjr['step_ms']:.1f} ms")
    naive = _find(pr, "naive_jr")
    if pjr and naive:
        v = naive["step_ms"] / pjr["step_ms"]
        add("naive reference private step / private jr step", v, "> 1", v > 1,
            f"{naive['step_ms']:.1f} / {pjr['step_ms']:.1f} ms")
    inf = {r["model"]: r for r in report.get("inference", [])}
    if "exported" in inf:
        v = inf["exported"]["vs_base"]
        add("exported latency / base latency", v, "1.00 +- 0.05", abs(v - 1) <= 0.05,
            f"{inf['exported']['median_ms']:.1f} / {inf['base']['median_ms']:.1f} ms")
    for r in report.get("shift_vs_step", []):
        if r["kind"] == "structured":
            add(f"structured z->shifts / jr step (L={r['layers']}, H={r['hidden']}, d={r['d']})", r["fraction"],
                "< 0.02", r["fraction"] < 0.02, f"{r['shift_ms']:.2f} / {r['jr_step_ms']:.1f} ms")
    return out


def environment(device: torch.device) -> dict[str, Any]:
    """Machine and library versions for the report."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    env = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {"python": platform.python_version(),
                     **{n: ver(n) for n in ("jrft", "torch", "transformers", "peft", "opacus")}},
    }
    try:
        import psutil

        env["memory_total_gb"] = psutil.virtual_memory().total / 1e9
        env["memory_available_gb"] = psutil.virtual_memory().available / 1e9
    except ImportError:
        pass
    return env


__all__ = ["SCHEMA", "METHOD_CHOICES", "SECTIONS", "PRIVATE_METHODS", "Row", "synthetic_batch", "PeakMemory",
           "time_steps", "Runner", "prepare_train", "prepare_private", "run_rows", "inference_rows", "shift_vs_step", "projection_table",
           "targets", "environment", "release_memory"]
