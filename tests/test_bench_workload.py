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


def test_ordered_windows_are_the_loops_batches_at_width_quantiles():
    from jrft_cli.bench.workload import ordered_window, padded_share
    from jrft_cli.training.loop import epoch_batches

    data = _data(200)
    lengths = [len(it["input_ids"]) for it in data]
    for ordering, group in (("random", False), ("grouped", True)):
        epoch = epoch_batches(lengths, 8, 3, 2, group_by_length=group)
        window = ordered_window(lengths, 8, ordering, seed=3, epoch=2, window=4)
        assert len(window) == 4 and all(b in epoch and len(b) == 8 for b in window)     # whole loop batches
        widths = sorted(max(lengths[i] for i in b) for b in epoch)
        # batch k sits at quantile (k + 0.5) / 4 of the epoch's widths
        assert [max(lengths[i] for i in b) for b in window] == [widths[int((k + 0.5) * 25 / 4)] for k in range(4)]
    assert padded_share(lengths, 8, "grouped", 3) < padded_share(lengths, 8, "random", 3)
    w = Workload(data, COLLATE, batch_size=8, micro_batch_size=8, poisson=True, seed=3, orderings=("random", "grouped"),
                 window=4)
    w.draw(2)
    assert list(w.windows) == ["random", "grouped"]
    assert w.windows["grouped"] == [[data[i] for i in b] for b in ordered_window(lengths, 8, "grouped", 3, 2, 4)]
    assert w.describe()["orderings"]["batches_per_round"] == 4
    with pytest.raises(ValueError, match="ordering='sorted' is not valid"):
        ordered_window(lengths, 8, "sorted", 3, 0, 4)
