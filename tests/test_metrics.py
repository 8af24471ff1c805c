"""GLUE metrics against values computed by hand from the definitions."""
import math
import warnings

import numpy as np
import pytest

from jrft_cli.tasks.metrics import METRICS, TASK_METRICS, compute_metrics

# 10 binary examples: TP=3, FN=1, FP=2, TN=4
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PREDS = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def test_classification_metrics_match_the_confusion_matrix():
    tp, fn, fp, tn = 3, 1, 2, 4
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    out = compute_metrics(["accuracy", "f1", "matthews"], np.array(PREDS), np.array(LABELS))
    assert list(out) == ["accuracy", "f1", "matthews"]
    assert out["accuracy"] == pytest.approx((tp + tn) / 10) == 0.7
    assert out["f1"] == pytest.approx(2 * precision * recall / (precision + recall)) == 2 / 3
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert out["matthews"] == pytest.approx(mcc) == 10 / math.sqrt(600)
    assert all(type(v) is float for v in out.values())


def test_correlations_match_hand_values():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [2.0, 5.0, 4.0, 9.0]
    # Pearson: deviations dx=(-1.5,-.5,.5,1.5), dy=(-3,0,-1,4): cross sum 10, Sxx 5, Syy 26
    # Spearman: ranks (1,2,3,4) vs (1,3,2,4): sum d^2 = 2 -> 1 - 6*2/(4*15) = 0.8
    out = compute_metrics(["pearson", "spearman"], x, y)
    assert out["pearson"] == pytest.approx(10 / math.sqrt(5 * 26))
    assert out["spearman"] == pytest.approx(0.8)
    assert all(type(v) is float for v in out.values())


def test_degenerate_inputs_give_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        out = compute_metrics(["matthews", "f1", "accuracy"], [0] * 6, [0, 1, 0, 1, 1, 0])
        assert out == {"matthews": 0.0, "f1": 0.0, "accuracy": 0.5}
        const = compute_metrics(["pearson", "spearman"], [0.3] * 5, [1, 2, 3, 4, 5])
        assert const == {"pearson": 0.0, "spearman": 0.0}
        assert compute_metrics(["pearson"], [1.0], [2.0]) == {"pearson": 0.0}


def test_unknown_metric_names_the_bad_one_and_the_choices():
    with pytest.raises(ValueError, match=r"'auc'.*accuracy, f1, f1_macro, matthews, pearson, spearman"):
        compute_metrics(["accuracy", "auc"], [1], [1])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        compute_metrics(["accuracy"], [1, 0], [1])
    with pytest.raises(ValueError, match="argmax"):
        compute_metrics(["accuracy"], [[0.1, 0.9], [0.8, 0.2]], [1, 0])
    with pytest.raises(ValueError, match="zero examples"):
        compute_metrics(["accuracy"], [], [])


def test_every_glue_task_uses_known_metrics():
    assert TASK_METRICS["cola"] == ("matthews",)
    assert TASK_METRICS["stsb"] == ("pearson", "spearman")
    assert set(TASK_METRICS["mrpc"]) == set(TASK_METRICS["qqp"]) == {"f1", "accuracy"}
    assert all(set(m) <= set(METRICS) for m in TASK_METRICS.values())


def test_entity_metrics_by_hand():
    from jrft_cli.tasks.metrics import entity_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-MISC", "O"]]
    # gold entities: PER, LOC, ORG, MISC(2 words) = 4; predicted: PER (right), ORG in s0 (wrong type),
    # ORG in s1 (right), MISC with one word (wrong span) = 4; correct 2 -> P = R = F1 = 0.5; words 6/8 right
    out = entity_metrics(["f1", "precision", "recall", "accuracy"], pred, gold)
    assert out == pytest.approx({"f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.75})
    assert entity_metrics(["f1"], [["O", "O"]], [["B-PER", "O"]]) == {"f1": 0.0}    # nothing predicted: 0, no warning
    with pytest.raises(ValueError, match="sentence 0: 1 predicted tags for 2 words"):
        entity_metrics(["f1"], [["O"]], [["O", "O"]])
    with pytest.raises(ValueError, match="unknown tagging metric 'matthews'"):
        entity_metrics(["matthews"], pred, gold)
