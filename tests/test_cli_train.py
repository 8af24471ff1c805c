"""`jrft train` end to end: `python -m jrft_cli train ...` in a subprocess, tiny budgets, logger=none unless
W&B is the point. Checks the run dir contract, errors, reproducibility, regression, W&B offline, interruption."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from jrft_cli.cli.config import group_choices
from jrft_cli.core.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_FILE, METRICS_FILE, RESULTS_FILE

from conftest import GLUE_MISSING, REPO, find_glue_dir, jrft_cmd, run_jrft, subprocess_env

pytestmark = pytest.mark.skipif(find_glue_dir() is None, reason=GLUE_MISSING)

TINY = ["logger=none", "hardware=cpu", "hardware.num_threads=1", "train.max_steps=3", "train.batch_size=8",
        "train.log_every=1", "data.limit_train=32", "data.limit_eval=16", "data.max_length=32"]
RESULT_KEYS = {"status", "task", "model", "method", "seed", "d", "trainable_params", "total_params", "main_metric",
               "dev", "best_dev", "steps", "wall_time_s", "examples_per_s", "peak_memory_mb", "jrft_version"}


def jrft_train(run_dir: Path, *overrides: str, env: dict | None = None, timeout: int = 300):
    return run_jrft("train", *overrides, f"hydra.run.dir={run_dir}", env=env, timeout=timeout)


def ok(proc) -> None:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def jr_runs(tmp_path_factory):
    """The same jr configuration run twice (seed 0)."""
    base = tmp_path_factory.mktemp("jr")
    runs = []
    for name in ("first", "second"):
        ok(jrft_train(base / name, *TINY, "d=64"))
        runs.append(base / name)
    return runs


# ---------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, nothing left behind


BAD_INPUT = {   # override -> the one stderr line (a regex)
    "task=nope": re.escape("jrft: error: task='nope' is not a valid choice; choose one of: "
                           + ", ".join(group_choices("task"))),
    "method=nope": re.escape("jrft: error: method='nope' is not a valid choice; choose one of: "
                             + ", ".join(group_choices("method"))),
    "d=0": re.escape("jrft: error: method.d=0 is not valid; it must be >= 1 (method=jr)"),
    "d=-3": re.escape("jrft: error: method.d=-3 is not valid; it must be >= 1 (method=jr)"),
    "data.dir=/nonexistent": re.escape(
        "jrft: error: data.dir '/nonexistent' does not exist; point data.dir (or JRFT_GLUE_DIR) at a glue_data/ "
        "root, or set data.dir=null to load from the Hugging Face Hub"),
    # the method's typed options, checked before Hydra makes the run dir
    "method.position=ffn": re.escape(
        "jrft: error: method.position='ffn' is not valid; choose one of output, intermediate, attention (method=jr)"),
    # offline with an empty HF cache: the Hub model cannot load
    "model=roberta-base": r"jrft: error: model.name 'FacebookAI/roberta-base' cannot be loaded \(.+\); "
                          r"use a local model directory, .*model=minilm",
}


@pytest.mark.parametrize("override", list(BAD_INPUT))
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, override):
    run_dir = tmp_path / "run"
    env = subprocess_env(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), WANDB_MODE="offline")
    proc = jrft_train(run_dir, "logger=wandb", "hardware=cpu", override, env=env)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]     # exactly one line: no Hydra/HF noise around it
    assert re.fullmatch(BAD_INPUT[override], lines[0]), lines[0]
    assert proc.stdout == ""
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------
# a run's directory


def test_run_dir_contract(jr_runs):
    run_dir = jr_runs[0]
    assert {p.name for p in run_dir.iterdir()} >= {CONFIG_FILE, METRICS_FILE, RESULTS_FILE, ADAPTER_WEIGHTS,
                                                   ADAPTER_CONFIG}
    config_text = (run_dir / CONFIG_FILE).read_text()
    assert "${" not in config_text
    config = yaml.safe_load(config_text)
    assert config["method"]["d"] == 64 and config["method"]["projection_seed"] == 0
    assert config["data"]["dir"] == str(find_glue_dir())

    records = read_jsonl(run_dir / METRICS_FILE)
    train_lines = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_lines] == [1, 2, 3]
    assert all({"train/loss", "train/lr", "train/examples_per_s"} <= r.keys() for r in train_lines)
    assert any("dev/accuracy" in r for r in records)

    results = json.loads((run_dir / RESULTS_FILE).read_text())
    assert RESULT_KEYS <= results.keys()
    assert results["status"] == "completed"
    assert (results["task"], results["model"], results["method"], results["seed"], results["d"]) == \
        ("sst2", "minilm", "jr", 0, 64)
    assert results["trainable_params"] == 64 + 770 and results["total_params"] == 22_566_146 + 64
    assert results["main_metric"] == "accuracy" and set(results["dev"]) == {"accuracy"}
    assert set(results["best_dev"]) == {"accuracy", "step"} and results["steps"] == 3
    assert results["wall_time_s"] > 0 and results["examples_per_s"] > 0 and results["peak_memory_mb"] > 0
    last_dev = [r for r in records if "dev/accuracy" in r][-1]
    assert results["dev"]["accuracy"] == last_dev["dev/accuracy"]

    # adapter.safetensors holds z and the head only: (64 + 770) floats, never backbone weights
    with safe_open(str(run_dir / ADAPTER_WEIGHTS), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == {"adapter.z": (64,), "head.weight": (2, 384), "head.bias": (2,)}
    assert (run_dir / ADAPTER_WEIGHTS).stat().st_size < 8_000
    adapter_cfg = json.loads((run_dir / ADAPTER_CONFIG).read_text())
    assert adapter_cfg["method"] == "jr" and adapter_cfg["num_labels"] == 2 and adapter_cfg["seed"] == 0


def test_same_seed_same_results(jr_runs):
    a, b = (json.loads((r / RESULTS_FILE).read_text()) for r in jr_runs)
    for key in ("dev", "best_dev", "steps", "trainable_params"):
        assert a[key] == b[key], key
    strip = lambda recs: [{k: v for k, v in r.items() if k != "train/examples_per_s"} for r in recs]  # noqa: E731
    assert strip(read_jsonl(jr_runs[0] / METRICS_FILE)) == strip(read_jsonl(jr_runs[1] / METRICS_FILE))


def test_lora_row_trains_only_lora_weights_and_a_first_token_linear_head(tmp_path):
    """`+row=lora_r1` is the paper's LoRA: rank-1 A and B on query and value, plus one linear layer on the
    first token (no pooler, no dense layer in the head)."""
    run_dir = tmp_path / "lora"
    ok(jrft_train(run_dir, *TINY, "+row=lora_r1"))
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    assert results["trainable_params"] == 9_986 and results["d"] is None and results["method"] == "lora"
    with safe_open(str(run_dir / ADAPTER_WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
    assert {"head.weight", "head.bias"} <= keys and len(keys) == 6 * 2 * 2 + 2
    lora = keys - {"head.weight", "head.bias"}
    assert all((".query." in k or ".value." in k) and (".lora_A." in k or ".lora_B." in k) for k in lora)
    info = json.loads((run_dir / ADAPTER_CONFIG).read_text())
    assert info["head"] == "first" and info["method_config"]["alpha"] == 8


@pytest.mark.parametrize("method,overrides,trainable", [
    ("adapters", [], 12 * (384 + 1 + 384 + 384) + 770),     # bottleneck 1 (reduction factor 768) + first-token head
    ("warp", ["method.k=7"], 7 * 384 + 770),                  # k prompt vectors of H = 384, plus the mask head
])
def test_adapters_and_warp_train_on_sst2(tmp_path, method, overrides, trainable):
    run_dir = tmp_path / method
    ok(jrft_train(run_dir, *TINY, "task=sst2", f"method={method}", *overrides))
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    assert results["status"] == "completed" and results["method"] == method
    assert results["trainable_params"] == trainable
    assert 0.0 <= results["dev"]["accuracy"] <= 1.0


def test_stsb_regression_end_to_end(tmp_path):
    run_dir = tmp_path / "stsb"
    ok(jrft_train(run_dir, *TINY, "task=stsb", "d=32"))
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    assert results["task"] == "stsb" and results["main_metric"] == "pearson"
    assert set(results["dev"]) == {"pearson", "spearman"}
    assert all(-1.0 <= v <= 1.0 for v in results["dev"].values())
    assert results["trainable_params"] == 32 + 384 + 1          # one output: head 384 + 1
    adapter_cfg = json.loads((run_dir / ADAPTER_CONFIG).read_text())
    assert adapter_cfg["num_labels"] == 1
    losses = [r["train/loss"] for r in read_jsonl(run_dir / METRICS_FILE) if "train/loss" in r]
    # MSE against 0..5 similarity scores from an untrained head: far above a cross-entropy's ~0.7
    assert losses and losses[0] > 1.0


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path):
    from jrft_cli.training.tracking import read_offline_run

    run_dir = tmp_path / "wb"
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    assert not any(k.startswith("WANDB_") and k != "WANDB_ERROR_REPORTING" for k in env)
    ok(jrft_train(run_dir, *[o for o in TINY if o != "logger=none"], "logger=wandb", "d=16", env=env))
    run = read_offline_run(run_dir)
    logged = {(r["_step"], k): v for r in run["history"] for k, v in r.items() if not k.startswith("_")}
    records = read_jsonl(run_dir / METRICS_FILE)
    for r in records:
        for k, v in r.items():
            if k in ("train/loss", "dev/accuracy"):
                assert logged[(r["step"], k)] == pytest.approx(v)
    assert run["config"]["method"]["d"] == 16
    assert run["summary"]["trainable_params"] == 16 + 770


def test_killed_run_leaves_no_results(tmp_path):
    run_dir = tmp_path / "killed"
    cmd = jrft_cmd("train", "logger=none", "hardware=cpu", "hardware.num_threads=1", "train.max_steps=500",
                   "train.batch_size=8", "train.log_every=1", "data.limit_train=400", "data.limit_eval=16",
                   "data.max_length=32", f"hydra.run.dir={run_dir}")
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / METRICS_FILE
    try:
        deadline = time.monotonic() + 240
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, "the run ended before logging"
            assert time.monotonic() < deadline, "no metrics line within 240 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert metrics.exists() and not (run_dir / RESULTS_FILE).exists()
    assert not (run_dir / ADAPTER_WEIGHTS).exists()


def test_a_non_private_run_never_loads_opacus(tmp_path):
    """`jrft train` without privacy=dp runs to completion without importing opacus (dp loads lazily)."""
    probe = ("import sys\nfrom jrft_cli.__main__ import main\nrc = main(sys.argv[1:])\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'opacus'))\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", probe, "train", *TINY, "d=16", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    ok(proc)
    assert (tmp_path / "run" / RESULTS_FILE).exists()
    assert proc.stdout.strip().splitlines()[-1] == "[]"
