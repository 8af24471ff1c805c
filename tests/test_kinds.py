"""tasks.kinds: the one place that knows how classification, regression and token tasks differ."""
from __future__ import annotations

import pytest
import torch

from jrft_cli.core.errors import JrftError
from jrft_cli.tasks.conll import IGNORE
from jrft_cli.tasks.evaluation import TaskInfo, loss_fn
from jrft_cli.tasks.kinds import KINDS, as_kind, kind_of

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_kind_of_reads_kind_or_is_regression(task_cfg):
    assert kind_of(task_cfg("sst2")).name == "classification"
    assert kind_of(task_cfg("stsb")).name == "regression"
    assert kind_of(task_cfg("conll2003")).name == "tokens"
    assert kind_of({"is_regression": True}).name == "regression"          # an older run's task config
    assert kind_of({}).name == "classification"
    with pytest.raises(JrftError, match=r"task kind 'spans' is not valid; choose one of classification, regression, tokens"):
        kind_of({"kind": "spans"})
    assert as_kind(True) is KINDS["regression"] and TaskInfo(False, ["accuracy"], "accuracy").kind.name == "classification"


def test_heads_and_outputs(task_cfg):
    tokens, cls = KINDS["tokens"], KINDS["classification"]
    assert [tokens.head(h) for h in ("mask", "first", "cls")] == ["tokens"] * 3   # every method: a per-token head
    assert [cls.head(h) for h in ("mask", "first", "cls")] == ["mask", "first", "cls"]
    assert tokens.num_labels(task_cfg("conll2003")) == 9 and KINDS["regression"].num_labels(task_cfg("stsb")) == 1
    assert KINDS["classification"].is_pair(task_cfg("rte")) and not tokens.is_pair(task_cfg("conll2003"))
    assert tokens.parse_line("John  Smith\tvisited", task_cfg("conll2003"), 1) == ("John", "Smith", "visited")


def test_token_loss_is_the_mean_over_each_sentences_words_then_over_sentences():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3)
    labels = torch.tensor([[IGNORE, 1, IGNORE, 2, IGNORE], [IGNORE, 0, 0, 1, IGNORE]])
    ce = lambda i, t: float(torch.nn.functional.cross_entropy(logits[i, t][None], labels[i, t][None]))  # noqa: E731
    first = (ce(0, 1) + ce(0, 3)) / 2
    second = (ce(1, 1) + ce(1, 2) + ce(1, 3)) / 3
    per = loss_fn(logits, labels, "tokens", reduction="none")
    assert per.tolist() == pytest.approx([first, second], rel=1e-6)
    assert float(loss_fn(logits, labels, "tokens")) == pytest.approx((first + second) / 2, rel=1e-6)
    assert float(loss_fn(logits, labels, "tokens", reduction="sum")) == pytest.approx(first + second, rel=1e-6)
    # a sentence whose every position is ignored contributes 0, not nan
    assert float(loss_fn(logits, torch.full((2, 5), IGNORE), "tokens", reduction="sum")) == 0.0
    with pytest.raises(JrftError, match=r"a token task needs per-token logits \(B, T, C\)"):
        loss_fn(logits[:, 0], labels[:, 0], "tokens")


def test_sequence_losses_are_unchanged():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    want = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.equal(loss_fn(logits, labels, False), want) and torch.equal(loss_fn(logits, labels, "classification"), want)
    assert float(loss_fn(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 5.0]), is_regression=True)) == 2.5


def test_token_decode_gold_and_entity_metrics():
    kind = KINDS["tokens"]
    # sentence 0: positions 1..3 are words (John Smith visited), 4 is a sub-token; sentence 1: one word
    labels = torch.tensor([[IGNORE, 1, 2, 0, IGNORE], [IGNORE, 3, IGNORE, IGNORE, IGNORE]])
    logits = torch.zeros(2, 5, 5)
    for i, t, c in ((0, 1, 1), (0, 2, 2), (0, 3, 0), (0, 4, 3), (1, 1, 0)):
        logits[i, t, c] = 5.0
    preds = kind.decode(logits, labels)
    assert preds == [[1, 2, 0], [0]]        # the sub-token's prediction (B-LOC) is not read
    golds = [kind.gold({"labels": row.tolist()}) for row in labels]
    assert golds == [[1, 2, 0], [3]]
    m = kind.metrics(["f1", "precision", "recall", "accuracy"], preds, golds, TAGS)
    # entities: gold {PER(0:2) s0, LOC s1}, predicted {PER(0:2) s0}: P 1/1, R 1/2, F1 2/3; words 3/4 right
    assert m == pytest.approx({"f1": 2 / 3, "precision": 1.0, "recall": 0.5, "accuracy": 0.75})
