"""bench.report and bench.targets: targets from rows, rendering, and writing without clobbering."""
from __future__ import annotations

import json

import pytest

from jrft_cli.bench.report import (SCHEMA, check_writable, markdown, tables, write_report, written_by_bench)
from jrft_cli.bench.targets import find_row, targets
from jrft_cli.core.errors import JrftError

JR_OPTIONS = {"d": 1024, "projection": "dense"}


def _row(method: str, ms: float, **axes) -> dict:
    options = JR_OPTIONS if method == "jr" else {}
    return {"id": {"method": method, **axes}, "label": " ".join([method, *axes.values()]), "options": options,
            "median_ms": ms, "q1_ms": ms - 1, "q3_ms": ms + 1, "examples_per_s": 32 / (ms / 1e3),
            "memory_mb": 10.0, "memory_kind": "rss_growth", "trainable_params": 1794, "path": "fast (shift grads)"}


def _report() -> dict:
    return {
        "schema": SCHEMA, "command": "jrft bench --steps 2", "created": "2026-01-01T00:00:00+0000",
        "environment": {"platform": "Linux", "processor": "x86_64", "cpu_count": 2, "torch_threads": 1,
                        "device": "cpu", "gpu": None, "load_average_before": [1.0, 1.0, 1.0],
                        "versions": {k: "1" for k in ("python", "torch", "transformers", "peft", "opacus", "jrft")}},
        "config": {"model_id": "minilm", "batch_size": 32, "seq_len": 64, "steps": 2, "warmup": 1, "d": 1024,
                   "seed": 0, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "data": None, "subject": "jr",
                   "workload": {"kind": "fixed", "batch_size": 32, "micro_batch_size": 32}},
        "notes": [],
        "train": [_row("full", 100.0), _row("jr", 60.0, projection="dense"), _row("jr", 50.0, projection="structured")],
        "eval": [_row("full", 30.0)],
        "private": [_row("jr", 70.0, projection="dense"), _row("full", 350.0), _row("naive_jr", 140.0)],
        "inference": [{"id": {"model": "base", "head": "mask"}, "label": "base", "median_ms": 10.0, "q1_ms": 9.0,
                       "q3_ms": 11.0, "vs_base": 1.0},
                      {"id": {"method": "jr", "form": "exported"}, "label": "jr (exported)", "median_ms": 10.8,
                       "q1_ms": 10.0, "q3_ms": 11.0, "vs_base": 1.08, "max_abs_logit_diff": 1e-7}],
    }


def test_targets_from_rows():
    got = {t["name"]: (round(t["value"], 3), t["met"]) for t in targets(_report())}
    assert got == {"jr step / full step": (0.6, True),
                   "private jr step / jr step": (1.167, False),
                   "opacus private full step / private jr step": (5.0, True),
                   "naive reference private step / private jr step": (2.0, True),
                   "jr exported latency / base latency": (1.08, False)}
    assert targets({}) == []


def test_find_row_matches_identity_then_options():
    rows = [_row("naive_jr", 1.0), _row("jr", 2.0, projection="structured"), _row("jr", 3.0)]
    assert find_row(rows, {"method": "jr", "projection": "dense"})["median_ms"] == 3.0   # from its options
    assert find_row(rows, {"method": "jr", "projection": "structured"})["median_ms"] == 2.0
    assert find_row(rows, {"method": "lora"}) is None


def test_tables_pair_private_rows_with_their_non_private_row():
    by_title = {title: (header, rows) for title, header, rows in tables(_report())}
    header, rows = by_title["Private (DP-SGD) step"]
    ratio = header.index("vs its non-private step")
    assert [r[ratio] for r in rows] == ["1.17", "3.50", "-"]
    header, rows = by_title["Training step"]
    assert [r[header.index("vs full")] for r in rows] == ["1.00", "0.60", "0.50"]
    assert [r[header.index("examples/s")] for r in rows] == ["320.0", "533.3", "640.0"]
    assert "Evaluation forward (no_grad)" in by_title


