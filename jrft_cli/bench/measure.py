"""Timing helpers shared by the benchmark scripts and `jrft bench`."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def inference_latency(models: dict[str, Callable[[], Any]], repeats: int = 30, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median / quartile latency (ms) of each zero-argument forward in `models`.

    The models run round-robin (one call of each per round) so drift in machine load hits all of
    them alike; the first `warmup` rounds are discarded."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + repeats):
        for name, fn in models.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            if r >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[name] = {"median_ms": statistics.median(ts), "q1_ms": q[0], "q3_ms": q[2], "repeats": len(ts)}
    return out


def time_shift_step(proj: torch.nn.Module, d: int, device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """Median seconds of one z -> all-shifts forward + backward of their sum (after one warm-up call)."""
    z = torch.randn(d, device=device, requires_grad=True)
    times = []
    for _ in range(repeats + 1):
        _sync()
        start = time.perf_counter()
        proj(z).sum().backward()
        _sync()
        times.append(time.perf_counter() - start)
        z.grad = None
    return statistics.median(times[1:])


def projection_table(layers: int = 24, hidden: int = 1024, dims: tuple[int, ...] = (1024, 4096, 16384, 65536),
                     device: torch.device | str = "cpu", repeats: int = 3,
                     max_dense_bytes: float = 4e9) -> list[dict[str, Any]]:
    """Bytes held, build time and z -> shifts forward+backward time of every projection kind and d.

    Dense projections larger than `max_dense_bytes` are not allocated: their row says so
    (`skipped`) and gives the bytes they would hold."""
    from jrft_cli.core.projection import PROJECTION_KINDS, make_projection

    device = torch.device(device)
    rows: list[dict[str, Any]] = []
    for d in dims:
        for kind in PROJECTION_KINDS:
            row: dict[str, Any] = {"kind": kind, "d": d, "layers": layers, "hidden": hidden}
            if kind == "dense" and layers * d * hidden * 4 > max_dense_bytes:
                rows.append({**row, "bytes": layers * d * hidden * 4, "build_s": None, "shift_ms": None,
                             "skipped": f"dense matrices would exceed {max_dense_bytes / 1e9:.2g} GB"})
                continue
            start = time.perf_counter()
            proj = make_projection(kind, d, layers, hidden, seed=0, device=device)
            _sync()
            build = time.perf_counter() - start
            step = time_shift_step(proj, d, device, repeats)
            rows.append({**row, "bytes": proj.nbytes(), "build_s": build, "shift_ms": step * 1e3, "skipped": None})
            del proj
    return rows


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
    from jrft_cli.training.loop import LoopConfig, Trainer
    from jrft_cli.tasks.evaluation import TaskInfo
    from jrft_cli.core.registry import apply_method
    from jrft_cli.core.backbone import SequenceClassifier
    from jrft_cli.dp.accounting import poisson_sample
    from jrft_cli.dp.private import PrivacyPlan
    from jrft_cli.training.private_loop import PrivateTrainer

    n = len(examples)
    q = batch_size / n
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(ex["input_ids"]) for ex in examples])
    # sorted by length, as PrivateTrainer.private_step orders its micro-batches (less padding)
    batches = [b[torch.argsort(lengths[b], stable=True)] for b in (poisson_sample(n, q, gen) for _ in range(steps + 1))]
    task = TaskInfo(False, ["accuracy"], "accuracy")
    lr = {"full": 2e-5, "lora": 5e-4, "bitfit": 1e-3}
    options = {"jr": {"d": d}, "jr_warp": {"d": d},
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
