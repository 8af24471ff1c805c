"""jrft search-d: the search (log2 grid, doubling / halving, bisection) and, end to end, real probes
through `jrft train` in a resumable dir."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env
from jrft_cli.core.errors import JrftError
from jrft_cli.search.intrinsic import grid_values, snap_to_grid, walk


def test_grid_is_log2_spaced_and_distinct():
    assert grid_values(1, 64) == [1, 2, 4, 8, 16, 32, 64]
    assert grid_values(2, 64) == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64]
    assert grid_values(2, 100) == grid_values(2, 64) + [91]
    assert snap_to_grid(grid_values(2, 64), 10) == 11
    with pytest.raises(JrftError, match="--d-start=100 is above --d-max=64"):
        snap_to_grid(grid_values(1, 64), 100)


def _search(grid, start, threshold):
    """Run the search against `d passes iff d >= threshold`; return (answer, below, probes in order)."""
    passed, order = {}, []
    while True:
        step = walk(grid, start, passed)
        if step.next_d is None:
            return step.answer, step.below, order
        assert step.next_d not in passed        # never probes a d twice
        order.append(step.next_d)
        passed[step.next_d] = step.next_d >= threshold


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("start", [1, 16, 100])
@pytest.mark.parametrize("threshold", [1, 5, 16, 17, 300, 4096, 5000])
def test_finds_the_smallest_passing_grid_value(steps, start, threshold):
    grid = grid_values(steps, 4096)
    start = snap_to_grid(grid, start)
    answer, below, order = _search(grid, start, threshold)
    expected = next((d for d in grid if d >= threshold), None)
    assert answer == expected
    if expected is None:                        # nothing passes: the top of the grid failed
        assert below == grid[-1]
    elif expected == grid[0]:
        assert below is None
    else:                                       # the bracket is two grid neighbours
        assert below == grid[grid.index(expected) - 1]
    assert len(order) <= 2 * len(grid).bit_length() + 12 * steps   # doubling + bisection, not a scan


def test_doubling_then_bisection_order():
    grid = grid_values(2, 4096)
    assert _search(grid, 16, 100)[2] == [16, 32, 64, 128, 91]
    assert _search(grid, 16, 5)[2] == [16, 8, 4, 6]            # start passes: halve, then bisect


# ----------------------------------------------------------------------------- end to end

PROBE = ["task=sst2", "logger=none", "hardware=cpu", "hardware.num_threads=1", "data.limit_train=16",
         "data.limit_eval=16", "data.max_length=32", "train.max_steps=1", "train.batch_size=8"]


def _search_d(args, cwd):
    return subprocess.run([sys.executable, "-m", "jrft_cli", "search-d", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def first_launch(glue_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("search_d")
    # reference 0.05: every probe passes, so from d=2 the search halves to the grid's bottom, d=1
    args = [*PROBE, "--reference", "0.05", "--seeds", "0,1", "--d-start", "2", "--d-max", "4", "--dir", "search"]
    proc = _search_d(args, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, args, proc


def test_search_writes_table_plot_and_state(first_launch):
    root, _, proc = first_launch
    state = json.loads((root / "search" / "search_d.json").read_text())
    assert state["finished"] and state["answer"] == 1 and state["below"] is None
    assert [p["d"] for p in state["probes"]] == [2, 1]
    for probe in state["probes"]:
        assert probe["passed"] and len(probe["scores"]) == 2
        assert probe["mean"] == pytest.approx(sum(probe["scores"]) / 2)
        for seed, score in zip((0, 1), probe["scores"]):
            results = json.loads((root / "search" / f"d{probe['d']}" / f"s{seed}" / "results.json").read_text())
            assert results["d"] == probe["d"] and results["seed"] == seed
            assert results["best_dev"]["accuracy"] == score
    table = (root / "search" / "search_d.md").read_text()
    assert "**Answer: d90 = 1 (bracket: every smaller d on the grid is untested" in table
    assert "| 2 | 772 |" in table and "| 1 | 771 |" in table
    assert (root / "search" / "search_d.png").read_bytes()[:4] == b"\x89PNG"
    assert "2 probe(s) trained, 0 reused" in proc.stdout


def test_second_launch_runs_no_probe(first_launch):
    root, args, _ = first_launch
    before = {p: p.stat().st_mtime_ns for p in (root / "search").rglob("results.json")}
    proc = _search_d(args, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 probe(s) trained, 2 reused" in proc.stdout and "training seed" not in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in (root / "search").rglob("results.json")} == before


def test_a_missing_run_is_trained_again_alone(first_launch):
    root, args, _ = first_launch
    (root / "search" / "d1" / "s1" / "results.json").unlink()    # as if that run had been interrupted
    proc = _search_d(args, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "probe d=1: training seed(s) 1 in" in proc.stdout
    assert "1 probe(s) trained, 1 reused" in proc.stdout
    assert (root / "search" / "d1" / "s1" / "results.json").is_file()


def test_jrft_table_reads_the_probes(first_launch, capsys):
    from jrft_cli.__main__ import main

    root, _, _ = first_launch
    assert main(["table", str(root / "search")]) == 0
    out = capsys.readouterr().out
    assert "| jr d=2 (772) |" in out and "| jr d=1 (771) |" in out and "(n=2)" in out


def test_relaunch_with_other_overrides_is_refused(first_launch):
    root, args, _ = first_launch
    proc = _search_d([a if a != "train.max_steps=1" else "train.max_steps=2" for a in args], root)
    assert proc.returncode == 2
    assert "holds a search with overrides=" in proc.stderr and "use another --dir" in proc.stderr


def test_relaunch_with_fewer_seeds_and_another_reference_reuses_the_runs(first_launch):
    # settings other than the overrides may change: the search replays over the runs already there
    root, args, _ = first_launch
    changed = [{"0,1": "1", "0.05": "0.06"}.get(a, a) for a in args]
    proc = _search_d(changed, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 probe(s) trained, 2 reused" in proc.stdout
    state = json.loads((root / "search" / "search_d.json").read_text())
    assert state["settings"]["seeds"] == [1] and state["settings"]["reference"] == 0.06
    assert [len(p["scores"]) for p in state["probes"]] == [1, 1]
    assert _search_d(args, root).returncode == 0       # back to the first settings for the other tests


@pytest.mark.parametrize("args, message", [
    (["task=sst2", "d=8", "--reference", "0.5"], "override 'd=8': search-d sets d itself"),
    (["task=sst2", "seed=1", "--reference", "0.5"], "override 'seed=1': search-d sets seed itself"),
    (["task=sst2,rte", "--reference", "0.5"], "override 'task=sst2,rte' is a sweep"),
    (["experiment=small_glue", "--reference", "0.5"], "select a sweep (+row, task)"),
    (["task=sst2", "method=lora", "--reference", "0.5"], "method='lora' has no d to search"),
    (["task=nope", "--reference", "0.5"], "task='nope' is not a valid choice"),
    (["task=sst2", "--reference", "nothing"], "--reference 'nothing' is neither a number nor a run dir"),
    (["task=sst2", "--reference", "0"], "the reference score 0.0 (a number) is not positive"),
    (["task=sst2", "--reference", "0.5", "--target", "2"], "--target=2.0 is not valid"),
    (["task=sst2", "--reference", "0.5", "--seeds", "0,x"], "--seeds='0,x' is not valid"),
    (["task=sst2", "--reference", "0.5", "--d-start", "64", "--d-max", "32"], "--d-start=64 is above --d-max=32"),
])
def test_bad_settings_are_one_line_errors_and_leave_nothing(args, message, tmp_path, capsys):
    from jrft_cli.__main__ import main

    assert main(["search-d", *args, "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_a_reference_run_must_match_task_and_model(first_launch, tmp_path, capsys):
    from jrft_cli.__main__ import main

    root, _, _ = first_launch
    ref = root / "search" / "d1" / "s0"
    assert main(["search-d", "task=rte", "--reference", str(ref), "--dir", str(tmp_path / "s")]) == 2
    assert "is a run of task 'sst2'; this search is on task 'rte'" in capsys.readouterr().err
