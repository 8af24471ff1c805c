"""`jrft export`, `jrft eval`, `jrft predict` end to end through the CLI dispatcher, on a real short run."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from jrft_cli.__main__ import main

from conftest import plain

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory, glue_dir) -> tuple[Path, Path, dict]:
    from jrft_cli.training.recipe import run

    if not (glue_dir / "RTE" / "dev.tsv").is_file():
        pytest.skip(f"GLUE RTE not found under {glue_dir}")
    cfg = plain("task=rte", f"data.dir={glue_dir}", "method=jr", "d=256", "train.max_steps=2", "train.batch_size=8",
                "data.limit_train=16", "data.limit_eval=24", "hardware.num_threads=1")
    root = tmp_path_factory.mktemp("cli")
    results = run(cfg, root / "run")
    assert main(["export", str(root / "run"), "--out", str(root / "export")]) == 0
    return root / "run", root / "export", results


@pytest.mark.parametrize("which", ["run", "export"])
def test_eval_prints_and_writes_the_runs_dev_metrics(which, run_and_export, glue_dir, capsys, tmp_path):
    run_dir, export_dir, results = run_and_export
    target = run_dir if which == "run" else export_dir
    out = tmp_path / "m.json"
    rc = main(["eval", str(target), "task=rte", f"data.dir={glue_dir}", "data.limit_eval=24", f"out={out}"])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["examples"] == 24 and record["task"] == "rte" and record["kind"] == which
    assert record["metrics"] == results["dev"]
    assert f"accuracy={results['dev']['accuracy']:.4f}" in capsys.readouterr().out


def test_eval_default_output_file(run_and_export, glue_dir):
    run_dir, _, _ = run_and_export
    assert main(["eval", str(run_dir), f"data.dir={glue_dir}", "data.limit_eval=8"]) == 0
    assert json.loads((run_dir / "eval_dev.json").read_text())["examples"] == 8


def test_predict_run_and_export_agree(run_and_export, capsys, tmp_path, monkeypatch):
    run_dir, export_dir, _ = run_and_export
    lines = "The cat sat on the mat.\tA cat sat.\nIt rained all day.\tThe sun shone.\n\nNo one came.\tEveryone came.\n"
    src = tmp_path / "in.tsv"
    src.write_text(lines)
    out = tmp_path / "pred.tsv"
    assert main(["predict", str(run_dir), "--input", str(src), "--out", str(out)]) == 0
    from_run = out.read_text().splitlines()
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["predict", str(export_dir)]) == 0
    from_export = capsys.readouterr().out.splitlines()
    assert from_run[0] == from_export[0] == "label\tscore\tentailment\tnot_entailment"
    assert len(from_run) == len(from_export) == 4          # header + 3 (the blank line is skipped)
    for a, b in zip(from_run[1:], from_export[1:]):
        la, *pa = a.split("\t")
        lb, *pb = b.split("\t")
        assert la == lb and la in ("entailment", "not_entailment")
        pa, pb = [float(x) for x in pa], [float(x) for x in pb]
        assert pa == pytest.approx(pb, abs=1e-5)
        assert sum(pa[1:]) == pytest.approx(1.0, abs=1e-5) and pa[0] == max(pa[1:])


@pytest.mark.parametrize("args, message", [
    (["eval", "{tmp}/missing"], "target '{tmp}/missing' does not exist"),
    (["eval", "{tmp}"], "is neither a jrft run dir"),
    (["eval", "{run}", "task=sst2"], "task='sst2' does not match the target, which was trained on task 'rte'"),
    (["eval", "{run}", "task=nope"], "task='nope' is not valid; choose one of cola, conll2003, custom, mnli"),
    (["eval", "{run}", "colour=red"], "unknown key 'colour'; choose one of task, split"),
    (["eval", "{run}", "batch_size=0"], "batch_size='0' is not valid"),
    (["eval", "{run}", "split=test"], "unknown split 'test'; choose train or dev"),
    (["predict", "{tmp}/missing"], "target '{tmp}/missing' does not exist"),
    (["predict", "{run}", "--input", "{tmp}/none.txt"], "is not a file"),
    (["export", "{tmp}", "--out", "{tmp}/x"], "is not a jrft run dir"),
])
def test_bad_input_is_one_line_error(args, message, run_and_export, tmp_path, capsys):
    run_dir, _, _ = run_and_export
    fill = lambda s: s.format(tmp=tmp_path, run=run_dir)  # noqa: E731
    assert main([fill(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert fill(message) in err and len(err.splitlines()) == 1, err


def test_predict_pair_task_needs_tab(run_and_export, capsys, monkeypatch):
    run_dir, _, _ = run_and_export
    monkeypatch.setattr("sys.stdin", io.StringIO("only one sentence\n"))
    assert main(["predict", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 1: task rte takes sentence pairs" in err and len(err.splitlines()) == 1
