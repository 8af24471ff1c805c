"""Intrinsic-dimension search: the smallest d whose probe reaches `target` x the reference score.

The grid is log2-spaced: d = round(2 ** (k / steps_per_octave)) for k = 0, 1, ... up to d_max (distinct
values only). From `d_start` the search doubles d (one octave up the grid) until a probe passes, or, when
the first probe passes already, halves it until one fails; then it bisects the grid indices between the
largest failing and the smallest passing d until they are neighbours on the grid. A probe is one `jrft
train` run per seed; it passes when the mean of its seeds' scores is at least target x reference.

The search is a pure function of the probes' outcomes (`walk`), so a search dir resumes by replaying it:
a probe whose run dirs all hold a completed results.json is read back, never trained again; a probe with
missing or interrupted runs is launched again (only its missing seeds), and `jrft train` resumes an
interrupted run from its checkpoint. So a relaunch with more seeds trains only the new seeds' runs. Bisection assumes the score grows with d; with noisy scores it still ends, at a bracket of
neighbouring grid points, and every probe's score is in the table to judge by.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from jrft_cli.core.errors import JrftError
from jrft_cli.core.files import RESULTS_FILE, read_results, write_json_atomic
from jrft_cli.reporting.table import SNAPSHOTS

STATE_FILE = "search_d.json"
# What a search dir is bound to: the probes' configuration (their run dirs hold it; `jrft train` refuses a
# run dir of another config). Everything else may change on a relaunch (more seeds, another target or
# reference, a finer grid): the search replays with the new settings and reuses every (d, seed) run there.
FIXED_SETTINGS = ("overrides", "task", "method")
INTERRUPTED_EXIT_CODE = 75   # what `jrft train` exits with when a signal stopped it (checkpoint written)


# ------------------------------------------------------------------------------------------ the grid

def grid_values(steps_per_octave: int, d_max: int) -> list[int]:
    """The distinct d = round(2 ** (k / steps_per_octave)), k = 0, 1, ..., that do not exceed d_max."""
    if steps_per_octave < 1:
        raise JrftError(f"--steps-per-octave={steps_per_octave} is not valid; it must be a positive integer")
    if d_max < 1:
        raise JrftError(f"--d-max={d_max} is not valid; it must be a positive integer")
    values: list[int] = []
    k = 0
    while True:
        d = round(2 ** (k / steps_per_octave))
        if d > d_max:
            return values
        if not values or d != values[-1]:
            values.append(d)
        k += 1


def snap_to_grid(grid: Sequence[int], d: int) -> int:
    """The smallest grid value >= d (the start of the search)."""
    for value in grid:
        if value >= d:
            return value
    raise JrftError(f"--d-start={d} is above --d-max={grid[-1] if grid else 0}; lower --d-start or raise --d-max")


def _octave_up(grid: Sequence[int], i: int) -> int | None:
    """Index of the smallest value >= 2 x grid[i]; the grid's top when doubling overshoots it; None at the top."""
    for j in range(i + 1, len(grid)):
        if grid[j] >= 2 * grid[i]:
            return j
    return len(grid) - 1 if i < len(grid) - 1 else None


def _octave_down(grid: Sequence[int], i: int) -> int | None:
    """Index of the largest value <= grid[i] / 2; the grid's bottom when halving undershoots it; None at 0."""
    for j in range(i - 1, -1, -1):
        if 2 * grid[j] <= grid[i]:
            return j
    return 0 if i > 0 else None


@dataclass(frozen=True)
class Step:
    """Where the search stands: the next d to probe, or (next_d None) its outcome: `answer` (the smallest
    passing d of the final bracket, None when no d up to the grid's top passed) and `below` (the largest
    failing d under it, None when the grid's smallest d passed)."""
    next_d: int | None
    answer: int | None = None
    below: int | None = None


def walk(grid: Sequence[int], start: int, passed: dict[int, bool]) -> Step:
    """Replay the search over the outcomes known so far (d -> passed) and return the next step."""
    i = grid.index(start)
    if start not in passed:
        return Step(start)
    lo: int | None
    if passed[start]:
        hi = i
        while True:   # halve until a probe fails (or the grid's bottom passes)
            j = _octave_down(grid, hi)
            if j is None:
                return Step(None, answer=grid[hi], below=None)
            if grid[j] not in passed:
                return Step(grid[j])
            if not passed[grid[j]]:
                lo = j
                break
            hi = j
    else:
        lo = i
        while True:   # double until a probe passes (or the grid's top fails)
            j = _octave_up(grid, lo)
            if j is None:
                return Step(None, answer=None, below=grid[lo])
            if grid[j] not in passed:
                return Step(grid[j])
            if passed[grid[j]]:
                hi = j
                break
            lo = j
    while hi - lo > 1:   # bisection on grid indices: lo fails, hi passes
        mid = (lo + hi) // 2
        if grid[mid] not in passed:
            return Step(grid[mid])
        if passed[grid[mid]]:
            hi = mid
        else:
            lo = mid
    return Step(None, answer=grid[hi], below=grid[lo])


