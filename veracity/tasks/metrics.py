"""Classification metrics for k classes, in plain NumPy (what model cards report).

:func:`classification_metrics` takes class probabilities (``(n, k)``, as
:func:`veracity.tasks.spec.predict_probabilities` gives them) and true class indices, and
returns accuracy, balanced accuracy, the area under the ROC curve (two classes: of the
positive class; more: the unweighted mean of one-vs-rest AUCs, as scikit-learn's
``roc_auc_score(..., multi_class="ovr", average="macro")``) and, per class, precision,
recall (sensitivity), specificity, F1, the one-vs-rest AUC and the support.

AUC is the Mann-Whitney statistic: the probability that a random member of the class
scores above a random non-member, ties counting one half.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from veracity.errors import InputError

__all__ = ["auc", "classification_metrics"]


def auc(scores: npt.NDArray[np.floating], positive: npt.NDArray[np.bool_]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positive`` (None with a single class)."""
    s = np.asarray(scores, dtype=np.float64)
    is_pos = np.asarray(positive, dtype=bool)
    n_pos = int(is_pos.sum())
    n_neg = int(is_pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_scores = s[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    rank_sum = float(ranks[is_pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def classification_metrics(
    probabilities: npt.NDArray[np.floating],
    labels: npt.NDArray[np.integer],
    classes: Sequence[str],
) -> dict[str, Any]:
    """Accuracy, AUC and per-class metrics (see the module docstring).

    Parameters
    ----------
    probabilities
        ``(n, k)`` class probabilities.
    labels
        ``(n,)`` true class indices in ``0..k-1``.
    classes
        The ``k`` class names, in index order (they key ``per_class``).

    Raises
    ------
    InputError
        If the shapes do not agree or a label is outside ``0..k-1``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    k = len(classes)
    if p.ndim != 2 or p.shape[1] != k or y.shape != (p.shape[0],):
        raise InputError(
            f"expected probabilities (n, {k}) and labels (n,), got {p.shape}, {y.shape}"
        )
    if y.size == 0:
        raise InputError("no examples to evaluate")
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise InputError(f"labels must be class indices 0..{k - 1}")
    predicted = np.argmax(p, axis=1)
    per_class: dict[str, dict[str, Any]] = {}
    recalls: list[float] = []
    aucs: list[float] = []
    for index, name in enumerate(classes):
        actual = y == index
        chosen = predicted == index
        tp = int(np.sum(actual & chosen))
        fp = int(np.sum(~actual & chosen))
        fn = int(np.sum(actual & ~chosen))
        tn = int(np.sum(~actual & ~chosen))
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else None
        )
        class_auc = auc(p[:, index], actual)
        if recall is not None:
            recalls.append(recall)
        if class_auc is not None:
            aucs.append(class_auc)
        per_class[str(name)] = {
            "support": int(actual.sum()),
            "precision": precision,
            "recall": recall,
            "specificity": _ratio(tn, tn + fp),
            "f1": f1,
            "auc": class_auc,
        }
    if k == 2:
        overall_auc = per_class[str(classes[1])]["auc"]
    else:
        overall_auc = float(np.mean(aucs)) if len(aucs) == k else None
    return {
        "examples": int(y.size),
        "accuracy": float(np.mean(predicted == y)),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "auc": overall_auc,
        "per_class": per_class,
    }
