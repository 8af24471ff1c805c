"""`jrft bench`: speed and memory of every method side by side in one process (same model, batch and
sequence length): training steps, evaluation forwards, private steps, inference latency and the
projection table. Writes <stem>.json and <stem>.md under outputs/bench/<time>/ unless --out names
another folder (see jrft_cli/bench/ for what each section measures)."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from jrft_cli.cli import OneLineParser

HELP = "speed and memory of every method side by side (train, eval, private, inference, projections)"
DEFAULT_ROOT = Path("outputs/bench")


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


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return v


_positive = _int_at_least(1, "positive")

# Sections run only when named in --only: many tasks on one backbone (jrft_cli.bench.multitask).
EXTRA_SECTIONS = ("multitask", "serving")


def parser() -> argparse.ArgumentParser:
    from jrft_cli.bench.rows import NAIVE, PRECISIONS, SUBJECT
    from jrft_cli.bench.run import SECTIONS
    from jrft_cli.bench.workload import ORDERINGS
    from jrft_cli.core.conf import group_choices
    from jrft_cli.core.registry import method_names

    methods = method_names()
    p = OneLineParser(prog="jrft bench", description=HELP)
    p.add_argument("--model", default="minilm",
                   help="a conf/model key (minilm, roberta-base, ...), a Hub id or a local path (default: minilm)")
    p.add_argument("--methods", type=_choice_list(methods, "--methods"), default=list(methods),
                   help=f"comma list of registered methods from {','.join(methods)} (default: all)")
    p.add_argument("--vary", action="append", default=None, metavar="OPTION=V1,V2",
                   help="one row per value of a method option, for every method that has the option "
                        "(repeatable; default: projection=dense,structured where a method has it)")
    p.add_argument("--precisions", type=_choice_list(PRECISIONS, "--precisions"), default=["fp32"],
                   help=f"comma list from {','.join(PRECISIONS)}: one train/eval/private row per value, run as "
                        "hardware.precision runs it (bf16 on CPU: autocast with eager attention) (default fp32)")
    p.add_argument("--orderings", type=_choice_list(ORDERINGS, "--orderings"), default=["random"],
                   help=f"comma list from {','.join(ORDERINGS)}: one training row per value, stepping on "
                        "--batches-per-round loop batches of --batch-size ordered as train.group_by_length=false "
                        "(random) or true (grouped) orders an epoch; needs --data (default random: the plain batch)")
    p.add_argument("--batches-per-round", type=_positive, default=4,
                   help="with --orderings: loop batches per timed training call, picked at evenly spaced "
                        "quantiles of the epoch's batch widths (default 4)")
    p.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                   help=f"add the {NAIVE} rows: {SUBJECT} written the straightforward way (dense W_l "
                        "parameters, opacus' generic per-sample hooks), for comparison (default: yes)")
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
    p.add_argument("--serve-max-wait-ms", type=_positive_float, default=5.0, help="serving: server's --max-wait-ms (5)")
    p.add_argument("--d", type=_positive, default=1024, help="the top-level d of conf/config.yaml (default 1024)")
    p.add_argument("--seed", type=_int_at_least(0, "non-negative"), default=0, help="seed (default 0)")
    p.add_argument("--seq-len", type=_positive, default=64,
                   help="tokens per synthetic sequence; with --data, the maximum length (default 64)")
    p.add_argument("--batch-size", type=_positive, default=32,
                   help="sequences per step; with --data, the expected Poisson batch size (default 32)")
    p.add_argument("--micro-batch-size", type=_positive, default=None,
                   help="physical batch: steps accumulate over micro-batches of this size (default: the whole batch)")
    p.add_argument("--data", choices=group_choices("task"), default=None,
                   help="draw Poisson batches from this GLUE task's training rows instead of the synthetic batch")
    p.add_argument("--data-dir", default=None, help="glue_data/ root for --data (default: $JRFT_GLUE_DIR, else the Hub)")
    p.add_argument("--data-rows", type=_positive, default=2000,
                   help="with --data: use the first N training rows (default 2000)")
    p.add_argument("--steps", type=_positive, default=10, help="timed round-robin rounds (default 10)")
    p.add_argument("--warmup", type=_positive, default=3, help="untimed warm-up calls per row (default 3)")
    p.add_argument("--noise-multiplier", type=_positive_float, default=1.0, help="private rows' sigma (default 1.0)")
    p.add_argument("--max-grad-norm", type=_positive_float, default=1.0, help="private rows' clipping norm C (default 1.0)")
    p.add_argument("--opacus-mode", choices=["auto", "ghost", "hooks"], default="auto",
                   help="opacus grad-sample mode of private rows on the opacus path (default: each method's own)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--inference-methods", type=_choice_list(methods, "--inference-methods"), default=[SUBJECT],
                   help=f"methods timed as jrft runs them and exported, against the base model (default {SUBJECT})")
    p.add_argument("--repeats", type=_positive, default=20, help="inference: timed round-robin rounds (default 20)")
    p.add_argument("--proj-layers", type=_positive, default=24, help="projection section: L (default 24, RoBERTa-large)")
    p.add_argument("--proj-hidden", type=_positive, default=1024, help="projection section: H (default 1024)")
    p.add_argument("--proj-dims", type=_int_list, default=[1024, 4096, 16384, 65536],
                   help="projection table: comma list of d (default 1024,4096,16384,65536)")
    p.add_argument("--proj-repeats", type=_positive, default=5, help="projection table: timed calls per row (default 5)")
    p.add_argument("--max-dense-gb", type=_positive_float, default=4.0,
                   help="do not allocate dense projections above this size (default 4; capped by free memory)")
    p.add_argument("--shift-step", action=argparse.BooleanOptionalAction, default=True,
                   help=f"projection section: also time one {SUBJECT} training step of a random RoBERTa with "
                        "--proj-layers x --proj-hidden (default: yes)")
    p.add_argument("--shift-d", type=_positive, default=4096, help="d for the z->shifts vs step comparison (default 4096)")
    p.add_argument("--shift-batch", type=_positive, default=2, help="batch of that step (default 2)")
    p.add_argument("--shift-seq", type=_positive, default=32, help="sequence length of that step (default 32)")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a line for the report's notes (repeatable), e.g. what else ran on the machine")
    p.add_argument("--out", type=Path, default=None,
                   help=f"report folder (default {DEFAULT_ROOT}/<date>_<time>); an existing report file there is "
                        "replaced only if jrft bench wrote it and nobody edited it since")
    p.add_argument("--name", default=None, help="report file stem (default bench_<cpu|cuda>)")
    return p


def _compose(args: argparse.Namespace) -> dict[str, Any]:
    """The model and task configs as `jrft train` composes them (the task: --data, else sst2, whose
    labels the synthetic batch and the exported artifact use)."""
    from omegaconf import OmegaConf

    from jrft_cli.cli.config import compose
    from jrft_cli.core.conf import group_choices

    overrides = ["logger=none", f"task={args.data or 'sst2'}"]
    known_model = args.model in group_choices("model")
    if known_model:
        overrides.append(f"model={args.model}")
    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    if not known_model:
        cfg["model"] = {"key": args.model, "name": args.model, "revision": None}
    return cfg


def _settings(args: argparse.Namespace, cfg: dict[str, Any], device: Any = None) -> Any:
    """The settings `args` ask for, checked (methods, --vary, precisions on `device`, orderings) before
    anything loads."""
    import torch

    from jrft_cli.bench.rows import DEFAULT_VARY, applicable, method_rows, parse_vary, run_axes
    from jrft_cli.bench.run import BenchSettings
    from jrft_cli.core.backbone import model_id
    from jrft_cli.core.errors import JrftError
    from jrft_cli.training.loop import autocast_dtype

    # The default varies only what the chosen methods have; an explicit --vary must apply to one of them.
    vary = parse_vary(args.vary) if args.vary is not None else applicable(DEFAULT_VARY, args.methods)
    axes = run_axes(args.precisions, args.orderings)
    method_rows(args.methods, vary, d=args.d, seed=args.seed, naive=args.naive, axes=axes)   # checks before anything loads
    for precision in args.precisions:      # e.g. fp16 on CPU: refused as `jrft train` refuses it
        try:
            autocast_dtype(precision, device or torch.device("cpu"))
        except JrftError as e:
            raise JrftError(f"--precisions {precision}: {e}") from None
    if "ordering" in axes and not args.data:
        raise JrftError(f"--orderings {','.join(args.orderings)} needs --data (a GLUE task): the synthetic batch has "
                        "one length, so every ordering would be the same")
    task = cfg["task"]
    return BenchSettings(
        model_name=cfg["model"]["name"], model_id=model_id(cfg["model"]["name"]), methods=args.methods,
        sections=[x for x in args.only if x not in EXTRA_SECTIONS], vary=vary, precisions=args.precisions,
        orderings=args.orderings, batches_per_round=args.batches_per_round, naive=args.naive, d=args.d,
        seed=args.seed, batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size, seq_len=args.seq_len, steps=args.steps, warmup=args.warmup,
        noise_multiplier=args.noise_multiplier, max_grad_norm=args.max_grad_norm, opacus_mode=args.opacus_mode,
        data=args.data, num_labels=1 if task["is_regression"] else len(task["labels"]),
        inference_methods=args.inference_methods, repeats=args.repeats, proj_layers=args.proj_layers,
        proj_hidden=args.proj_hidden, proj_dims=args.proj_dims, proj_repeats=args.proj_repeats,
        max_dense_bytes=args.max_dense_gb * 1e9, shift_step=args.shift_step, shift_d=args.shift_d,
        shift_batch=args.shift_batch, shift_seq=args.shift_seq, notes=list(args.note))


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Measure what `args` asks for; returns the report."""
    import os

    import torch
    from transformers.utils import logging as hf_logging

    from jrft_cli.bench.run import run_bench
    from jrft_cli.core.backbone import load_tokenizer
    from jrft_cli.tasks.evaluation import TaskInfo
    from jrft_cli.tasks.glue import encode, load_split, make_collate
    from jrft_cli.training.loop import resolve_device

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = _compose(args)
    settings = _settings(args, cfg, device)
    task = cfg["task"]
    if set(args.only) <= {"projection"}:       # random-weight models only: no tokenizer, no data
        tokenizer = collate = None
    else:
        tokenizer = load_tokenizer(settings.model_name)
        collate = make_collate(tokenizer, task["is_regression"])
    if args.data and tokenizer is not None:
        data_dir = args.data_dir or os.environ.get("JRFT_GLUE_DIR")
        examples = load_split(task, "train", data_dir, args.data_rows)
        settings.examples = encode(examples, tokenizer, mask_format=True, max_length=args.seq_len)
    log = lambda msg: print(f"jrft bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    report = run_bench(settings, tokenizer=tokenizer, collate=collate,
                       task=TaskInfo(task["is_regression"], task["metrics"], task["main_metric"]), task_record=task,
                       device=device, command="jrft bench " + " ".join(shlex.quote(a) for a in argv), log=log)
    if "multitask" in args.only or "serving" in args.only:
        _multitask_sections(args, report, settings.model_name, task, log)
    return report


