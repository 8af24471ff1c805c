"""bench.projection: the projection table and z -> shifts vs a training step, at tiny shapes."""
from __future__ import annotations

from jrft_cli.bench.projection import projection_table, shift_vs_step
from jrft_cli.core.projection import PROJECTION_KINDS, make_projection


def test_projection_table_rows_and_sizes():
    rows = projection_table(layers=2, hidden=64, dims=(64, 100), repeats=2, max_dense_bytes=40_000)
    assert [(r["kind"], r["d"]) for r in rows] == [(k, d) for d in (64, 100) for k in PROJECTION_KINDS]
    by = {(r["kind"], r["d"]): r for r in rows}
    assert by[("dense", 64)]["bytes"] == 2 * 64 * 64 * 4 and by[("dense", 64)]["skipped"] is None
    assert by[("dense", 64)]["shift_ms"] > 0 and by[("dense", 64)]["build_s"] >= 0
    # 2 x 100 x 64 x 4 = 51,200 bytes > 40,000: not allocated, said so
    skipped = by[("dense", 100)]
    assert skipped["bytes"] == 51_200 and skipped["shift_ms"] is None and "exceed" in skipped["skipped"]
    assert by[("structured", 100)]["bytes"] == make_projection("structured", 100, 2, 64, seed=0).nbytes()


def test_shift_vs_step_fields():
    rows = shift_vs_step(layers=2, hidden=64, d=32, batch_size=2, seq_len=8, steps=2, warmup=1, shift_repeats=2,
                         vocab_size=100)
    assert [r["kind"] for r in rows] == ["structured", "dense"]
    for r in rows:
        assert (r["layers"], r["hidden"], r["d"], r["rounds"]) == (2, 64, 32, 2)
        assert r["shift_ms"] > 0 and r["step_ms"] > 0 and 0 < r["fraction"]
