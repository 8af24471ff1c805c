"""Sweep summaries (jrft_cli.reporting.sweep, the Hydra callback) and relaunching a sweep: finished jobs are skipped."""
from __future__ import annotations

import json
from pathlib import Path

from jrft_cli.reporting.sweep import (SUMMARY_JSON, SUMMARY_MD, clear_failure, record_failure, run_status, summarize,
                                      write_summary)

from conftest import needs_glue, run_jrft


def _job(sweep: Path, name: str, overrides: list[str], files: dict[str, str]) -> Path:
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    for f, text in files.items():
        (d / f).write_text(text)
    return d


def test_summarize_reads_each_jobs_status_from_its_run_dir(tmp_path):
    done = json.dumps({"status": "completed", "main_metric": "accuracy", "dev": {"accuracy": 0.75}})
    _job(tmp_path, "0_rte_jr_s0", ["task=rte", "seed=0"], {"results.json": done})
    _job(tmp_path, "1_rte_jr_s1", ["task=rte", "seed=1"], {"checkpoint.pt": "x"})
    _job(tmp_path, "2_rte_jr_s2", ["task=rte", "seed=2"], {"config.yaml": "a: 1"})
    jobs = [["task=rte", f"seed={s}"] for s in range(4)]
    rows = summarize(tmp_path, jobs)
    assert [r["status"] for r in rows] == ["completed", "interrupted", "failed", "missing"]
    assert rows[0]["dir"] == "0_rte_jr_s0" and rows[0]["dev"] == 0.75 and rows[3]["dir"] is None
    assert summarize(tmp_path, jobs, finished=False)[2]["status"] == "running"
    assert run_status(None) == "missing"


def test_failed_jobs_carry_their_error(tmp_path):
    failed = json.dumps({"status": "failed", "error": "training failed at step 3: loss is nan"})
    _job(tmp_path, "0_rte_jr_s0", ["task=rte", "seed=0"], {"results.json": failed})
    _job(tmp_path, "1_rte_jr_s1", ["task=rte", "seed=1"], {"results.json": '{"status": "comp'})
    # job 2 failed on its config: its run dir is gone, the callback kept its error
    record_failure(tmp_path, ["seed=2", "task=rte"], "train.lr=-1 is not valid; it must be > 0")
    jobs = [["task=rte", f"seed={s}"] for s in range(4)]
    rows = write_summary(tmp_path, jobs)
    assert [r["status"] for r in rows] == ["failed", "failed", "failed", "missing"]
    assert rows[0]["error"] == "training failed at step 3: loss is nan"
    assert "results.json is unreadable" in rows[1]["error"]
    assert rows[2]["error"] == "train.lr=-1 is not valid; it must be > 0" and rows[2]["dir"] is None
    assert "error" not in rows[3]
    assert "| failed: train.lr=-1 is not valid; it must be > 0 |" in (tmp_path / SUMMARY_MD).read_text()
    clear_failure(tmp_path, ["task=rte", "seed=2"])      # the job runs again
    assert summarize(tmp_path, jobs)[2]["status"] == "missing"
    (tmp_path / "1_rte_jr_s1" / ".hydra" / "overrides.yaml").write_text("- [unclosed")   # a damaged record
    assert [r["status"] for r in summarize(tmp_path, jobs)] == ["failed", "missing", "missing", "missing"]


def test_a_job_failing_on_its_config_is_failed_with_its_error(tmp_path):
    """Both jobs are refused by their config (no training): the sweep exits non-zero, leaves no run dir,
    and its summary lists each job as failed with the one-line error."""
    sweep = tmp_path / "sweep"
    proc = run_jrft("train", "-m", "train.warmup_ratio=2,-1", "logger=none", "hardware=cpu", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    jobs = json.loads((sweep / SUMMARY_JSON).read_text())["jobs"]
    assert [(j["status"], j["dir"]) for j in jobs] == [("failed", None), ("failed", None)]
    assert jobs[0]["error"] == "train.warmup_ratio=2 is not valid; it must be in [0, 1)"
    assert jobs[1]["error"] == "train.warmup_ratio=-1 is not valid; it must be in [0, 1)"
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == [
        "multirun.yaml", SUMMARY_JSON, SUMMARY_MD]


@needs_glue("RTE")
def test_local_multirun_writes_a_summary_and_a_relaunch_skips_finished_jobs(tmp_path, glue_dir):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "task=rte,wnli", "method=linear", "train.max_steps=2", "data.limit_train=32",
            "data.limit_eval=16", "logger=none", "hardware=cpu", "hardware.num_threads=1",
            f"data.dir={glue_dir}", f"hydra.sweep.dir={sweep}"]
    run_jrft(*args, check=True)
    summary = json.loads((sweep / SUMMARY_JSON).read_text())
    assert summary["finished"] and summary["counts"] == {"completed": 2}
    assert [j["dir"] for j in summary["jobs"]] == ["0_rte_linear_s0", "1_wnli_linear_s0"]
    assert "task=wnli" in summary["jobs"][1]["overrides"]
    assert "| 1 |" in (sweep / SUMMARY_MD).read_text()
    first = {j["dir"]: (sweep / j["dir"] / "results.json").read_text() for j in summary["jobs"]}

    again = run_jrft(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already holds a completed run") == 2
    assert {d: (sweep / d / "results.json").read_text() for d in first} == first   # untouched
