"""`jrft table`: collection, aggregation, rendering, plots, CLI.

Fixtures (tests/fixtures/table/) are hand-written results.json files; expected.md / expected.csv were
reviewed by hand. Hand checks of the numbers they contain (scores x100, sample std with ddof=1):
  minilm full sst2   91.2, 91.8, 91.5 -> mean 91.5, deviations -.3,.3,0 -> var .18/2 -> std 0.3
  minilm full cola   56, 58           -> mean 57.0, var 2/1 -> std sqrt(2) = 1.4
  minilm lora sst2   90.0, 90.4       -> mean 90.2, var .08 -> std .283 -> 0.3
  minilm jr rte      73.0, 72.5, 73.5 -> mean 73.0, var .5/2 -> std 0.5 (best RTE: 73.0 > 71.0 > 65.0 > 59.0)
  Avg full  (57 + 91.5 + 71) / 3 = 73.17 -> 73.2;  jr (60 + 90.8 + 73) / 3 = 74.6 (best among full rows);
  linear lacks CoLA: Avg (81 + 59) / 2 = 70.0, never bold, footnoted.
  eps 8: lora cola -2.0 (n=1, negative MCC kept); jr Avg (11.1 + 89.3) / 2 = 50.2; eps 3 jr 86.5 +- 0.7.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from jrft_cli.reporting.table import build_tables, collect, format_params, plot, relative_to, render

from conftest import REPO, run_jrft

FIXTURES = REPO / "tests" / "fixtures" / "table"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(**over) -> dict:
    run = {"status": "completed", "task": "sst2", "model": "minilm", "method": "jr", "method_label": "jr d=1024",
           "seed": 0, "trainable_params": 1794, "main_metric": "accuracy", "dev": {"accuracy": 0.8},
           "best_dev": {"accuracy": 0.83, "step": 5}, "privacy": None}
    run.update(over)
    return run


def _write(folder: Path, run: dict, mtime: float | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps(run))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture(scope="module")
def fixture_runs():
    return collect([FIXTURES])


def test_render_md_equals_reviewed_expected(fixture_runs):
    runs, _ = fixture_runs
    assert render(build_tables(runs), "md") == (FIXTURES / "expected.md").read_text(encoding="utf-8")


def test_render_csv_equals_reviewed_expected(fixture_runs):
    runs, _ = fixture_runs
    assert render(build_tables(runs), "csv") == (FIXTURES / "expected.csv").read_text(encoding="utf-8")


def test_statistics_match_hand_computation(fixture_runs):
    runs, _ = fixture_runs
    tables = {t.title: t for t in build_tables(runs)}
    assert list(tables) == ["minilm, non-private", "roberta-base, non-private", "minilm, ε = 3", "minilm, ε = 8"]
    rows = {r.method: r for r in tables["minilm, non-private"].rows}
    assert [r.method for r in tables["minilm, non-private"].rows] == ["full", "lora r=1", "jr d=4096", "linear"]
    full_sst2 = rows["full"].cells[("sst2", "accuracy")]
    assert full_sst2.n == 3 and math.isclose(full_sst2.mean, 91.5) and math.isclose(full_sst2.std, 0.3)
    assert math.isclose(rows["full"].cells[("cola", "matthews_correlation")].std, math.sqrt(2))
    assert math.isclose(rows["lora r=1"].cells[("sst2", "accuracy")].std, math.sqrt(0.08))
    assert rows["lora r=1"].cells[("rte", "accuracy")].std is None  # one seed: no std
    assert math.isclose(rows["jr d=4096"].avg, (60 + 90.8 + 73) / 3)
    assert rows["jr d=4096"].avg_best and not rows["linear"].avg_best  # linear lacks CoLA
    best = {c.task: [r.method for r in rows.values() if r.cells.get((c.task, c.metric)) and
                     r.cells[(c.task, c.metric)].best] for c in tables["minilm, non-private"].columns}
    assert best == {"cola": ["jr d=4096"], "sst2": ["full"], "rte": ["jr d=4096"]}
    dp = {r.method: r for r in tables["minilm, ε = 8"].rows}
    assert math.isclose(dp["lora r=1"].cells[("cola", "matthews_correlation")].mean, -2.0)


def test_skipped_names_broken_incomplete_and_malformed(fixture_runs):
    _, skipped = fixture_runs
    reasons = {p.parent.name: why for p, why in skipped}
    assert set(reasons) == {"broken", "incomplete", "no-main-metric"}
    assert reasons["broken"].startswith("unreadable JSON")
    assert "running" in reasons["incomplete"]
    assert "main_metric" in reasons["no-main-metric"]


def test_missing_path_is_skipped_not_a_crash(tmp_path):
    runs, skipped = collect([tmp_path / "nope"])
    assert runs == [] and skipped == [(tmp_path / "nope", "no such file or directory")]


def test_rerun_of_same_seed_keeps_newest_and_lists_older(tmp_path):
    old = _write(tmp_path / "a", _run(best_dev={"accuracy": 0.70}), mtime=1_000)
    new = _write(tmp_path / "b", _run(best_dev={"accuracy": 0.90}), mtime=2_000)
    other_seed = _write(tmp_path / "c", _run(seed=1, best_dev={"accuracy": 0.80}), mtime=500)
    runs, skipped = collect([tmp_path])
    assert sorted(r["_path"] for r in runs) == [new, other_seed]
    assert len(skipped) == 1 and skipped[0][0] == old and str(new) in skipped[0][1]
    cell = build_tables(runs)[0].rows[0].cells[("sst2", "accuracy")]
    assert cell.n == 2 and math.isclose(cell.mean, 85.0)


def test_epsilon_grouping_tolerates_accountant_rounding():
    runs = [_run(privacy={"epsilon": 8.0}), _run(seed=1, privacy={"epsilon": 7.99991})]
    (table,) = build_tables(runs)
    assert table.epsilon == 8.0 and table.rows[0].cells[("sst2", "accuracy")].n == 2


def test_epsilon_grouping_uses_the_target_when_the_spent_epsilon_differs_by_task():
    # found in small_glue: target 8 spent 7.9954 on SST-2 and 7.9929 on MRPC, which made two tables
    runs = [_run(privacy={"epsilon": 7.995416, "target_epsilon": 8.0}),
            _run(task="mrpc", privacy={"epsilon": 7.992944, "target_epsilon": 8.0})]
    (table,) = build_tables(runs)
    assert table.epsilon == 8.0 and [c.task for c in table.columns] == ["sst2", "mrpc"]
    no_target = _run(privacy={"epsilon": 2.71828, "target_epsilon": None})   # noise given: grouped by spent
    assert [t.epsilon for t in build_tables([no_target])] == [2.72]


def test_final_snapshot_reads_dev(fixture_runs):
    runs, _ = fixture_runs
    rows = {r.method: r for r in build_tables(runs, "final")[0].rows}
    # fixture dev = best_dev - 0.01 for every run
    assert math.isclose(rows["full"].cells[("sst2", "accuracy")].mean, 90.5)
    with pytest.raises(ValueError, match="'last' is not one of: best, final"):
        build_tables(runs, "last")


def test_metric_name_override_leaves_out_runs_without_it(fixture_runs):
    runs, _ = fixture_runs
    table = build_tables(runs, metric_name="accuracy")[0]
    assert [c.task for c in table.columns] == ["sst2", "rte"]  # CoLA runs report only MCC
    assert "7 run(s) lack metric 'accuracy'" in table.notes[-1]  # full 2 + lora 3 + jr 2 CoLA seeds


def test_param_count_range_when_head_size_differs():
    runs = [_run(), _run(task="mnli", trainable_params=2179, best_dev={"accuracy": 0.7})]
    (table,) = build_tables(runs)
    assert [c.task for c in table.columns] == ["sst2", "mnli"]  # GLUE order
    assert table.rows[0].label == "jr d=1024 (1.8K–2.2K)"


def test_param_count_range_only_when_it_shows():
    # found in small_glue: full finetuning's head is 1 (STS-B) or 2 outputs wide, and read "22.6M–22.6M"
    runs = [_run(method="full", method_label="full", trainable_params=22_566_146),
            _run(task="stsb", method="full", method_label="full", trainable_params=22_565_761,
                 main_metric="pearson", best_dev={"pearson": 0.8})]
    (table,) = build_tables(runs)
    assert table.rows[0].params == (22_565_761, 22_566_146)
    assert table.rows[0].label == "full (22.6M)"


@pytest.mark.parametrize("n, text", [(770, "770"), (4866, "4.9K"), (9986, "10.0K"), (999_960, "1.0M"),
                                     (22_614_530, "22.6M"), (355_000_000, "355.0M")])
def test_format_params(n, text):
    assert format_params(n) == text


def test_render_latex_booktabs_bold_and_escaping():
    runs = [_run(method_label="lora_r=1"), _run(seed=1, method_label="lora_r=1", best_dev={"accuracy": 0.85})]
    tex = render(build_tables(runs), "latex")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"lora\_r=1 (1.8K) & \textbf{84.0 $\pm$ 1.4 (n=2)} & \textbf{84.0} \\" in tex
    with pytest.raises(ValueError, match="'html' is not one of: md, latex, csv"):
        render([], "html")


def test_cli_md_end_to_end_prints_expected():
    proc = run_jrft("table", str(FIXTURES.relative_to(REPO)), "--format", "md")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (FIXTURES / "expected.md").read_text(encoding="utf-8")
    assert proc.stderr.count("skipped") == 3 and "problems/broken/results.json" in proc.stderr


def test_cli_out_writes_csv(tmp_path):
    out = tmp_path / "t.csv"
    proc = run_jrft("table", str(FIXTURES), "--format", "csv", "--out", str(out))
    assert proc.returncode == 0 and proc.stdout == ""
    assert out.read_text(encoding="utf-8") == (FIXTURES / "expected.csv").read_text(encoding="utf-8")


def test_cli_plot_writes_pngs(tmp_path):
    proc = run_jrft("table", str(FIXTURES), "--plot", str(tmp_path / "plots"))
    assert proc.returncode == 0, proc.stderr
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    # params plots: minilm non-private 3 tasks + roberta-base 1 + eps3 1 + eps8 2; epsilon plots: sst2, cola
    assert len(pngs) == 9
    assert sum(p.name.startswith("epsilon_") for p in pngs) == 2
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_SIGNATURE and p.stat().st_size > 1000
        assert str(p) in proc.stderr  # every written path is reported


def test_plot_returns_written_paths(tmp_path):
    runs = [_run(), _run(method_label="full", trainable_params=22_614_530, best_dev={"accuracy": 0.9})]
    paths = plot(runs, tmp_path)
    assert [p.name for p in paths] == ["params_minilm_nonprivate_sst2_accuracy.png"]
    assert paths[0].read_bytes()[:8] == PNG_SIGNATURE


def test_cli_bad_format_exits_2_with_choices():
    proc = run_jrft("table", str(FIXTURES), "--format", "xml")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]  # argparse's one-line error; choice quoting varies by Python
    assert "--format" in err and "invalid choice: 'xml'" in err and all(f in err for f in ("md", "latex", "csv"))


def test_cli_no_runs_exits_1(tmp_path):
    proc = run_jrft("table", str(tmp_path))
    assert proc.returncode == 1 and "no completed runs" in proc.stderr


def test_failed_runs_are_skipped_with_their_error_on_stderr(tmp_path):
    _write(tmp_path / "ok", _run())
    failed = _write(tmp_path / "failed", {"status": "failed", "error": "training failed at step 2: loss is nan",
                                          "task": "sst2", "model": "minilm", "method": "jr", "seed": 1})
    runs, skipped = collect([tmp_path])
    assert [r["seed"] for r in runs] == [0]
    assert skipped == [(failed, "the run failed (training failed at step 2: loss is nan); it is not averaged in")]
    proc = run_jrft("table", str(tmp_path))
    assert proc.returncode == 0 and "(n=1)" in proc.stdout
    assert f"jrft table: skipped {failed}: the run failed (training failed at step 2: loss is nan)" in proc.stderr


def test_cli_out_naming_a_directory_is_one_line(tmp_path):
    proc = run_jrft("table", str(FIXTURES), "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"jrft table: error: --out '{tmp_path}' is a directory; give a file path "
                                        f"(e.g. {tmp_path / 'out.tsv'})"]


# ---------------------------------------------------------------- --relative-to: % of a reference row

def _cells(table) -> dict[tuple[str, str], tuple[float, float | None, int]]:
    return {(r.method, task): (round(c.mean, 1), c.std and round(c.std, 1), c.n)
            for r in table.rows for (task, _), c in r.cells.items()}


def test_relative_to_full_divides_every_seed_by_fulls_mean_on_that_task(fixture_runs):
    runs, _ = fixture_runs
    tables, left_out = relative_to(build_tables(runs), "full")
    # roberta-base has no full row: its table is left out and said so
    assert [t.title for t in tables] == ["minilm, non-private", "minilm, ε = 3", "minilm, ε = 8"]
    assert left_out == ["roberta-base, non-private: no non-private 'full' row for roberta-base"]
    nonprivate, _, eps8 = tables
    cells = _cells(nonprivate)
    # jr CoLA 59, 61 / 57 = 103.5, 107.0 -> mean 105.3, std of (1.4 / 57 * 100) = 2.5
    assert cells[("jr d=4096", "cola")] == (105.3, 2.5, 2)
    # jr SST-2 90.8 / 91.5 = 99.2; full is 100.0 on every task, its std its seeds' spread in %
    assert cells[("jr d=4096", "sst2")] == (99.2, 0.3, 3) and cells[("full", "sst2")] == (100.0, 0.3, 3)
    # Avg: the mean of a row's percentages, jr (105.26 + 99.23 + 102.82) / 3 = 102.4
    jr = next(r for r in nonprivate.rows if r.method == "jr d=4096")
    assert round(jr.avg, 1) == 102.4 and jr.avg_best
    # private rows read against the non-private full: DP jr SST-2 89.3 / 91.5 = 97.6, DP LoRA CoLA -2 / 57 = -3.5
    assert _cells(eps8)[("jr d=4096", "sst2")][0] == 97.6 and _cells(eps8)[("lora r=1", "cola")][0] == -3.5
    assert "as % of full's mean" in nonprivate.notes[0]


def test_relative_to_leaves_out_a_column_whose_reference_is_not_positive():
    runs = [_run(method_label="full", trainable_params=22_614_530, best_dev={"accuracy": 0.9}),
            _run(task="cola", main_metric="matthews", method_label="full", trainable_params=22_614_530,
                 dev={"matthews": 0.0}, best_dev={"matthews": 0.0}),
            _run(), _run(task="cola", main_metric="matthews", dev={"matthews": 0.1}, best_dev={"matthews": 0.1})]
    tables, left_out = relative_to(build_tables(runs), "full")
    assert [c.task for c in tables[0].columns] == ["sst2"]
    assert left_out == ["minilm, non-private: CoLA (MCC) (full's mean 0.0 is not positive)"]
    assert _cells(tables[0])[("jr d=1024", "sst2")][0] == round(83 / 90 * 100, 1)


def test_relative_to_an_unknown_row_names_the_rows_there_are(fixture_runs):
    runs, _ = fixture_runs
    with pytest.raises(ValueError, match=r"--relative-to 'ful' names no non-private row; valid: full, jr d=4096, "
                                         r"linear, lora r=1"):
        relative_to(build_tables(runs), "ful")
    proc = run_jrft("table", str(FIXTURES), "--relative-to", "ful")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1].startswith("jrft table: error: --relative-to 'ful' names no non-private row")


def test_cli_relative_to_prints_percentages_and_what_it_left_out(tmp_path):
    out = tmp_path / "rel.csv"
    proc = run_jrft("table", str(FIXTURES), "--relative-to", "full", "--format", "csv", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "jrft table: left out roberta-base, non-private: no non-private 'full' row" in proc.stderr
    rows = out.read_text().splitlines()
    assert rows[0].endswith(",scale") and all(r.endswith(",% of full") for r in rows[1:])
    assert "minilm,,jr d=4096,sst2,accuracy,best,4866,99.2350," in out.read_text()
