"""docs/results/: the published tables are exactly what `jrft table` renders from the committed run
summaries (results.json files only), and the plots they cite are there."""
from __future__ import annotations

import json
import re

import pytest

from conftest import REPO, run_jrft

DOC = REPO / "docs" / "results" / "small_glue.md"
RUNS = REPO / "docs" / "results" / "small_glue" / "runs"
# A quoted table: <!-- jrft table ARGS --> ... <!-- end jrft table -->, ARGS as typed at the repo root.
BLOCK = re.compile(r"<!-- jrft table (?P<args>[^>]*?) -->\n(?P<body>.*?)<!-- end jrft table -->", re.S)


def _blocks() -> list[re.Match]:
    if not DOC.is_file():
        pytest.skip(f"{DOC.relative_to(REPO)} is not published in this checkout")
    return list(BLOCK.finditer(DOC.read_text()))


def test_published_tables_equal_what_jrft_table_renders_from_the_committed_runs():
    blocks = _blocks()
    assert blocks, f"{DOC.name} quotes no table between <!-- jrft table ... --> markers"
    for block in blocks:
        args = block["args"].split()
        proc = run_jrft("table", *args, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "skipped" not in proc.stderr, proc.stderr          # no broken or duplicate summaries
        assert block["body"].strip() == proc.stdout.strip(), f"jrft table {' '.join(args)} renders differently"


def test_published_runs_are_completed_summaries_without_checkpoints():
    _blocks()
    files = sorted(p for p in RUNS.rglob("*") if p.is_file())
    assert files and all(p.name == "results.json" for p in files), [p.name for p in files if p.name != "results.json"]
    runs = [json.loads(p.read_text()) for p in files]
    assert all(r["status"] == "completed" for r in runs)
    # the jr rows carry at least two seeds on every task (issue: >= 2 seeds for the jr rows)
    seeds: dict[tuple, set] = {}
    for r in runs:
        if r["method"] in ("jr", "jr_warp") and r["privacy"] is None:
            seeds.setdefault((r["method_label"], r["task"]), set()).add(r["seed"])
    assert seeds and all(len(s) >= 2 for s in seeds.values()), seeds


def test_published_plots_exist():
    text = DOC.read_text() if DOC.is_file() else pytest.skip("not published")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert images, "the page shows no plot"
    for rel in images:
        assert (DOC.parent / rel).is_file(), rel