def _multitask_sections(args: argparse.Namespace, report: dict[str, Any], model_name: str, task: dict[str, Any],
                        log) -> None:
    """Mixed-task batches against single-task jr and PEFT LoRA with N adapters; serving throughput."""
    import os

    from jrft_cli.bench import multitask
    from jrft_cli.core.backbone import load_tokenizer

    tokenizer = load_tokenizer(model_name)
    report["config"].update(task_counts=args.task_counts, lora_r=args.lora_r, inference_repeats=args.repeats)
    if "multitask" in args.only:
        report["multitask"] = multitask.mixed_batch_rows(
            model_name, tokenizer, task, task_counts=args.task_counts, batch_size=args.batch_size,
            seq_len=args.seq_len, d=args.d, lora_r=args.lora_r, rounds=args.repeats, warmup=args.warmup, log=log)
        for t in multitask.targets(report):
            report["targets"].append(t)
            if not t["met"]:
                report["notes"].append(f"target missed: {t['name']} = {t['value']:.3f} (goal {t['target']}; {t['detail']})")
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
    from jrft_cli.bench.report import check_writable, print_tables, write_report
    from jrft_cli.core.errors import JrftError

    args = parser().parse_args(argv)
    out = args.out or DEFAULT_ROOT / time.strftime("%Y-%m-%d_%H-%M-%S")
    try:
        stem = args.name or f"bench_{'cuda' if _uses_cuda(args.device) else 'cpu'}"
        check_writable(out, stem)            # before measuring: a refusal must not cost the whole run
        report = run(args, argv)
        print_tables(report)
        json_path, md_path = write_report(report, out, stem)
    except JrftError as e:
        print(f"jrft bench: error: {e}", file=sys.stderr)
        return 2
    print(f"jrft bench: wrote {json_path} and {md_path}")
    return 0


def _uses_cuda(device: str) -> bool:
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device == "cuda"
