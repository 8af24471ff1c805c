"""`jrft bench`: training / private / inference speed and memory of every method, side by side in one
process (same model, batch and sequence length), plus the projection table; writes JSON + Markdown."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from jrft_cli.cli import OneLineParser
from typing import Any

HELP = "speed and memory of every method side by side (train, private, inference, projections)"
DEFAULT_OUT = Path("docs/benchmarks")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1024,4096")
    return values


def _choice_list(choices: tuple[str, ...], what: str):
    def parse(text: str) -> list[str]:
        values = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{what} {','.join(bad) or text!r} not valid; choose from {','.join(choices)}")
        return list(dict.fromkeys(values))
    return parse


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} integer")
        return v
    return parse


_positive = _int_at_least(1, "positive")
_non_negative = _int_at_least(0, "non-negative")


# Sections run only when named in --only: many tasks on one backbone (jrft_cli.bench.multitask).
EXTRA_SECTIONS = ("multitask", "serving")


def parser() -> argparse.ArgumentParser:
    from jrft_cli.bench.sections import METHOD_CHOICES, SECTIONS

    p = OneLineParser(prog="jrft bench", description=HELP)
    p.add_argument("--model", default="minilm",
                   help="a conf/model key (minilm, roberta-base, ...), a Hub id or a local path (default: minilm)")
    p.add_argument("--seq-len", type=_positive, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--batch-size", type=_positive, default=32, help="sequences per step (default 32)")
    p.add_argument("--steps", type=_positive, default=10, help="timed steps per row (default 10)")
    p.add_argument("--warmup", type=_non_negative, default=3, help="untimed warm-up steps per row (default 3)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--methods", type=_choice_list(METHOD_CHOICES, "--methods"), default=list(METHOD_CHOICES),
                   help=f"comma list from {','.join(METHOD_CHOICES)} (default: all; jr gives a dense and a "
                        "structured row; naive_jr is the reference jr, dense W_l parameters + opacus)")
    p.add_argument("--private", action=argparse.BooleanOptionalAction, default=True,
                   help="measure private (DP-SGD) steps too (default: yes)")
    p.add_argument("--only", type=_choice_list(SECTIONS + EXTRA_SECTIONS, "--only"), default=list(SECTIONS),
                   help=f"comma list of sections from {','.join(SECTIONS + EXTRA_SECTIONS)} (default: "
                        f"{','.join(SECTIONS)}; {' and '.join(EXTRA_SECTIONS)} only when named)")
    p.add_argument("--task-counts", type=_int_list, default=[1, 8, 64],
                   help="multitask: numbers of tasks mixed in the batch (default 1,8,64)")
    p.add_argument("--lora-r", type=_positive, default=8, help="multitask: rank of the PEFT LoRA adapters (default 8)")
    p.add_argument("--serve-task-counts", type=_int_list, default=[1, 64],
                   help="serving: numbers of tasks served (default 1,64)")
    p.add_argument("--serve-concurrency", type=_positive, default=16, help="serving: concurrent clients (default 16)")
    p.add_argument("--serve-requests", type=_positive, default=256, help="serving: requests in all (default 256)")
    p.add_argument("--serve-max-batch", type=_positive, default=64, help="serving: server's --max-batch-size (64)")
    p.add_argument("--serve-max-wait-ms", type=float, default=5.0, help="serving: server's --max-wait-ms (5)")
    p.add_argument("--d", type=_positive, default=1024, help="size of z for jr / jr_warp / naive_jr (default 1024)")
    p.add_argument("--repeats", type=_positive, default=20, help="inference: timed round-robin repeats (default 20)")
    p.add_argument("--proj-layers", type=_positive, default=24, help="projection section: L (default 24, RoBERTa-large)")
    p.add_argument("--proj-hidden", type=_positive, default=1024, help="projection section: H (default 1024)")
    p.add_argument("--proj-dims", type=_int_list, default=[1024, 4096, 16384, 65536],
                   help="projection table: comma list of d (default 1024,4096,16384,65536)")
    p.add_argument("--max-dense-gb", type=float, default=4.0,
                   help="do not allocate dense projections above this size (default 4; capped by free memory)")
    p.add_argument("--shift-step", action=argparse.BooleanOptionalAction, default=True,
                   help="projection section: also time one jr training step of a random RoBERTa with "
                        "--proj-layers x --proj-hidden (default: yes)")
    p.add_argument("--shift-d", type=_positive, default=4096, help="d for the z->shifts vs step comparison (default 4096)")
    p.add_argument("--shift-batch", type=_positive, default=2, help="batch of that step (default 2)")
    p.add_argument("--shift-seq", type=_positive, default=32, help="sequence length of that step (default 32)")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a line for the report's notes (repeatable), e.g. what else ran on the machine")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report directory (default {DEFAULT_OUT})")
    p.add_argument("--name", default=None, help="report file stem (default bench_<cpu|cuda>)")
    return p


def _compose(overrides: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from jrft_cli.cli.config import compose

    return OmegaConf.to_container(compose(["logger=none"] + overrides), resolve=True)


def _configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each method's config as `jrft train` composes it, with the benchmark's model and d."""
    from jrft_cli.cli.config import group_choices

    model_override = [f"model={args.model}"] if args.model in group_choices("model") else []
    out = {}
    for m in ("full", "bitfit", "lora", "linear", "jr", "jr_warp"):
        cfg = _compose(model_override + [f"method={m}", f"d={args.d}"])
        if not model_override:
            cfg["model"] = {"key": args.model, "name": args.model, "revision": None}
        out[m] = cfg
    return out


