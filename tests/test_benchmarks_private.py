"""benchmarks.private_step_times on a tiny random RoBERTa: every variant timed on the same batches."""
from __future__ import annotations

import torch

from jrft_cli.bench.measure import private_step_times

from private_helpers import MASK, PAD, collate, tiny_data, tiny_roberta  # noqa: F401  (fixture)


def test_private_step_times_reports_every_variant(tiny_roberta):
    out = private_step_times(tiny_roberta, tiny_data(40), collate, MASK, PAD, batch_size=8, micro_batch_size=4,
                             steps=2, methods=("jr", "lora:ghost"), d=8)
    assert set(out["ms_per_step"]) == {"jr (non-private)", "jr (DP)", "lora:ghost (DP)"}
    assert all(v > 0 for v in out["ms_per_step"].values())
    assert out["ratio_to_jr"]["jr (non-private)"] == 1.0
    assert len(out["batch_sizes"]) == 2 and all(len(v) == 2 for v in out["all_ms"].values())