# ------------------------------------------------------------------------------------- probes

@dataclass
class SearchSettings:
    """What a search dir is bound to (see FIXED_SETTINGS); `overrides` go to every probe's `jrft train`."""
    overrides: list[str]
    task: str
    method: str
    main_metric: str
    seeds: list[int]
    target: float
    reference: float
    reference_source: str
    d_start: int
    d_max: int
    steps_per_octave: int = 2
    snapshot: str = "best"

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1.5:
            raise JrftError(f"--target={self.target} is not valid; it must be a fraction of the reference in (0, 1.5]")
        if not self.reference > 0:
            raise JrftError(f"the reference score {self.reference!r} ({self.reference_source}) is not positive; "
                            f"a target fraction of it means nothing: pass a run that learned, or a number > 0")
        if not self.seeds:
            raise JrftError("--seeds is empty; give at least one seed, e.g. --seeds 0,1")
        if self.snapshot not in SNAPSHOTS:
            raise JrftError(f"--snapshot={self.snapshot!r} is not valid; choose one of {', '.join(SNAPSHOTS)}")
        if self.d_start < 1:
            raise JrftError(f"--d-start={self.d_start} is not valid; it must be a positive integer")

    @property
    def target_score(self) -> float:
        return self.target * self.reference


@dataclass
class Probe:
    """One d: its seeds' run dirs and scores (None for a seed without a completed run)."""
    d: int
    seeds: list[int]
    scores: list[float | None]
    run_dirs: list[str]
    trainable_params: int | None = None
    passed: bool | None = None

    @property
    def complete(self) -> bool:
        return all(s is not None for s in self.scores)

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.complete else None   # type: ignore[arg-type]


def probe_dir(root: Path, d: int) -> Path:
    """The probe's sweep dir; seed s trains in <probe dir>/s<s>."""
    return Path(root) / f"d{d}"


def read_probe(root: Path, d: int, settings: SearchSettings) -> Probe:
    """The probe's runs as they stand on disk (completed results.json only)."""
    snap = SNAPSHOTS[settings.snapshot]
    scores: list[float | None] = []
    dirs: list[str] = []
    params = None
    for seed in settings.seeds:
        run_dir = probe_dir(root, d) / f"s{seed}"
        dirs.append(str(run_dir))
        results = read_results(run_dir) if (run_dir / RESULTS_FILE).is_file() else None
        if not results or results.get("status") != "completed":
            scores.append(None)
            continue
        if results.get("task") != settings.task or results.get("d") != d:
            raise JrftError(f"{run_dir} holds a run of task {results.get('task')!r} with d={results.get('d')!r}, "
                            f"not this search's task {settings.task!r} with d={d}; use another --dir")
        value = (results.get(snap) or {}).get(settings.main_metric)
        if not isinstance(value, (int, float)):
            raise JrftError(f"{run_dir / RESULTS_FILE} has no {snap}[{settings.main_metric!r}]")
        scores.append(float(value))
        params = results.get("trainable_params", params)
    return Probe(d, list(settings.seeds), scores, dirs, params)


def probe_command(settings: SearchSettings, d: int, seeds: Sequence[int], root: Path) -> list[str]:
    """The `jrft train` multirun that trains probe d for `seeds` (one job per seed, in <probe dir>/s<seed>)."""
    return [sys.executable, "-m", "jrft_cli", "train", "-m", *settings.overrides, f"d={d}",
            "seed=" + ",".join(str(s) for s in seeds), f"hydra.sweep.dir={probe_dir(root, d).resolve()}",
            "hydra.sweep.subdir=s${seed}"]


def launch_subprocess(command: list[str]) -> tuple[int, bool]:
    """Run `command` and wait; SIGINT / SIGTERM / SIGUSR2 reaching this process are passed on to it, so the
    training run checkpoints and exits. Returns (exit code, whether a stop signal arrived)."""
    proc = subprocess.Popen(command)
    stopped: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        stopped.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    try:
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return rc, bool(stopped)


class SearchStopped(JrftError):
    """A probe did not finish (failed, or stopped by a signal); the search dir resumes when relaunched."""

    def __init__(self, message: str, exit_code: int, result: "SearchResult") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.result = result     # the probes finished so far


@dataclass
class SearchResult:
    settings: SearchSettings
    probes: list[Probe]                  # in the order the search made them
    answer: int | None
    below: int | None
    finished: bool
    launched: list[int] = field(default_factory=list)   # the d of every probe this launch trained
    reused: list[int] = field(default_factory=list)     # the d of every probe read back from the dir

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "target_score": self.settings.target_score,
            "finished": self.finished,
            "answer": self.answer,
            "below": self.below,
            "probes": [{**asdict(p), "mean": p.mean} for p in self.probes],
        }


