"""A `jrft bench` report: its environment record, its Markdown and rich renderings, and writing it.

Writing never replaces a file `jrft bench` did not write: the Markdown's first line is a comment
holding the SHA-256 of the rest of the file, and an existing <stem>.md is overwritten only when that
line matches (an untouched earlier report); an existing <stem>.json only when it is a jrft bench
report. Anything else (a hand-written page, a report edited by hand) stops the command with a
one-line error before anything is measured or written. Hand-written readings of a recorded report
therefore live in files of their own (docs/benchmarks/README.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

from jrft_cli.bench.rows import DEFAULT_AXES, SUBJECT
from jrft_cli.bench.targets import BASELINE, find_row, same_batches, speedup
from jrft_cli.core.errors import JrftError

SCHEMA = "jrft-bench/2"
_MARK = "<!-- written by jrft bench; sha256 of the rest of this file: {} -->"
_MARK_RE = re.compile(r"^<!-- written by jrft bench; sha256 of the rest of this file: ([0-9a-f]{64}) -->$")
_MEMORY = {"rss_growth": "RSS growth (MiB)", "cuda_max_allocated": "CUDA peak growth (MiB)"}


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
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
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


# ---------------------------------------------------------------- tables

def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _iqr(r: dict[str, Any]) -> str:
    return f"{r['q1_ms']:.0f}-{r['q3_ms']:.0f}"


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every section present in the report."""
    out = []
    train = report.get("train", [])
    if train:
        ref = find_row(train, {"method": BASELINE})
        header = ["row", "step ms (median)", "q1-q3 ms", f"vs {BASELINE}", "examples/s",
                  _MEMORY[train[0]["memory_kind"]], "trainable params"]
        rows = [[r["label"], _fmt(r["median_ms"]), _iqr(r),
                 _fmt(r["median_ms"] / ref["median_ms"], ".2f") if ref and same_batches(r, ref) else "-",
                 _fmt(r["examples_per_s"]),
                 _fmt(r["memory_mb"], ".0f"), _fmt(r["trainable_params"])] for r in train]
        if any(k in r["id"] for r in train for k in DEFAULT_AXES):
            # each row against the same method's fp32, random-order row (an ordering row's steps take
            # more examples than a plain row's, so milliseconds do not compare; examples/s do)
            base = "/".join(DEFAULT_AXES.values())
            header += ["attention", f"examples/s vs {base}"]
            for cells, r in zip(rows, train):
                own = {k: v for k, v in r["id"].items() if k not in DEFAULT_AXES}
                b = find_row(train, own)
                cells += [r.get("attn_implementation") or "-",
                          _fmt(speedup(r, b), ".2f") if b and "examples" in r and "examples" in b else "-"]
        out.append(("Training step", header, rows))
    if report.get("eval"):
        rows = report["eval"]
        out.append(("Evaluation forward (no_grad)", ["row", "batch ms (median)", "q1-q3 ms", "examples/s",
                                                      _MEMORY[rows[0]["memory_kind"]]],
                    [[r["label"], _fmt(r["median_ms"]), _iqr(r), _fmt(r["examples_per_s"]), _fmt(r["memory_mb"], ".0f")]
                     for r in rows]))
    if report.get("private"):
        rows = report["private"]
        # paired by identity, and only where both stepped on the round's batch (milliseconds compare)
        nonprivate = {json.dumps(r["id"], sort_keys=True): r["median_ms"] for r in train if r.get("batches", "round") == "round"}
        out.append(("Private (DP-SGD) step", ["row", "per-example gradients", "step ms (median)", "q1-q3 ms",
                                              "vs its non-private step", "examples/s", _MEMORY[rows[0]["memory_kind"]]],
                    [[r["label"], r["path"], _fmt(r["median_ms"]), _iqr(r),
                      _fmt(r["median_ms"] / nonprivate[k], ".2f") if (k := json.dumps(r["id"], sort_keys=True)) in nonprivate else "-",
                      _fmt(r["examples_per_s"]), _fmt(r["memory_mb"], ".0f")] for r in rows]))
    if report.get("inference"):
        out.append(("Inference latency", ["model", "median ms", "q1 ms", "q3 ms", "vs base", "max |logit diff| vs jrft"],
                    [[r["label"], _fmt(r["median_ms"]), _fmt(r["q1_ms"]), _fmt(r["q3_ms"]), _fmt(r["vs_base"], ".3f"),
                      _fmt(r.get("max_abs_logit_diff"), ".2g")] for r in report["inference"]]))
    if report.get("projection"):
        out.append(("Projections (z -> all shifts, forward + backward)", ["kind", "L", "H", "d", "bytes held",
                                                                           "build s", "fwd+bwd ms"],
                    [[r["kind"], str(r["layers"]), str(r["hidden"]), str(r["d"]),
                      _fmt(r["bytes"]) + (" (not allocated)" if r["skipped"] else ""),
                      _fmt(r["build_s"], ".2f") if not r["skipped"] else f"skipped: {r['skipped']}",
                      _fmt(r["shift_ms"], ".2f")] for r in report["projection"]]))
    if report.get("shift_vs_step"):
        subject = report["config"].get("subject", SUBJECT)
        out.append((f"z -> shifts time vs one {subject} training step",
                    ["projection", "L", "H", "d", "batch x seq", "z->shifts ms", "step ms", "fraction (median of rounds)"],
                    [[r["kind"], str(r["layers"]), str(r["hidden"]), str(r["d"]), f"{r['batch_size']} x {r['seq_len']}",
                      _fmt(r["shift_ms"], ".2f"), _fmt(r["step_ms"]), _fmt(r["fraction"], ".2%")]
                     for r in report["shift_vs_step"]]))
    if report.get("multitask"):
        out.append(("Many tasks in one batch (same batch; vs the single-task jr model)",
                    ["model", "tasks in the batch", "median ms", "q1-q3 ms", "vs jr (1 task)"],
                    [[r["model"], str(r["tasks"]), _fmt(r["median_ms"]), f"{r['q1_ms']:.0f}-{r['q3_ms']:.0f}",
                      _fmt(r["vs_jr_single"], ".3f")] for r in report["multitask"]]))
    if report.get("serving"):
        out.append(("Serving (jrft serve, one-text requests of random tasks)",
                    ["tasks served", "concurrency", "requests", "requests/s", "p50 ms", "p99 ms", "mean batch"],
                    [[str(r["tasks"]), str(r["concurrency"]), str(r["requests"]), _fmt(r["requests_per_s"]),
                      _fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(r["mean_batch"])] for r in report["serving"]]))
    if report.get("targets"):
        out.append(("Targets", ["target", "value", "goal", "met", "from"],
                    [[t["name"], _fmt(t["value"], ".3f"), t["target"], "yes" if t["met"] else "**no**", t["detail"]]
                     for t in report["targets"]]))
    return out


