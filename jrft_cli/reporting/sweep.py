"""Sweep-level summary: every job of a multirun, its run dir and its status, read from the run dirs.

`<sweep dir>/sweep_summary.json` (+ `sweep_summary.md`). A job's status:
  completed   its run dir holds a completed results.json
  interrupted no results.json but a checkpoint.pt: relaunching the sweep resumes it
  failed      its results.json says "failed" (with the error), or the job raised (e.g. a config error,
              whose run dir is removed: the job's error is kept under <sweep dir>/.failed_jobs/), or
              it ran (its dir exists) and left neither results nor a checkpoint
  running     a dir without results, while the sweep is still going (intermediate summaries only)
  missing     no run dir for it (not started, or lost)
Rows of failed jobs carry `error` when one is known.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from jrft_cli.core.files import CHECKPOINT_FILE, read_results, write_json_atomic

SUMMARY_JSON = "sweep_summary.json"
SUMMARY_MD = "sweep_summary.md"
STATUSES = ("completed", "interrupted", "failed", "running", "missing")
FAILURES_DIR = ".failed_jobs"


def job_dirs(sweep_dir: Path) -> dict[frozenset[str], Path]:
    """The job dirs under a sweep dir, keyed by their set of overrides (.hydra/overrides.yaml)."""
    out: dict[frozenset[str], Path] = {}
    for f in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        try:
            overrides = yaml.safe_load(f.read_text(encoding="utf-8")) or []
            out[frozenset(overrides)] = f.parent.parent
        except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError):
            continue   # a damaged record: that job shows as missing rather than breaking the summary
    return out


def run_status(run_dir: Path | None, finished: bool = True) -> str:
    """The status of one job from its run dir (see the module doc). `finished`: the sweep is over,
    so a dir without results is a failure rather than a job still running."""
    return _dir_status(run_dir, finished)[0]


def _dir_status(run_dir: Path | None, finished: bool) -> tuple[str, str | None]:
    """(status, error) read from a job's run dir."""
    if run_dir is None or not Path(run_dir).is_dir():
        return "missing", None
    try:
        results = read_results(run_dir)
    except ValueError as e:  # a broken results.json
        return "failed", str(e)
    if results is not None and results.get("status") == "completed":
        return "completed", None
    if results is not None and results.get("status") == "failed":
        return "failed", str(results.get("error") or "no error recorded")
    if (Path(run_dir) / CHECKPOINT_FILE).exists():
        return "interrupted", None
    return ("failed" if finished else "running"), None


def _failure_path(sweep_dir: Path, overrides: Sequence[str]) -> Path:
    key = hashlib.sha1(json.dumps(sorted(overrides)).encode()).hexdigest()[:16]
    return Path(sweep_dir) / FAILURES_DIR / f"{key}.json"


def record_failure(sweep_dir: Path, overrides: Sequence[str], error: str) -> None:
    """Keep a job's error (the job raised; its run dir may be gone) for the summary."""
    write_json_atomic(_failure_path(sweep_dir, overrides), {"overrides": list(overrides), "error": error})


def clear_failure(sweep_dir: Path, overrides: Sequence[str]) -> None:
    """Forget a job's earlier failure (it runs again)."""
    _failure_path(sweep_dir, overrides).unlink(missing_ok=True)


def _recorded_failure(sweep_dir: Path, overrides: Sequence[str]) -> str | None:
    path = _failure_path(sweep_dir, overrides)
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarize(sweep_dir: Path, jobs: Sequence[Sequence[str]], finished: bool = True,
              known: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """One row per job (in job-number order): num, overrides, dir (relative to the sweep dir), status,
    and the error of a failed job when known. `known` maps a job number to a status already known for
    certain (e.g. a job that just failed)."""
    sweep_dir = Path(sweep_dir)
    dirs = job_dirs(sweep_dir)
    rows = []
    for num, overrides in enumerate(jobs):
        run_dir = dirs.get(frozenset(overrides))
        status, error = _dir_status(run_dir, finished)
        if status not in ("completed", "interrupted"):
            recorded = _recorded_failure(sweep_dir, overrides)
            if recorded is not None:
                status, error = "failed", error or recorded
        status = (known or {}).get(num) or status
        row: dict[str, Any] = {"num": num, "overrides": list(overrides),
                               "dir": str(run_dir.relative_to(sweep_dir)) if run_dir else None, "status": status}
        if status == "completed":
            res = read_results(run_dir) or {}
            main = res.get("main_metric")
            row["main_metric"] = main
            row["dev"] = (res.get("dev") or {}).get(main)
        if status == "failed" and error:
            row["error"] = error
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path, jobs: Sequence[Sequence[str]], finished: bool = True,
                  known: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Write sweep_summary.json and sweep_summary.md (atomically); returns the rows."""
    sweep_dir = Path(sweep_dir)
    rows = summarize(sweep_dir, jobs, finished, known)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES if any(r["status"] == s for r in rows)}
    write_json_atomic(sweep_dir / SUMMARY_JSON, {
        "sweep_dir": str(sweep_dir), "finished": finished, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": counts, "jobs": rows})
    lines = [f"# Sweep {sweep_dir}", "",
             ", ".join(f"{n} {s}" for s, n in counts.items()) + ("" if finished else " (sweep still running)"), "",
             "| # | overrides | dir | status | dev |", "|---:|---|---|---|---:|"]
    for r in rows:
        dev = f"{r['main_metric']} {r['dev']:.4f}" if r.get("dev") is not None else ""
        status = f"{r['status']}: {r['error']}" if r.get("error") else r["status"]
        status = status.replace("|", "\\|")
        lines.append(f"| {r['num']} | {' '.join(r['overrides'])} | {r['dir'] or ''} | {status} | {dev} |")
    tmp = sweep_dir / f".{SUMMARY_MD}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(sweep_dir / SUMMARY_MD)
    return rows


def read_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The job override lists recorded in an existing sweep_summary.json (None without one)."""
    path = Path(sweep_dir) / SUMMARY_JSON
    if not path.exists():
        return None
    return [r["overrides"] for r in json.loads(path.read_text())["jobs"]]