def load_result(root: Path) -> SearchResult:
    """The search recorded in <root>/search_d.json (as its last launch left it)."""
    state = json.loads((Path(root) / STATE_FILE).read_text())
    settings = SearchSettings(**state["settings"])
    probes = [Probe(p["d"], p["seeds"], p["scores"], p["run_dirs"], p.get("trainable_params"), p.get("passed"))
              for p in state["probes"]]
    return SearchResult(settings, probes, state.get("answer"), state.get("below"), bool(state.get("finished")))


def _check_settings(root: Path, settings: SearchSettings) -> None:
    path = root / STATE_FILE
    if not path.is_file():
        return
    old = json.loads(path.read_text()).get("settings", {})
    new = asdict(settings)
    for key in FIXED_SETTINGS:
        if key in old and old[key] != new[key]:
            raise JrftError(f"{root} holds a search with {key}={old[key]!r}, not {new[key]!r}; its probes train "
                            f"another configuration: use another --dir")


def run_search(settings: SearchSettings, root: Path,
               launch: Callable[[list[str]], tuple[int, bool]] = launch_subprocess,
               log: Callable[[str], None] = print) -> SearchResult:
    """Probe until the search ends; write <root>/search_d.json after every probe. Raises SearchStopped when
    a probe does not finish (the dir keeps every finished probe, and resumes)."""
    root = Path(root)
    grid = grid_values(settings.steps_per_octave, settings.d_max)
    start = snap_to_grid(grid, settings.d_start)
    _check_settings(root, settings)
    root.mkdir(parents=True, exist_ok=True)
    result = SearchResult(settings, [], None, None, False)
    passed: dict[int, bool] = {}

    def save() -> None:
        write_json_atomic(root / STATE_FILE, result.to_json())

    while True:
        step = walk(grid, start, passed)
        if step.next_d is None:
            result.answer, result.below, result.finished = step.answer, step.below, True
            save()
            return result
        d = step.next_d
        probe = read_probe(root, d, settings)
        if probe.complete:
            result.reused.append(d)
            how = "reused"
        else:
            missing = [s for s, v in zip(settings.seeds, probe.scores) if v is None]
            log(f"search-d: probe d={d}: training seed(s) {', '.join(map(str, missing))} in {probe_dir(root, d)}")
            rc, stopped = launch(probe_command(settings, d, missing, root))
            probe = read_probe(root, d, settings)
            if not probe.complete:
                save()
                resume = "relaunch the same command to resume it (finished probes are reused)"
                if stopped or rc == INTERRUPTED_EXIT_CODE:
                    raise SearchStopped(f"probe d={d} was stopped; {resume}", INTERRUPTED_EXIT_CODE, result)
                raise SearchStopped(f"probe d={d} failed (jrft train exited with {rc}); see its run dirs under "
                                    f"{probe_dir(root, d)}, then {resume}", 1, result)
            result.launched.append(d)
            how = "trained"
        probe.passed = probe.mean >= settings.target_score
        passed[d] = probe.passed
        result.probes.append(probe)
        log(f"search-d: probe d={d} ({how}): score {probe.mean:.4f} vs target {settings.target_score:.4f}: "
            f"{'pass' if probe.passed else 'fail'}")
        save()


def reference_score(value: str, task: str, model: str, snapshot: str, main_metric: str) -> tuple[float, str]:
    """(score, description) of `--reference`: a number, or a run dir / results.json of the same task and
    model (its snapshot of the task's main metric)."""
    try:
        return float(value), "a number"
    except ValueError:
        pass
    path = Path(value)
    results_path = path if path.is_file() else path / RESULTS_FILE
    if not results_path.is_file():
        raise JrftError(f"--reference {value!r} is neither a number nor a run dir with a results.json")
    results = json.loads(results_path.read_text())
    if results.get("status") != "completed":
        raise JrftError(f"--reference {value!r}: its run has status {results.get('status')!r}, not 'completed'")
    if results.get("task") != task:
        raise JrftError(f"--reference {value!r} is a run of task {results.get('task')!r}; this search is on task "
                        f"{task!r}")
    if results.get("model") != model:
        raise JrftError(f"--reference {value!r} is a run of model {results.get('model')!r}; this search trains "
                        f"model {model!r}")
    snap = SNAPSHOTS[snapshot]
    score = (results.get(snap) or {}).get(main_metric)
    if not isinstance(score, (int, float)):
        raise JrftError(f"--reference {value!r}: its results.json has no {snap}[{main_metric!r}]")
    label = results.get("method_label") or results.get("method")
    return float(score), f"{label} run {value}"
