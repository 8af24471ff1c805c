"""Hydra callbacks (configured under hydra.callbacks in conf/config.yaml).

`SweepSummary` keeps `<sweep dir>/sweep_summary.json` (+ .md, see jrft_cli.reporting.sweep) up to date:
written with every job pending when a multirun starts, updated as each job ends (in the job's
own process, so SLURM jobs update it too) and finalized when the multirun ends. A failed job
makes Hydra abort the multirun before its end hook, which is why the job-end update matters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from jrft_cli.reporting import sweep


def expand_sweep(config: Any) -> list[list[str]]:
    """Every job's override list, in job-number order, as Hydra's basic sweeper expands them
    (hydra.sweeper.params from the config, then the command line's overrides)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def _is_multirun(config: Any) -> bool:
    return str(config.hydra.mode) == "RunMode.MULTIRUN"


class SweepSummary(Callback):
    """Writes and updates the sweep summary (see the module doc)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep.write_summary(sweep_dir, expand_sweep(config), finished=False)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        try:
            sweep.clear_failure(Path(str(config.hydra.sweep.dir)), list(config.hydra.overrides.task))
        except OSError:
            pass

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        from hydra.core.utils import JobStatus

        known = None
        try:
            if job_return.status == JobStatus.FAILED:
                # the job's exception (its return_value property would re-raise it)
                error = getattr(job_return, "_return_value", None)
                sweep.record_failure(sweep_dir, list(config.hydra.overrides.task),
                                     str(error) or type(error).__name__)
                known = {int(config.hydra.job.num): "failed"}
            jobs = sweep.read_jobs(sweep_dir)
            if jobs is not None:
                sweep.write_summary(sweep_dir, jobs, finished=False, known=known)
        except (OSError, ValueError):
            pass  # a summary is a convenience; never fail a job over it

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep.write_summary(sweep_dir, expand_sweep(config), finished=True)
