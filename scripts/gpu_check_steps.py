"""The Python parts of scripts/gpu_check.sh (run from the repo root, this checkout on PYTHONPATH).

    python scripts/gpu_check_steps.py environment --out FILE     # GPU, versions, git commit (JSON)
    python scripts/gpu_check_steps.py reload EXPORT --device cuda --cpu-eval FILE --out FILE
    torchrun --nproc_per_node=1 scripts/gpu_check_steps.py nccl-probe --out FILE
    python scripts/gpu_check_steps.py table OUT                  # the summary table; exit 1 if a step failed

`table` reads OUT/steps.tsv (one line per step: name, kind, exit code, wall seconds, artifact, log, written
by gpu_check.sh) and each step's own output files (results.json, the bench report, the JSON files written
here); every number it prints comes from those files.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

# Fresh CUDA reload vs CPU eval of the same export: fp32 both ways, so the logits agree to float rounding
# (TF32 or another kernel order on the GPU: well under 1e-2), and at most a few near-ties flip.
MAX_LOGIT_DIFF = 1e-2
MAX_METRIC_DIFF = 0.005
PROBE_ROWS = 256


def environment(out: Path) -> int:
    """What ran: GPU, library versions, the checkout's commit."""
    import torch

    record: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                              "cuda_available": torch.cuda.is_available(),
                              "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                              if torch.cuda.is_available() else []}
    try:
        record["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                              text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        record["git_commit"] = None
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


def reload(export: Path, device: str, cpu_eval: Path, out: Path) -> int:
    """Load an export dir with jrft's loader, move it to `device` (cuda) and evaluate it on the task's main dev split;
    compare with the CPU run of `jrft eval` on the same export (its JSON) and with CPU logits on the first
    PROBE_ROWS rows. `jrft eval`/`predict` run on the CPU only, hence this step."""
    import torch

    from jrft_cli.serving.inference import load_target
    from jrft_cli.tasks.evaluation import TaskInfo, evaluate, predict
    from jrft_cli.tasks.glue import encode, load_split, make_collate

    target = load_target(export)
    task = target.task
    split = task["eval_splits"][0]["name"]
    examples = load_split(task, split, os.environ.get("JRFT_GLUE_DIR") or target.data_dir, None)
    data = encode(examples, target.tokenizer, mask_format=target.mask_format, max_length=target.max_length)
    collate = make_collate(target.tokenizer, task["is_regression"])
    info = TaskInfo(task["is_regression"], task["metrics"], task["main_metric"])
    cpu_logits = predict(target.model, data[:PROBE_ROWS], collate, 64, torch.device("cpu"))
    dev = torch.device(device)
    target.model.to(dev)
    metrics = evaluate(target.model, data, collate, info, 64, dev)
    dev_logits = predict(target.model, data[:PROBE_ROWS], collate, 64, dev)
    logit_diff = float((dev_logits - cpu_logits).abs().max())
    main = task["main_metric"]
    cpu_metrics = json.loads(cpu_eval.read_text())["metrics"]
    metric_diff = abs(metrics[main] - cpu_metrics[main])
    ok = logit_diff <= MAX_LOGIT_DIFF and metric_diff <= MAX_METRIC_DIFF
    record = {"ok": ok, "device": str(next(target.model.parameters()).device), "split": split,
              "examples": len(data), "main_metric": main, "metrics": metrics, "cpu_eval_metrics": cpu_metrics,
              "metric_diff": metric_diff, "max_logit_diff": logit_diff, "probe_rows": min(PROBE_ROWS, len(data)),
              "limits": {"max_logit_diff": MAX_LOGIT_DIFF, "max_metric_diff": MAX_METRIC_DIFF}}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0 if ok else 1


def nccl_probe(out: Path) -> int:
    """Join an nccl process group (under torchrun), all-reduce one tensor per rank, check the sum."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    try:
        value = torch.tensor([float(rank + 1)], device="cuda")
        dist.all_reduce(value)
        got, want = float(value.item()), world * (world + 1) / 2
        backend = dist.get_backend()
    finally:
        dist.destroy_process_group()
    ok = got == want and backend == "nccl"
    if rank == 0:
        record = {"ok": ok, "backend": backend, "world_size": world, "all_reduce": got, "expected": want}
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record))
    return 0 if ok else 1


# -- the table ----------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _on_cuda(text: str, device: Any) -> str:
    """`text`, or a ValueError carrying it when the step ran on another device than CUDA."""
    if not str(device).startswith("cuda"):
        raise ValueError(f"{text}; but it ran on {device!r}, not on CUDA")
    return text


def _run_result(run_dir: Path) -> str:
    r = _read_json(run_dir / "results.json")
    if r.get("status") != "completed":
        raise ValueError(f"results.json status {r.get('status')!r}: {r.get('error', '')}")
    main = r["main_metric"]
    text = f"dev {main} {r['dev'][main]:.4f}, {r['examples_per_s']:.0f} train ex/s, {r['steps']} steps"
    if r.get("privacy"):
        p = r["privacy"]
        text += f", epsilon {p['epsilon']:.3f} (target {p['target_epsilon']}, delta {p['delta']:.2g})"
    return _on_cuda(text, r.get("device"))


def _bench_result(path: Path) -> str:
    report = _read_json(path)

    def jr_rate(section: str) -> str:
        for row in report.get(section) or []:
            if row.get("id", {}).get("method") == "jr" and row.get("id", {}).get("projection", "dense") == "dense":
                return f"{row['examples_per_s']:.0f}"
        return "-"
    met = [t for t in report.get("targets") or [] if t.get("met") is not None]
    return _on_cuda(f"jr ex/s: train {jr_rate('train')}, eval {jr_rate('eval')}, private {jr_rate('private')}; "
                    f"targets met {sum(bool(t['met']) for t in met)}/{len(met)}",
                    (report.get("environment") or {}).get("device"))


def _reload_result(path: Path) -> str:
    r = _read_json(path)
    main = r["main_metric"]
    text = (f"{r['device']} dev {main} {r['metrics'][main]:.4f} (CPU eval {r['cpu_eval_metrics'][main]:.4f}), "
            f"max abs logit diff {r['max_logit_diff']:.1e}")
    if not r.get("ok"):
        raise ValueError(f"{text}; over the limits {r['limits']}")
    return _on_cuda(text, r["device"])


def _nccl_result(path: Path) -> str:
    r = _read_json(path)
    text = f"{r['backend']} all_reduce over {r['world_size']} rank(s): {r['all_reduce']:g} (expected {r['expected']:g})"
    if not r.get("ok"):
        raise ValueError(text)
    return text


def _eval_result(path: Path) -> str:
    r = _read_json(path)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
    return f"{r['split']} ({r['examples']} examples): {shown} [jrft eval runs on the CPU]"


def _export_result(path: Path) -> str:
    note = _read_json(path / "jrft_export.json")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{len(list(path.iterdir()))} files, {size / 2**20:.1f} MiB, method {note.get('method', '?')}"


READERS = {"train": _run_result, "bench": _bench_result, "reload": _reload_result, "nccl": _nccl_result,
           "eval": _eval_result, "export": _export_result}


_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception)\w*: \S|: error: ")


def _error_line(log: Path) -> str:
    """The line of a failed step's log that says why: the first exception or `error:` line (under torchrun
    that is the worker's own, above the launcher's traceback), else the last line with text."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    found = [ln for ln in lines if _ERROR_LINE.search(ln)]
    plain = [ln for ln in lines if re.search(r"[A-Za-z0-9]", ln)]   # not rules or table borders
    return (found or plain or ["(empty log)"])[0 if found else -1][:200]


