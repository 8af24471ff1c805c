"""jrft_cli.tasks.evaluation: predictions computed in length-sorted batches come back in data order and
equal those of batches in data order."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from jrft_cli.core.registry import apply_method
from jrft_cli.tasks.evaluation import NonFiniteOutputs, batches, length_order, predict, predictions
from jrft_cli.tasks.glue import make_collate
from jrft_cli.tasks.kinds import as_kind

CPU = torch.device("cpu")


class LengthEcho(nn.Module):
    """Logits (B, 2): each row's real length and its first token id, so any reordering shows; records
    the width of every batch it sees. `nan_at`: rows whose first token is this id get NaN."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.widths: list[int] = []
        self.nan_at = nan_at

    def forward(self, input_ids, attention_mask, **_):
        self.widths.append(input_ids.size(1))
        out = torch.stack([attention_mask.sum(1).float(), input_ids[:, 0].float()], dim=1)
        if self.nan_at is not None:
            out[input_ids[:, 0] == self.nan_at] = float("nan")
        return out


def _rows(lengths: list[int]) -> list[dict]:
    """Row i: first token 10 + i, then `lengths[i] - 1` tokens."""
    return [{"input_ids": [10 + i] + [7] * (n - 1), "attention_mask": [1] * n, "labels": i % 2}
            for i, n in enumerate(lengths)]


COLLATE = make_collate(type("Tok", (), {"pad_token_id": 0})(), is_regression=False)
LENGTHS = [9, 2, 7, 3, 8, 2, 5, 9, 1, 4]


def test_length_order_is_a_stable_sort_by_length():
    assert length_order(_rows(LENGTHS)) == [8, 1, 5, 3, 9, 6, 2, 4, 0, 7]


def test_predict_batches_by_length_and_returns_data_order():
    data, model = _rows(LENGTHS), LengthEcho()
    logits = predict(model, data, COLLATE, 3, CPU)
    assert logits[:, 0].tolist() == LENGTHS and logits[:, 1].tolist() == [10 + i for i in range(len(data))]
    assert model.widths == [2, 5, 9, 9]        # batches of 3 in length order: less padding than data order
    assert sum(model.widths) < sum(max(LENGTHS[i:i + 3]) for i in range(0, len(LENGTHS), 3))


def test_predictions_decode_in_data_order_and_name_the_bad_input():
    data = _rows(LENGTHS)
    # the regression kind decodes a row into its values (here two): an exact check of the order
    assert predictions(LengthEcho(), data, COLLATE, as_kind("regression"), 3, CPU) == \
        [[float(n), float(10 + i)] for i, n in enumerate(LENGTHS)]
    with pytest.raises(NonFiniteOutputs, match=r"for 1 of 10 inputs \(first: input 4\)"):
        predictions(LengthEcho(nan_at=14), data, COLLATE, as_kind("classification"), 3, CPU)
    with pytest.raises(NonFiniteOutputs, match=r"first: input 4\)"):
        predict(LengthEcho(nan_at=14), data, COLLATE, 3, CPU)


def test_sorted_batches_give_the_unsorted_logits_on_minilm(make_model, tokenizer, glue_dir, task_cfg):
    """The real MiniLM with jr on 24 SST-2 dev sentences: logits from length-sorted batches equal those
    from batches in data order (padding is masked), and so do the predicted classes."""
    from jrft_cli.tasks.glue import encode, load_split

    data = encode(load_split(task_cfg("sst2"), "dev", str(glue_dir), 24), tokenizer, mask_format=True, max_length=128)
    assert length_order(data) != list(range(len(data)))        # the order really changes
    model = make_model()
    torch.manual_seed(0)
    apply_method(model, "jr", d=64)
    model.eval()
    collate = make_collate(tokenizer, False)
    with torch.no_grad():
        reference = torch.cat([model(**{k: v for k, v in collate(items).items() if k != "labels"})
                               for items in batches(data, range(len(data)), 8)])
    logits = predict(model, data, collate, 8, CPU)
    assert torch.allclose(logits, reference, atol=1e-5)
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))
    assert predictions(model, data, collate, as_kind("classification"), 8, CPU) == reference.argmax(-1).tolist()
