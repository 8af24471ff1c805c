"""Task metrics (GLUE's, plus macro-F1 for custom tasks), computed with scikit-learn and scipy.

Classification metrics take argmax class ids; the correlations (STS-B) take float scores.
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
