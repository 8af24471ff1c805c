"""Run tracking: Weights & Biases plus a quiet rich console.

wandb is imported only when a run actually uses it (its import and service start cost seconds).
Console: a live progress bar on a terminal; plain throttled lines otherwise (SLURM logs, pytest).

Metric naming the console relies on: keys under `train/` (and bare `loss`, `examples_per_s`, `lr`)
feed the progress display and are throttled; a log holding any other key (e.g. `eval/accuracy`)
is always printed, since evaluations are rare and are what a reader of a log looks for.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape as _escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

WANDB_MODES = ("auto", "online", "offline", "disabled")
PROBE_TIMEOUT_S = 2.0
_LOSS_KEYS = ("train/loss", "loss")
_SPEED_KEYS = ("train/examples_per_s", "examples_per_s")
_PROGRESS_KEYS = {"loss", "examples_per_s", "lr", "epoch"}


def _is_progress_key(key: str) -> bool:
    return key.startswith("train/") or key in _PROGRESS_KEYS


def _first(metrics: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((metrics[k] for k in keys if k in metrics), None)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# W&B mode resolution


def wandb_credentials_available(base_url: str) -> bool:
    """True when wandb 0.31 would find credentials without prompting.

    Same sources, same order as `wandb.sdk.lib.wbauth.authenticate._use_system_auth`:
    WANDB_API_KEY / WANDB_IDENTITY_TOKEN_FILE, a netrc entry for the API host, settings api_key.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    try:
        if wbauth.read_netrc_auth(host=base_url):
            return True
    except Exception:  # a malformed entry is not usable credentials
        return False
    return bool(wandb_setup.singleton().settings.api_key)


