"""Data parallel training: rank detection, batch sharding, and a 2-process (gloo) `torchrun` run
that must match a single-process run with the same global batch."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess

import pytest

from jrft_cli.training.distributed import SINGLE, DistInfo, detect
from jrft_cli.training.loop import shard

from conftest import REPO, needs_glue, plain, run_jrft, subprocess_env

LOSS_TOLERANCE = 1e-4   # float32 sums in another order: observed differences are ~1e-7


def test_detect_reads_torchrun_and_srun_variables():
    assert detect({}) == SINGLE
    assert detect({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == DistInfo(1, 2, 1)
    env = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
           "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1"}
    assert detect(env) == DistInfo(1, 2, 1)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("1", "2", "20042")
    assert detect({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0"}) == SINGLE


def test_shard_splits_a_global_batch_into_contiguous_near_equal_slices():
    items = list(range(7))
    slices = [shard(items, r, 3) for r in range(3)]
    assert slices == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard([0], 1, 2) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ARGS = ["method=jr", "task=rte", "logger=none", "hardware=cpu", "hardware.num_threads=1", "train.max_steps=4",
        "train.batch_size=15", "train.log_every=1", "data.limit_train=60", "data.limit_eval=32"]


@needs_glue("RTE")
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_gloo_processes_match_one_process(tmp_path, glue_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ARGS + [f"data.dir={glue_dir}"]
    run_jrft("train", *args, f"hydra.run.dir={one}", check=True)
    # batch 15 over 2 ranks: uneven slices (8 + 7) must still give the global mean gradient
    proc = subprocess.run(["torchrun", "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "jrft_cli",
                           "train", *args, f"hydra.run.dir={two}"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert b["steps"] == a["steps"] == 4
    assert b["dev"] == a["dev"] and b["best_dev"] == a["best_dev"]        # identical accuracy
    la, lb = ([json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    losses = [(x["train/loss"], y["train/loss"]) for x, y in zip(la, lb) if "train/loss" in x]
    assert len(losses) == 4
    assert all(abs(x - y) <= LOSS_TOLERANCE for x, y in losses), losses
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())   # rank 0 wrote it all


def test_dp_with_several_processes_is_refused_in_one_line(tmp_path, monkeypatch):
    from jrft_cli.training import recipe as train
    from jrft_cli.core.errors import JrftError

    cfg = plain("privacy=dp")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(JrftError, match=r"DP training with 2 processes \(DDP\) is not supported") as info:
        train.run(cfg, tmp_path / "run")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()
