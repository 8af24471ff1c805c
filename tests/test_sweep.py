"""Sweep summaries (jrft_cli.reporting.sweep, the Hydra callback) and relaunching a sweep: finished jobs are skipped."""
from __future__ import annotations

import json
from pathlib import Path

from jrft_cli.reporting.sweep import SUMMARY_JSON, SUMMARY_MD, run_status, summarize

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
