"""docs/results/intrinsic_dimension: every published search replays from its committed results.json files
to the recorded probes and answer, and the page quotes each search's table as search-d renders it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jrft_cli.search.intrinsic import grid_values, load_result, read_probe, snap_to_grid, walk
from jrft_cli.search.report import render_table

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results" / "intrinsic_dimension.md"
DIR = ROOT / "docs" / "results" / "intrinsic_dimension"
# A quoted search: <!-- search-d PATH --> ... <!-- end search-d -->, PATH from the repo root; the quote is
# search-d's table with a level-3 heading.
BLOCK = re.compile(r"<!-- search-d (?P<path>\S+) -->\n(?P<body>.*?)<!-- end search-d -->", re.S)


def _searches() -> list[Path]:
    if not DOC.is_file():
        pytest.skip(f"{DOC.relative_to(ROOT)} is not published in this checkout")
    found = sorted(p.parent for p in DIR.glob("*/search_d.json"))
    assert found, "no published search"
    return found


def test_each_search_replays_from_its_committed_runs():
    for root in _searches():
        result = load_result(root)
        s = result.settings
        grid = grid_values(s.steps_per_octave, s.d_max)
        start = snap_to_grid(grid, s.d_start)
        passed = {}
        for recorded in result.probes:
            step = walk(grid, start, passed)
            assert step.next_d == recorded.d, (root.name, step, recorded.d)   # the search's own order
            probe = read_probe(root, recorded.d, s)
            assert probe.complete and probe.scores == recorded.scores
            passed[probe.d] = probe.mean >= s.target_score
            assert passed[probe.d] == recorded.passed
        step = walk(grid, start, passed)
        if result.finished:
            assert step.next_d is None and (step.answer, step.below) == (result.answer, result.below)
        else:
            assert step.next_d is not None         # unfinished: the next probe is still to run


def test_references_are_the_committed_runs():
    for root in _searches():
        s = load_result(root).settings
        ref = DIR / "reference" / f"{s.task}_full" / "results.json"
        run = json.loads(ref.read_text())
        assert run["status"] == "completed" and run["task"] == s.task and run["method"] == "full"
        assert run["best_dev"][s.main_metric] == s.reference


def test_the_page_quotes_every_search_as_rendered():
    searches = _searches()
    blocks = {m["path"]: m["body"] for m in BLOCK.finditer(DOC.read_text())}
    assert sorted(blocks) == sorted(str(p.relative_to(ROOT)) for p in searches)
    for root in searches:
        assert blocks[str(root.relative_to(ROOT))].strip() == render_table(load_result(root), level=3).strip()


def test_only_summaries_are_committed():
    _searches()
    files = [p for p in DIR.rglob("*") if p.is_file()]
    assert all(p.name in ("results.json", "search_d.json", "search_d.md", "search_d.png") for p in files), files
