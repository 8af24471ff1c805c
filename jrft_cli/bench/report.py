"""Render a `jrft bench` report (the JSON dict) as Markdown and as rich console tables."""
from __future__ import annotations

from typing import Any


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


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every section present in the report."""
    out = []
    mem = {"rss_growth": "RSS growth (MiB)", "cuda_max_allocated": "CUDA max allocated (MiB)"}
    if report.get("train"):
        kind = mem[report["train"][0]["memory_kind"]]
        ref = next((r["step_ms"] for r in report["train"] if r["label"] == "full"), None)
        out.append(("Training step", ["method", "step ms (median)", "q1-q3 ms", "vs full", kind, "trainable params"],
                    [[r["label"], _fmt(r["step_ms"]), f"{r['q1_ms']:.0f}-{r['q3_ms']:.0f}",
                      _fmt(r["step_ms"] / ref, ".2f") if ref else "-", _fmt(r["memory_mb"], ".0f"),
                      _fmt(r["trainable_params"])] for r in report["train"]]))
    if report.get("private"):
        kind = mem[report["private"][0]["memory_kind"]]
        nonpriv = {r["label"]: r["step_ms"] for r in report.get("train", [])}
        out.append(("Private (DP-SGD) step", ["method", "per-example gradients", "step ms (median)", "q1-q3 ms",
                                              "vs its non-private step", kind],
                    [[r["label"], r["path"], _fmt(r["step_ms"]), f"{r['q1_ms']:.0f}-{r['q3_ms']:.0f}",
                      _fmt(r["step_ms"] / nonpriv[r["label"]], ".2f") if r["label"] in nonpriv else "-",
                      _fmt(r["memory_mb"], ".0f")] for r in report["private"]]))
    if report.get("inference"):
        out.append(("Inference latency", ["model", "median ms", "q1 ms", "q3 ms", "vs base"],
                    [[r["model"], _fmt(r["median_ms"]), _fmt(r["q1_ms"]), _fmt(r["q3_ms"]), _fmt(r["vs_base"], ".3f")]
                     for r in report["inference"]]))
    if report.get("projection"):
        out.append(("Projections (z -> all shifts, forward + backward)", ["kind", "L", "H", "d", "bytes held",
                                                                           "build s", "fwd+bwd ms"],
                    [[r["kind"], str(r["layers"]), str(r["hidden"]), str(r["d"]),
                      _fmt(r["bytes"]) + (" (not allocated)" if r["skipped"] else ""),
                      _fmt(r["build_s"], ".2f") if not r["skipped"] else f"skipped: {r['skipped']}",
                      _fmt(r["shift_ms"], ".2f")] for r in report["projection"]]))
    if report.get("shift_vs_step"):
        out.append(("z -> shifts time vs one jr training step", ["projection", "L", "H", "d", "batch x seq",
                                                                  "z->shifts ms", "jr step ms", "fraction (median of rounds)"],
                    [[r["kind"], str(r["layers"]), str(r["hidden"]), str(r["d"]), f"{r['batch_size']} x {r['seq_len']}",
                      _fmt(r["shift_ms"], ".2f"), _fmt(r["jr_step_ms"]), _fmt(r["fraction"], ".2%")]
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


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown document: command, machine, versions, settings, one table per section."""
    env, cfg = report["environment"], report["config"]
    v = env["versions"]
    load = env.get("load_average_before")
    lines = [
        f"# jrft bench: {cfg['model_id']}, batch {cfg['batch_size']} x {cfg['seq_len']} tokens, {env['device']}",
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
                       "interleaved (see Settings), so ratios suffer less than absolute times.")
    lines.append("")
    if any(report.get(k) for k in ("train", "private", "inference", "projection", "shift_vs_step")):
        lines += [
              f"Settings: every training and private row is built and warmed up ({cfg['warmup']} untimed "
              f"steps, at least one) in turn, then timed over {cfg['steps']} round-robin rounds (one step of "
              "every row per round, a method's private row right after its non-private one, so load drifting "
              "on a shared machine hits all rows alike; median and "
              f"quartiles), d = {cfg['d']} for jr / jr_warp / naive_jr, a synthetic batch of "
              f"{cfg['batch_size']} sequences of exactly {cfg['seq_len']} tokens (mask-head format), "
              f"each method's own config (head, dropout, lr) from conf/method/. Private rows: noise multiplier "
              f"{cfg['noise_multiplier']}, C = {cfg['max_grad_norm']}, the whole batch every step. "
              "Memory: " + ("CUDA max allocated during the row's warm-up steps, less what was allocated before "
                            "the row was built (its weights count, other rows' do not)." if env["device"].startswith("cuda") else
                            "growth of the process RSS over its value just before the row's warm-up steps "
                            "(psutil, sampled every 5 ms): activations, gradients, per-example gradients and "
                            "optimizer state, not the model weights; freed heap goes back to the OS "
                            "(malloc_trim) between rows, but allocator reuse can still hide some growth."),
              ""]
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
        if title == "Inference latency" and report.get("inference_max_logit_diff") is not None:
            lines += [f"Max |logit difference| jr (hooks) vs exported: {report['inference_max_logit_diff']:.2g}.", ""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


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