def table(out: Path) -> int:
    """Print the summary table of a gpu_check output dir (and write it to OUT/summary.md); 1 if a step failed."""
    rows, failed = [], 0
    steps_file = out / "steps.tsv"
    lines = steps_file.read_text().splitlines() if steps_file.is_file() else []
    for line in lines:
        name, kind, rc, seconds, artifact, log = line.split("\t")
        status, result = "ok", ""
        try:
            if rc == "-":
                raise ValueError(_error_line(Path(log)))
            if rc in ("124", "137"):
                raise ValueError(f"exit {rc}: stopped at its time limit (STEP_TIMEOUT, or what was left of BUDGET)")
            if rc != "0":
                raise ValueError(f"exit {rc}: {_error_line(Path(log))}")
            result = READERS[kind](Path(artifact))
        except (OSError, ValueError, KeyError, TypeError) as e:
            status, failed = "FAILED", failed + 1
            result = f"{e} (log: {os.path.relpath(log, out)})"
        rows.append((name, status, "-" if rc == "-" else f"{float(seconds):.1f}", result.replace("|", "/")))
    if not rows:
        rows.append(("(no steps ran)", "FAILED", "0.0", f"{steps_file} is missing or empty"))
        failed = 1
    header = ""
    env_file = out / "environment.json"
    try:
        env = _read_json(env_file)
    except (OSError, ValueError):
        env = None   # the environment step failed: its log says why; the table stands without the header
    if env is not None:
        header = (f"gpu_check: {', '.join(env.get('devices') or ['no GPU'])}; torch {env.get('torch')} "
                  f"(CUDA {env.get('cuda')}); commit {env.get('git_commit')}; {out}\n\n")
    md = ["| step | status | wall s | result |", "|---|---|---:|---|"]
    md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = header + "\n".join(md) + "\n"
    (out / "summary.md").write_text(text)
    print(text, end="")
    print(f"gpu_check: {len(rows) - failed}/{len(rows)} steps ok; table in {out / 'summary.md'}")
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    """The command line of this helper (tests parse gpu_check.sh's --dry-run lines with it)."""
    p = argparse.ArgumentParser(prog="gpu_check_steps.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("environment")
    e.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("reload")
    r.add_argument("export", type=Path)
    r.add_argument("--device", default="cuda")
    r.add_argument("--cpu-eval", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    n = sub.add_parser("nccl-probe")
    n.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("table")
    t.add_argument("out", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "environment":
        return environment(args.out)
    if args.cmd == "reload":
        return reload(args.export, args.device, args.cpu_eval, args.out)
    if args.cmd == "nccl-probe":
        return nccl_probe(args.out)
    return table(args.out)


if __name__ == "__main__":
    sys.exit(main())
