"""bench.multitask: the mixed-batch rows (jr single, jr mixed, PEFT LoRA mixed) and the serving rows, tiny."""
from __future__ import annotations

import pytest
import torch

from conftest import MINILM, subprocess_env

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sst2_task(task_cfg):
    return task_cfg("sst2")


def test_mixed_batch_rows(tokenizer, sst2_task):
    from jrft_cli.bench.multitask import mixed_batch_rows, targets

    rows = mixed_batch_rows(MINILM, tokenizer, sst2_task, task_counts=[1, 3], batch_size=4, seq_len=8, d=16,
                            lora_r=2, rounds=1, warmup=0)
    assert [r["model"] for r in rows] == ["jr (1 task)", "jr mixed (1)", "jr mixed (3)", "lora mixed (1)",
                                          "lora mixed (3)"]
    assert rows[0]["vs_jr_single"] == 1.0 and all(r["median_ms"] > 0 for r in rows)
    # the one-task mixed batch computes what the single-task model does
    assert rows[1]["max_abs_logit_diff"] < 1e-5
    goals = targets({"multitask": rows})
    assert [g["name"] for g in goals] == ["jr mixed batch of 1 task(s) / single-task jr latency",
                                          "jr mixed batch of 3 task(s) / single-task jr latency"]


def test_serving_rows(tokenizer, sst2_task):
    from jrft_cli.bench.multitask import serving_rows

    rows = serving_rows(MINILM, tokenizer, sst2_task, task_counts=[2], d=16, seq_len=8, concurrency=2, requests=6,
                        max_batch_size=8, max_wait_ms=5, threads=1, env=subprocess_env())
    assert len(rows) == 1
    row = rows[0]
    assert row["tasks"] == 2 and row["requests"] == 6 and row["requests_per_s"] > 0
    assert row["p50_ms"] <= row["p99_ms"] and row["batches"] >= 1
