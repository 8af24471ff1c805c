"""Task metrics (GLUE's, plus macro-F1 for custom tasks), computed with scikit-learn and scipy;
entity-level metrics of tagging tasks with seqeval.

Classification metrics take argmax class ids; the correlations (STS-B) take float scores; the entity
metrics (`entity_metrics`) take one tag sequence per sentence.
Degenerate inputs (constant predictions, a single example) give 0.0 instead of nan, silently,
so a collapsed early checkpoint logs a number rather than a warning storm.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

METRICS = ("accuracy", "f1", "f1_macro", "matthews", "pearson", "spearman")

# GLUE's reported metrics per task (MNLI's matched/mismatched are two eval splits, both accuracy).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}

_REGRESSION = {"pearson", "spearman"}


def _as_1d(values, what: str, dtype) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        hint = " (take the argmax of the logits first)" if dtype is not float else ""
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}{hint}")
    return arr


def _correlation(fn, predictions: np.ndarray, labels: np.ndarray) -> float:
    # Undefined for fewer than 2 points or a constant side: report 0.0 (no correlation) instead
    # of scipy's nan + ConstantInputWarning.
    if len(predictions) < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    value = float(fn(predictions, labels).statistic)
    return 0.0 if np.isnan(value) else value


def compute_metrics(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """Compute the named GLUE metrics; returns {name: python float} in the order given.

    `predictions` are class ids for accuracy/f1/f1_macro/matthews (f1 is binary, positive class 1, as in
    GLUE's MRPC/QQP; f1_macro averages every class's F1 over the classes in labels or predictions) and
    float scores for pearson/spearman. Unknown names raise ValueError.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from: {', '.join(METRICS)}")
    if len(predictions) != len(labels):
        raise ValueError(f"predictions ({len(predictions)}) and labels ({len(labels)}) differ in length")
    if len(labels) == 0:
        raise ValueError("cannot compute metrics on zero examples")

    out: dict[str, float] = {}
    for name in names:
        if name in _REGRESSION:
            p = _as_1d(predictions, "predictions", float)
            y = _as_1d(labels, "labels", float)
            fn = stats.pearsonr if name == "pearson" else stats.spearmanr
            out[name] = _correlation(fn, p, y)
            continue
        p = _as_1d(predictions, "predictions", None)
        y = _as_1d(labels, "labels", None)
        if name == "accuracy":
            out[name] = float(skm.accuracy_score(y, p))
        elif name == "f1":
            out[name] = float(skm.f1_score(y, p, zero_division=0.0))
        elif name == "f1_macro":
            out[name] = float(skm.f1_score(y, p, average="macro", zero_division=0.0))
        else:  # matthews: sklearn already returns 0.0 when a row or column of the table is empty
            out[name] = float(skm.matthews_corrcoef(y, p))
    return out


ENTITY_METRICS = ("f1", "precision", "recall", "accuracy")


def entity_metrics(names: Sequence[str], predictions: Sequence[Sequence[str]],
                   labels: Sequence[Sequence[str]]) -> dict[str, float]:
    """Tagging metrics over sentences of tags (IOB strings such as `B-PER`), in the order given.

    `f1`, `precision`, `recall`: entity-level micro averages by seqeval in its default (conlleval-
    compatible) mode, as the paper's NER evaluation computes them: an entity counts only when its type
    and its whole span are right. `accuracy`: the fraction of words whose tag is right.
    """
    from seqeval import metrics as sq

    unknown = [n for n in names if n not in ENTITY_METRICS]
    if unknown:
        raise ValueError(f"unknown tagging metric {unknown[0]!r}; choose from: {', '.join(ENTITY_METRICS)}")
    if len(predictions) != len(labels):
        raise ValueError(f"predictions ({len(predictions)}) and labels ({len(labels)}) differ in length")
    for i, (p, y) in enumerate(zip(predictions, labels)):
        if len(p) != len(y):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(y)} words")
    if sum(len(y) for y in labels) == 0:
        raise ValueError("cannot compute metrics on zero words")
    pred, gold = [list(p) for p in predictions], [list(y) for y in labels]
    fns = {"f1": sq.f1_score, "precision": sq.precision_score, "recall": sq.recall_score}
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(sq.accuracy_score(gold, pred))
        else:   # zero_division=0: no predicted (or no gold) entity scores 0, without a warning
            out[name] = float(fns[name](gold, pred, zero_division=0))
    return out
