"""A real SLURM sweep through hydra-submitit-launcher (conf/hydra/launcher/slurm.yaml): two tiny jobs
run, complete (results.json + sacct COMPLETED), get a sweep summary, and `jrft table` builds a table
from them. Skips when no SLURM cluster answers (.ci/run starts one with ../shared/slurm/start_slurm.sh)."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from conftest import needs_glue, run_jrft

pytestmark = pytest.mark.slurm


def _cluster_answers() -> str | None:
    """None when `sinfo` answers with an available partition, else why not."""
    if shutil.which("sinfo") is None:
        return "no SLURM client (sinfo) on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()[:200]}"
    if " up" not in out.stdout:
        return f"no SLURM partition is up: {out.stdout.strip()[:200]!r}"
    return None


def _sacct_states(job_ids: list[str], timeout_s: float = 60) -> dict[str, str]:
    """Final sacct state of each job (accounting lags the job's end by a few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=30).stdout
        states = dict(line.split("|")[:2] for line in out.splitlines() if "|" in line)
        if all(states.get(j, "").split()[:1] not in ([], ["PENDING"], ["RUNNING"], ["COMPLETING"]) for j in job_ids) \
                or time.monotonic() > deadline:
            return states
        time.sleep(2)


@needs_glue("RTE")
def test_slurm_sweep_runs_jobs_and_builds_a_table(tmp_path, glue_dir):
    why = _cluster_answers()
    if why:
        pytest.skip(f"no SLURM cluster: {why}")
    sweep = tmp_path / "sweep"
    proc = run_jrft("train", "-m", "hydra/launcher=slurm",
                    "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=15",
                    "task=rte,wnli", "method=linear", "train.max_steps=2", "data.limit_train=32", "data.limit_eval=16",
                    "logger=none", "hardware=cpu", "hardware.num_threads=1", f"data.dir={glue_dir}",
                    f"hydra.sweep.dir={sweep}", timeout=900)
    logs = "\n".join(p.read_text()[-1500:] for p in sweep.glob(".submitit/*/*.err"))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs

    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["completed", "completed"], summary
    for job in summary["jobs"]:
        results = json.loads((sweep / job["dir"] / "results.json").read_text())
        assert results["status"] == "completed" and results["steps"] == 2

    # submitit's folders are named by SLURM job id: <array id>_<task id>
    job_ids = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(job_ids) == 2
    states = _sacct_states(job_ids)
    assert all(states.get(j) == "COMPLETED" for j in job_ids), states

    table = run_jrft("table", str(sweep), check=True).stdout
    assert "RTE" in table and "WNLI" in table and "linear" in table