def _workload_line(cfg: dict[str, Any]) -> str:
    w = cfg["workload"]
    if w["kind"] == "fixed":
        return (f"a synthetic batch of {w['batch_size']} sequences of exactly {cfg['seq_len']} tokens (mask-head "
                f"format), the same every round, in micro-batches of {w['micro_batch_size']}")
    line = (f"Poisson batches (expected size {w['batch_size']}, q = {w['sample_rate']:.4g}) drawn from the first "
            f"{w['examples']} training rows of {cfg['data']} (mean {w['mean_tokens']:.1f} tokens, at most "
            f"{cfg['seq_len']}), one draw per round shared by every row, sorted by length, in micro-batches of "
            f"{w['micro_batch_size']}")
    o = w.get("orderings")
    if o:
        pads = ", ".join(f"{k} {v:.0%}" for k, v in o["padded_share"].items())
        line += (f". Training rows with an ordering step instead on {o['batches_per_round']} batches of "
                 f"{o['batch_size']} per call (one optimizer step accumulating them), ordered as the training "
                 f"loop orders an epoch (random: shuffled; grouped: train.group_by_length) and picked at evenly "
                 f"spaced quantiles of that epoch's batch widths (epoch r in round r); padding in an epoch of "
                 f"such batches: {pads} of the tokens")
    return line