def _rows(args: argparse.Namespace, cfgs: dict[str, dict[str, Any]], tokenizer: Any, private: bool):
    from jrft_cli.bench.sections import PRIVATE_METHODS, Row
    from jrft_cli.bench.naive_jr import apply_naive_jr
    from jrft_cli.training.recipe import build_model

    def builder(cfg: dict[str, Any]):
        return lambda: build_model(cfg, tokenizer, 2)

    def naive_builder():
        jr = cfgs["jr"]
        model = build_model({**jr, "method": {**jr["method"], "name": "linear"}}, tokenizer, 2)
        apply_naive_jr(model, args.d, seed=jr["method"]["projection_seed"])
        return model

    rows = []
    for m in args.methods:
        if private and m not in PRIVATE_METHODS + ("naive_jr",):
            continue
        if m == "jr":
            for kind in ("dense", "structured"):
                cfg = {**cfgs["jr"], "method": {**cfgs["jr"]["method"], "projection": kind}}
                rows.append(Row(f"jr {kind}", "jr", builder(cfg), cfg["method"]["lr"], {"projection": kind, "d": args.d}))
        elif m == "naive_jr":
            rows.append(Row("naive_jr", "naive_jr", naive_builder, cfgs["jr"]["method"]["lr"],
                            {"projection": "dense (frozen nn.Parameter)", "d": args.d}))
        else:
            extra = {"d": args.d} if m == "jr_warp" else {}
            rows.append(Row(m, m, builder(cfgs[m]), cfgs[m]["method"]["lr"], extra))
    return rows


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    import importlib.util
    import os

    import torch
    from transformers.utils import logging as hf_logging

    from jrft_cli.bench import sections as bench
    from jrft_cli.tasks.glue import make_collate
    from jrft_cli.training.loop import resolve_device
    from jrft_cli.core.backbone import load_tokenizer, model_id

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    env = bench.environment(device)
    env["load_average_before"] = env.pop("load_average")
    log = lambda msg: print(f"jrft bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731

    cfgs = _configs(args)
    model_name = cfgs["jr"]["model"]["name"]
    report: dict[str, Any] = {
        "schema": bench.SCHEMA,
        "command": "jrft bench " + " ".join(shlex.quote(a) for a in argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": env,
        "config": {"model": model_name, "model_id": model_id(model_name), "seq_len": args.seq_len,
                   "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "d": args.d,
                   "methods": args.methods, "sections": args.only, "private": args.private,
                   "noise_multiplier": 1.0, "max_grad_norm": 1.0, "inference_repeats": args.repeats},
        "notes": list(args.note),
    }
    needs_model = any(s in args.only for s in ("train", "private", "inference"))
    if needs_model:
        tokenizer = load_tokenizer(model_name)
        items = bench.synthetic_batch(tokenizer, args.batch_size, args.seq_len)
        collate = make_collate(tokenizer, is_regression=False)
    # Train and private rows share one pool of round-robin rounds (see bench.run_rows); a method's
    # private row runs right after its non-private one, so their ratio sees the same machine load.
    total = max(1, args.warmup) + args.steps
    prepare: dict[str, list] = {}
    if "train" in args.only:
        for row in _rows(args, cfgs, tokenizer, private=False):
            prepare.setdefault(row.label, []).append(
                lambda row=row: bench.prepare_train(row, items, collate, device, total))
    if "private" in args.only and args.private:
        rows = _rows(args, cfgs, tokenizer, private=True)
        if importlib.util.find_spec("jrft_cli.dp.private") is None:
            pending = [r.label for r in rows if r.method != "naive_jr"]
            rows = [r for r in rows if r.method == "naive_jr"]
            report["notes"].append(f"private rows {', '.join(pending)} pending: jrft_cli.dp.private is not in this build")
        for row in rows:
            prepare.setdefault(row.label, []).append(
                lambda row=row: bench.prepare_private(row, items, collate, device, total))
    prepare = [make for makes in prepare.values() for make in makes]
    if prepare:
        measured = bench.run_rows(prepare, args.steps, args.warmup, device, log)
        for section in ("train", "private"):
            if any(s == section for s, _ in measured):
                report[section] = [r for s, r in measured if s == section]
    if "inference" in args.only:
        log("inference: base, jr (hooks), exported")
        jr = cfgs["jr"]
        base_cfg = {**jr, "method": {**jr["method"], "name": "linear"}}
        from jrft_cli.training.recipe import build_model

        rows, diff = bench.inference_rows(lambda: build_model(base_cfg, tokenizer, 2),
                                          lambda: build_model(jr, tokenizer, 2), jr, tokenizer,
                                          items, collate, device, args.repeats, warmup=3)
        report["inference"], report["inference_max_logit_diff"] = rows, diff
    if "projection" in args.only:
        import psutil

        available = psutil.virtual_memory().available
        # Never allocate more than half the free memory (the machine may be shared).
        max_dense = min(args.max_dense_gb * 1e9, available / 2)
        log(f"projection table: L={args.proj_layers}, H={args.proj_hidden}, d in {args.proj_dims}")
        report["projection"] = bench.projection_table(args.proj_layers, args.proj_hidden, tuple(args.proj_dims),
                                                      device, repeats=5, max_dense_bytes=max_dense)
        if args.shift_step:
            h, L = args.proj_hidden, args.proj_layers
            need = 4 * (L * 12 * h * h + 50265 * h) * 1.5 + 4 * L * args.shift_d * h   # weights + slack + dense W
            if device.type == "cpu" and need > psutil.virtual_memory().available * 0.8:
                report["notes"].append(f"z->shifts vs step skipped: the random L={L}, H={h} model needs about "
                                       f"{need / 1e9:.1f} GB and {psutil.virtual_memory().available / 1e9:.1f} GB are free")
            else:
                report["shift_vs_step"] = bench.shift_vs_step(L, h, args.shift_d, args.shift_batch, args.shift_seq,
                                                              steps=3, warmup=1, device=device, log=log)
    if "multitask" in args.only or "serving" in args.only:
        _multitask_sections(args, report, model_name, log)
    report["targets"] = bench.targets(report)
    if "multitask" in report:
        from jrft_cli.bench.multitask import targets as multitask_targets

        report["targets"] += multitask_targets(report)
    for t in report["targets"]:
        if not t["met"]:
            report["notes"].append(f"target missed: {t['name']} = {t['value']:.3f} (goal {t['target']}; {t['detail']})")
    env["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def _multitask_sections(args: argparse.Namespace, report: dict[str, Any], model_name: str, log) -> None:
    """Mixed-task batches against single-task jr and PEFT LoRA with N adapters; serving throughput."""
    import os

    from jrft_cli.bench import multitask
    from jrft_cli.core.backbone import load_tokenizer

    tokenizer = load_tokenizer(model_name)
    task = _compose(["task=sst2"])["task"]
    report["config"].update(task_counts=args.task_counts, lora_r=args.lora_r)
    if "multitask" in args.only:
        report["multitask"] = multitask.mixed_batch_rows(
            model_name, tokenizer, task, task_counts=args.task_counts, batch_size=args.batch_size,
            seq_len=args.seq_len, d=args.d, lora_r=args.lora_r, rounds=args.repeats, warmup=args.warmup, log=log)
    if "serving" in args.only:
        report["config"].update(serve_task_counts=args.serve_task_counts, serve_concurrency=args.serve_concurrency,
                                serve_requests=args.serve_requests, serve_max_batch=args.serve_max_batch,
                                serve_max_wait_ms=args.serve_max_wait_ms)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                         os.environ.get("PYTHONPATH")]))}
        report["serving"] = multitask.serving_rows(
            model_name, tokenizer, task, task_counts=args.serve_task_counts, d=args.d, seq_len=args.seq_len,
            concurrency=args.serve_concurrency, requests=args.serve_requests, max_batch_size=args.serve_max_batch,
            max_wait_ms=args.serve_max_wait_ms, threads=args.threads, env=env, log=log)


def main(argv: list[str]) -> int:
    from jrft_cli.core.errors import JrftError

    args = parser().parse_args(argv)
    try:
        report = run(args, argv)
    except JrftError as e:
        print(f"jrft bench: error: {e}", file=sys.stderr)
        return 2
    from jrft_cli.bench.report import markdown, print_tables
    from jrft_cli.core.files import write_json_atomic

    print_tables(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"bench_{report['environment']['device'].split(':')[0]}"
    write_json_atomic(args.out / f"{stem}.json", report)
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(f"jrft bench: wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")
    return 0
