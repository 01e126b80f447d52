from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from veracity.errors import InputError
from veracity.tasks.metrics import auc, classification_metrics


def _scores(k: int, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k), n)
    p[np.arange(n), y] += 0.4
    return p / p.sum(1, keepdims=True), y


@pytest.mark.parametrize("k", [2, 3, 5])
def test_metrics_agree_with_scikit_learn(k: int) -> None:
    p, y = _scores(k)
    names = [f"c{i}" for i in range(k)]
    metrics = classification_metrics(p, y, names)
    predicted = p.argmax(1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == y))
    expected_auc = roc_auc_score(y, p[:, 1]) if k == 2 else roc_auc_score(y, p, multi_class="ovr")
    assert metrics["auc"] == pytest.approx(expected_auc)
    precision = precision_score(y, predicted, average=None)
    recall = recall_score(y, predicted, average=None)
    for i, name in enumerate(names):
        assert metrics["per_class"][name]["precision"] == pytest.approx(precision[i])
        assert metrics["per_class"][name]["recall"] == pytest.approx(recall[i])
        assert metrics["per_class"][name]["support"] == int(np.sum(y == i))
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean(recall))


def test_auc_counts_ties_as_one_half() -> None:
    assert auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert auc(np.array([0.1, 0.9]), np.array([True, True])) is None


def test_an_absent_class_has_no_recall_or_auc() -> None:
    p, y = _scores(3)
    y[y == 2] = 1
    metrics = classification_metrics(p, y, ["a", "b", "c"])
    assert metrics["per_class"]["c"]["recall"] is None
    assert metrics["per_class"]["c"]["auc"] is None
    assert metrics["auc"] is None


def test_labels_outside_the_classes_are_refused() -> None:
    p, y = _scores(3)
    with pytest.raises(InputError, match=r"0\.\.1"):
        classification_metrics(p[:, :2], np.minimum(y, 1) + (y == 2) * 5, ["a", "b"])