def test_markdown_carries_a_checksum_of_itself():
    md = markdown(_report())
    assert written_by_bench(md) and "`jrft bench --steps 2`" in md and "| jr dense |" in md
    assert not written_by_bench(md.replace("| jr dense |", "| jr dense (edited) |"))
    assert not written_by_bench("# a page written by hand\n")


def test_writes_its_own_files_and_replaces_only_those(tmp_path):
    json_path, md_path = write_report(_report(), tmp_path / "out", "bench_cpu")
    assert json.loads(json_path.read_text())["schema"] == SCHEMA and written_by_bench(md_path.read_text())
    write_report({**_report(), "command": "jrft bench --steps 3"}, tmp_path / "out", "bench_cpu")   # its own: fine
    assert "--steps 3" in md_path.read_text()

    md_path.write_text(md_path.read_text() + "\n## Reading\n\nWritten by hand.\n")
    with pytest.raises(JrftError, match="bench_cpu.md exists and was not written by jrft bench"):
        write_report(_report(), tmp_path / "out", "bench_cpu")
    assert md_path.read_text().endswith("Written by hand.\n")

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bench_cpu.json").write_text('{"rows": []}')
    with pytest.raises(JrftError, match="bench_cpu.json exists and is not a jrft bench report"):
        check_writable(tmp_path / "other", "bench_cpu")
    check_writable(tmp_path / "nowhere", "bench_cpu")          # nothing there: fine


def test_a_rendering_error_writes_nothing(tmp_path):
    broken = _report()
    del broken["config"]["workload"]
    with pytest.raises(KeyError):
        write_report(broken, tmp_path, "bench_cpu")
    assert list(tmp_path.iterdir()) == []


def _loop_row(method: str, precision: str, ordering: str, ms: list[float], n: int = 128) -> dict:
    row = _row(method, sorted(ms)[len(ms) // 2], precision=precision, ordering=ordering)
    row.update(times_ms=ms, examples=[n] * len(ms), batches="loop", attn_implementation="sdpa")
    return row


def test_run_axes_rows_speedups_and_the_issue_target():
    from jrft_cli.bench.targets import same_batches, speedup

    train = [_loop_row("jr", "fp32", "random", [1000.0, 2000.0, 1000.0]),
             _loop_row("jr", "bf16", "grouped", [400.0, 1000.0, 250.0]),
             _loop_row("full", "fp32", "random", [3000.0, 3000.0, 3000.0])]
    # per-round ratios 2.5, 2.0, 4.0: the median 2.5 (the ratio of the medians would be 2.5 too, by chance)
    assert speedup(train[1], train[0]) == pytest.approx(2.5)
    # a selector without the run axes means their defaults
    assert find_row(train, {"method": "jr"}) is train[0]
    assert find_row(train, {"method": "jr", "precision": "bf16", "ordering": "grouped"}) is train[1]
    assert find_row(train, {"method": "jr", "precision": "bf16"}) is None
    assert same_batches(train[0], train[2]) and not same_batches(train[0], train[1])
    assert not same_batches(train[0], _row("jr", 10.0))     # loop batches vs the round's batch
    report = {**_report(), "train": train, "private": [], "inference": []}
    got = {t["name"]: (round(t["value"], 3), t["met"]) for t in targets(report)}
    assert got == {"jr step / full step": (0.333, True),
                   "jr bf16 grouped / fp32 random training examples/s": (2.5, True)}
    header, rows = next((h, r) for title, h, r in tables(report) if title == "Training step")
    col = header.index("examples/s vs fp32/random")
    assert [r[col] for r in rows] == ["1.00", "2.50", "1.00"]
    assert [r[header.index("vs full")] for r in rows] == ["0.33", "-", "1.00"]   # only rows on the same batches
    assert "attention" in header
