"""bench.workload: the synthetic batch and the per-round logical batches rows share."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from jrft_cli.bench.workload import Workload, synthetic_batch
from jrft_cli.tasks.glue import make_collate


def _data(n: int) -> list[dict]:
    return [{"input_ids": [0] + [7] * (i % 9) + [4], "attention_mask": [1] * (i % 9 + 2), "labels": i % 2}
            for i in range(n)]


COLLATE = make_collate(SimpleNamespace(pad_token_id=1), is_regression=False)


def test_synthetic_batch_format(tokenizer):
    items = synthetic_batch(tokenizer, 3, 10)
    assert len(items) == 3
    for it in items:
        assert len(it["input_ids"]) == 10 and it["input_ids"][0] == tokenizer.cls_token_id
        assert it["input_ids"][-2:] == [tokenizer.mask_token_id, tokenizer.sep_token_id] and it["labels"] in (0, 1)
    assert synthetic_batch(tokenizer, 3, 10) == items                     # seeded
    with pytest.raises(ValueError, match="seq_len=3"):
        synthetic_batch(tokenizer, 1, 3)


def test_fixed_batch_is_the_whole_data_every_round():
    data = _data(10)
    w = Workload(data, COLLATE, batch_size=99, micro_batch_size=4, poisson=False)
    assert w.sample_rate == 1.0 and w.batch_size == 10
    for r in (0, 1, 5):
        w.draw(r)
        assert sorted(w.indices.tolist()) == list(range(10))
        assert [len(m) for m in w.micro] == [4, 4, 2] and sum(w.micro, []) == w.items
    assert w.describe()["kind"] == "fixed"


def test_poisson_rounds_are_seeded_sorted_and_split():
    data = _data(200)
    w = Workload(data, COLLATE, batch_size=20, micro_batch_size=8, poisson=True, seed=3)
    assert w.sample_rate == pytest.approx(0.1)
    w.draw(1)
    first = w.indices.tolist()
    lengths = [len(data[i]["input_ids"]) for i in first]
    assert lengths == sorted(lengths) and 0 < len(first) < 200
    assert all(len(m) <= 8 for m in w.micro) and sum(w.micro, []) == [data[i] for i in first]
    w.draw(2)
    assert w.indices.tolist() != first
    w.draw(1)
    assert w.indices.tolist() == first                                     # same round, same batch
    other = Workload(data, COLLATE, batch_size=20, micro_batch_size=8, poisson=True, seed=4)
    other.draw(1)
    assert other.indices.tolist() != first