def host_answers(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when an HTTP server answers at `url` within `timeout_s` (any status counts)."""
    answered = threading.Event()

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s)
            answered.set()
        except urllib.error.HTTPError:  # a status code is an answer
            answered.set()
        except Exception:
            pass

    # A daemon thread bounds the wait even when DNS resolution (not covered by timeout=) hangs.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return answered.is_set()


def resolve_wandb_mode(mode: str) -> tuple[str, str | None]:
    """Map a requested mode to online/offline/disabled; returns (mode, reason for offline).

    `auto` honours WANDB_MODE when set, else goes online only with credentials and an API host
    that answers within PROBE_TIMEOUT_S seconds.
    """
    if mode not in WANDB_MODES:
        raise ValueError(f"unknown wandb mode {mode!r}; choose from: {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode, None
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode in ("online", "offline", "disabled"):
        return env_mode, None
    from wandb.sdk import wandb_setup

    base_url = wandb_setup.singleton().settings.base_url
    if not wandb_credentials_available(base_url):
        return "offline", "no W&B credentials (WANDB_API_KEY or netrc)"
    if not host_answers(base_url):
        return "offline", f"{base_url} did not answer within {PROBE_TIMEOUT_S:g}s"
    return "online", None


# ---------------------------------------------------------------------------------------------


class Tracker:
    """One run's tracking: W&B (optional) and console progress. Call `finish()` in a finally."""

    def __init__(
        self,
        run_dir: Path,
        config: dict,
        *,
        use_wandb: bool,
        project: str = "jrft",
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: str = "auto",
        resume_id: str | None = None,
        console: Console | None = None,
        plain_lines: int = 20,
    ) -> None:
        """`plain_lines`: about how many progress lines a non-terminal console gets per progress."""
        if mode not in WANDB_MODES:
            raise ValueError(f"unknown wandb mode {mode!r}; choose from: {', '.join(WANDB_MODES)}")
        self.run_dir = Path(run_dir)
        self.config = config
        self.console = console or Console()
        self.plain_lines = max(1, plain_lines)
        self.wandb_run_id: str | None = None
        self.wandb_mode: str = "disabled"
        self._run = None
        self._finished = False
        self._progress: Progress | None = None
        self._task = None
        self._total = 0
        self._description = ""
        self._last_plain_step: int | None = None
        self._start_time = time.monotonic()
        if use_wandb and mode != "disabled":
            self._init_wandb(project, entity, name, group, tags, mode, resume_id)

    # -- W&B -----------------------------------------------------------------------------------
    def _init_wandb(self, project, entity, name, group, tags, mode, resume_id) -> None:
        import wandb

        resolved, reason = resolve_wandb_mode(mode)
        if resolved == "disabled":
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kwargs = dict(
            project=project, entity=entity, name=name, group=group, tags=tags,
            config=self.config, dir=str(self.run_dir),
            id=resume_id, resume="allow" if resume_id else None,
            reinit="create_new",  # every Tracker its own run, even several in one process
        )

        def init(run_mode: str):
            # online keeps wandb's run-URL lines; offline prints our own one-line note instead
            settings = wandb.Settings(quiet=True) if run_mode == "online" else wandb.Settings(silent=True)
            return wandb.init(mode=run_mode, settings=settings, **kwargs)

        try:
            self._run = init(resolved)
        except Exception as err:
            if mode != "auto" or resolved != "online":
                raise
            resolved, reason = "offline", f"online start failed ({type(err).__name__})"
            self._run = init(resolved)
        self.wandb_mode = resolved
        self.wandb_run_id = self._run.id
        if resolved == "offline":
            why = f" ({reason})" if reason else ""
            self.console.print(
                f"W&B offline{why}; upload later with: wandb sync {self._run.settings.sync_dir}",
                markup=False, highlight=False, soft_wrap=True,
            )

    # -- console -------------------------------------------------------------------------------
    def print_config(self) -> None:
        """Print the (nested) run config as a tree."""
        tree = Tree("config", guide_style="dim")

        def add(node: Tree, value: Any) -> None:
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            for key, child in items:
                if isinstance(child, Mapping) or (
                    isinstance(child, (list, tuple)) and any(isinstance(c, (Mapping, list, tuple)) for c in child)
                ):
                    add(node.add(f"[bold]{_escape(str(key))}[/]"), child)
                else:  # scalars and flat lists on one line
                    node.add(f"[bold]{_escape(str(key))}[/]: {_escape(repr(child))}")

        add(tree, self.config)
        self.console.print(tree)

    def start_progress(self, total_steps: int, description: str) -> None:
        """Begin a progress display over `total_steps` optimizer steps (replaces any previous)."""
        self._stop_progress()
        self._total, self._description = int(total_steps), description
        self._last_plain_step = None
        self._start_time = time.monotonic()
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), console=self.console,
            )
            self._task = self._progress.add_task(description, total=self._total, info="")
            self._progress.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Send metrics to W&B at `step` and update the console (loss, examples/s when present)."""
        if self._run is not None:
            self._run.log(dict(metrics), step=step)
        loss, speed = _first(metrics, _LOSS_KEYS), _first(metrics, _SPEED_KEYS)
        info = "  ".join(s for s in (
            f"loss {loss:.4f}" if loss is not None else "",
            f"{speed:.1f} ex/s" if speed is not None else "",
        ) if s)
        other = {k: v for k, v in metrics.items() if not _is_progress_key(k)}
        if self._progress is not None:
            self._progress.update(self._task, completed=min(step, self._total), info=info)
            if other:
                self._progress.console.print(self._line(step, other), markup=False, highlight=False)
            return
        if other:
            self.console.print(self._line(step, other), markup=False, highlight=False)
        elif self._plain_due(step):
            self.console.print(self._line(step, {}, info), markup=False, highlight=False)

    def _plain_due(self, step: int) -> bool:
        every = max(1, self._total // self.plain_lines) if self._total else 1
        due = (self._last_plain_step is None or step - self._last_plain_step >= every
               or (self._total and step >= self._total))
        if due:
            self._last_plain_step = step
        return bool(due)

    def _line(self, step: int, values: Mapping[str, Any], info: str = "") -> str:
        where = f"step {step}/{self._total}" if self._total else f"step {step}"
        if self._total:
            where += f" ({100 * min(step, self._total) / self._total:.0f}%)"
        parts = [f"[{self._description}] {where}" if self._description else where]
        if info:
            parts.append(info)
        parts += [f"{k} {_fmt(v)}" for k, v in values.items()]
        elapsed = int(time.monotonic() - self._start_time)
        parts.append(f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}")
        return " | ".join(parts)

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- end -----------------------------------------------------------------------------------
    def summary(self, results: dict) -> None:
        """Record final results: W&B run summary and a table on the console."""
        self._stop_progress()
        if self._run is not None:
            self._run.summary.update(dict(results))
        table = Table(title="results", show_header=True, header_style="bold")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in _flatten(results).items():
            table.add_row(_escape(str(key)), _escape(_fmt(value)))
        self.console.print(table)

    def finish(self, exit_code: int = 0) -> None:
        """Stop the console display and finish the W&B run; idempotent, never raises twice."""
        if self._finished:
            return
        self._finished = True
        self._stop_progress()
        if self._run is not None:
            run, self._run = self._run, None
            run.finish(exit_code=exit_code)


# ---------------------------------------------------------------------------------------------
# Reading an offline run back (tests, and anyone without a W&B server)


def _run_dir_order(wandb_file: Path) -> tuple[str, int]:
    # wandb names run dirs (offline-)run-YYYYMMDD_HHMMSS-<id>, adding -N when a resume in the
    # same second would collide: order by timestamp, then N.
    match = re.search(r"-(\d{8}_\d{6})-[^-]+(?:-(\d+))?$", wandb_file.parent.name)
    if not match:
        return ("", 0)
    return (match.group(1), int(match.group(2) or 0))


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """Read the W&B run(s) stored under `run_dir` with wandb's own reader (`wandb leet inspect`).

    Returns {"run_id", "config", "summary", "history"}: history rows (dicts holding `_step` and
    the logged keys) of every `.wandb` file under run_dir/wandb in time order (a resumed run has
    several); config and summary from the latest file.
    """
    files = sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"), key=_run_dir_order)
    if not files:
        raise FileNotFoundError(f"no W&B run file under {Path(run_dir) / 'wandb'}")
    env = {**os.environ, "WANDB_ERROR_REPORTING": "false"}

    def inspect(path: Path, *extra: str) -> str:
        cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *extra, str(path)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout

    history: list[dict[str, Any]] = []
    for path in files:
        for line in inspect(path).splitlines():
            record = json.loads(line)
            if record.get("type") == "history":
                history.append(record["history"]["item"])
    latest = json.loads(inspect(files[-1], "--summary"))
    return {
        "run_id": latest.get("run_id"),
        "config": latest.get("config", {}),
        "summary": latest.get("summary", {}),
        "history": history,
    }