def markdown_body(report: dict[str, Any]) -> str:
    """The report as Markdown: command, machine, versions, settings, one table per section."""
    env, cfg = report["environment"], report["config"]
    v = env["versions"]
    load = env.get("load_average_before")
    kind = cfg["workload"]["kind"]
    batch = {"fixed": f", batch {cfg['batch_size']} x {cfg['seq_len']} tokens",
             "poisson": f", {cfg['data']} batches of ~{cfg['batch_size']}"}.get(kind, "")
    lines = [
        f"# jrft bench: {cfg['model_id']}{batch}, {env['device']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Recorded {report['created']} on {env['processor']} ({env['cpu_count']} CPUs, "
        f"{env['torch_threads']} torch threads{', ' + env['gpu'] if env.get('gpu') else ''}); {env['platform']}.  ",
        f"Versions: python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, "
        f"opacus {v['opacus']}, jrft {v['jrft']}.  ",
    ]
    if load:
        after = env.get("load_average_after")
        lines.append(f"Load average (1/5/15 min) at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
                     + (f", at the end {after[0]:.2f} / {after[1]:.2f} / {after[2]:.2f}" if after else "")
                     + f" on {env['cpu_count']} CPUs: a load above the CPU count means other jobs shared "
                       "them, which inflates absolute times and widens the quartiles; the rows are "
                       "interleaved (round-robin), so ratios suffer less than absolute times.")
    if any(report.get(x) for x in ("train", "eval", "private")):
        lines += ["",
                  "Settings: every train, eval and private row is built, then warmed up in turn "
                  f"({cfg['warmup']} untimed call(s) each), then timed over {cfg['steps']} round-robin rounds (one "
                  "call of every row per round; a row's eval and private calls right after its train step, so load "
                  "drifting on a shared machine hits them alike; median and quartiles). "
                  f"Workload: {_workload_line(cfg)}. Each method's own settings (options, head, dropout, lr; dp_lr "
                  f"under DP) from conf/method/, d = {cfg['d']}, seed {cfg['seed']}. Private rows: noise multiplier "
                  f"{cfg['noise_multiplier']}, C = {cfg['max_grad_norm']}. Throughput is the median over rounds of "
                  "the batch's examples over the call's time. "
                  "Memory: peak growth during a row's warm-up calls over the value just before them: "
                  + ("CUDA allocated bytes." if env["device"].startswith("cuda") else
                     "the process RSS (psutil, sampled every 5 ms); activations, gradients, per-example gradients "
                     "and optimizer state, not the model weights; freed heap goes back to the OS (malloc_trim) "
                     "before each row, but allocator reuse can still hide some growth.")]
    lines.append("")
    if report.get("multitask"):
        lines += [f"Many tasks: {max(cfg['task_counts'])} synthetic jr tasks (d = {cfg['d']}: random z and heads, saved "
                  "and loaded as run artifacts), the same batch of synthetic texts (row i of task i mod N) through "
                  "the single-task jr classifier (hooks, as `jrft predict` runs a run dir), serving.multitask with N "
                  f"tasks, and PEFT LoRA r = {cfg['lora_r']} with N adapters (`adapter_names`, one per row) plus the "
                  f"same per-row head gather; {cfg['inference_repeats']} round-robin rounds after {cfg['warmup']} "
                  "warm-up calls each; median and quartiles.", ""]
    if report.get("serving"):
        lines += [f"Serving: `jrft serve` in a subprocess (--max-batch-size {cfg['serve_max_batch']}, --max-wait-ms "
                  f"{cfg['serve_max_wait_ms']}) with each number of tasks; {cfg['serve_concurrency']} client threads "
                  f"send {cfg['serve_requests']} one-text requests in all, each of a random task, back to back; "
                  "requests/s over the whole run, latency per request (p99: the 99th percentile), mean rows per "
                  "forward pass from the server's counters.", ""]
    for title, header, rows in tables(report):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The Markdown file: a checksum line (see the module docstring), then `markdown_body`."""
    body = markdown_body(report)
    return _MARK.format(hashlib.sha256(body.encode("utf-8")).hexdigest()) + "\n" + body


def written_by_bench(md: str) -> bool:
    """True when `md` is a report file exactly as `jrft bench` wrote it (its checksum line matches)."""
    first, _, rest = md.partition("\n")
    m = _MARK_RE.match(first)
    return bool(m) and hashlib.sha256(rest.encode("utf-8")).hexdigest() == m.group(1)


def report_paths(out_dir: Path, stem: str) -> tuple[Path, Path]:
    return Path(out_dir) / f"{stem}.json", Path(out_dir) / f"{stem}.md"


def check_writable(out_dir: Path, stem: str) -> None:
    """Raise JrftError when writing <stem>.json / <stem>.md in `out_dir` would replace a file that
    `jrft bench` did not write, or one edited since."""
    json_path, md_path = report_paths(out_dir, stem)
    if md_path.exists() and not (md_path.is_file() and written_by_bench(md_path.read_text(encoding="utf-8"))):
        raise JrftError(f"{md_path} exists and was not written by jrft bench (or was edited since); "
                        "jrft bench does not overwrite it: move it away or choose another --out / --name")
    if json_path.exists():
        try:
            schema = json.loads(json_path.read_text(encoding="utf-8")).get("schema", "")
        except (ValueError, AttributeError, OSError):
            schema = ""
        if not str(schema).startswith("jrft-bench/"):
            raise JrftError(f"{json_path} exists and is not a jrft bench report; jrft bench does not overwrite "
                            "it: move it away or choose another --out / --name")


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write <stem>.json and <stem>.md into `out_dir` (checked by `check_writable` first)."""
    from jrft_cli.core.files import atomic_write, write_json_atomic

    check_writable(out_dir, stem)
    json_path, md_path = report_paths(out_dir, stem)
    text = markdown(report)          # rendered first: a rendering error leaves nothing behind
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, report)
    atomic_write(md_path, lambda f: f.write(text))
    return json_path, md_path


def print_tables(report: dict[str, Any], console: Any = None) -> None:
    """Every section as a rich table on the console."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if Console().is_terminal else 140)
    for title, header, rows in tables(report):
        t = Table(title=title, title_justify="left")
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*[c.replace("**", "") for c in r])
        console.print(t)
