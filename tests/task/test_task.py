"""loraclf.task: outputs, predictions, thresholds and temperature per problem type, and the metrics of each type
(pure numbers, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from loraclf import task as problem
from loraclf.infer.metrics import compute_metrics
from loraclf.infer.forward import pool_windows
from loraclf.task import Decision


def test_outputs_per_type():
    z = np.array([[2.0, 0.0], [0.0, 1.0]])
    single = problem.outputs(z, Decision())
    np.testing.assert_allclose(single.sum(1), 1.0)
    np.testing.assert_allclose(single[0, 0], 1 / (1 + np.exp(-2.0)))
    hot = problem.outputs(z, Decision(temperature=2.0))
    assert hot[0, 0] < single[0, 0] and hot.argmax(1).tolist() == single.argmax(1).tolist()
    multi = problem.outputs(z, Decision(problem.MULTI))
    np.testing.assert_allclose(multi, 1 / (1 + np.exp(-z)))
    reg = problem.outputs(np.array([[0.5], [-1.0]]), Decision(problem.REGRESSION, target_mean=2.0, target_std=3.0))
    np.testing.assert_allclose(reg, [3.5, -1.0])


def test_predictions_use_thresholds():
    p = np.array([[0.7, 0.3], [0.45, 0.55]])
    assert problem.predictions(p, Decision()).tolist() == [0, 1]
    assert problem.predictions(p, Decision(thresholds=[0.25])).tolist() == [1, 1]
    m = np.array([[0.6, 0.2], [0.4, 0.9]])
    assert problem.predictions(m, Decision(problem.MULTI)).tolist() == [[1, 0], [0, 1]]
    assert problem.predictions(m, Decision(problem.MULTI, thresholds=[0.3, 0.95])).tolist() == [[1, 0], [1, 0]]


def test_tuned_threshold_maximises_f1_on_the_data():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.2
    p = np.clip(0.3 * y + rng.random(400) * 0.6, 0, 1)
    t = problem.tune_threshold(y, p)

    def f1(cut):
        pred = p >= cut
        tp = (pred & y).sum()
        return 2 * tp / max(pred.sum() + y.sum(), 1)

    best = max(f1(c) for c in np.unique(p))
    assert f1(t) == pytest.approx(best)
    assert f1(t) > f1(0.5)
    assert problem.tune_threshold(np.zeros(5, bool), np.linspace(0, 1, 5)) == 0.5  # no positives: keep 0.5


def test_temperature_lowers_nll_of_overconfident_logits_and_keeps_argmax():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    logits = rng.normal(size=(600, 3))
    logits[np.arange(600), y] += 1.0
    logits *= 4.0  # overconfident
    t = problem.fit_temperature(logits, y)
    assert t > 1.5
    id2label = {0: "a", 1: "b", 2: "c"}
    before = compute_metrics(y, problem.outputs(logits, Decision()), id2label)
    after = compute_metrics(y, problem.outputs(logits, Decision(temperature=t)), id2label)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"]


def test_pool_windows_mean_and_max():
    idx = np.array([0, 0, 1, 2, 2, 2])
    z = np.array([[1.0], [3.0], [5.0], [0.0], [6.0], [3.0]])
    labels = np.array([1, 1, 0, 1, 1, 1])
    u, mean, lab = pool_windows(idx, z, labels, "mean")
    assert u.tolist() == [0, 1, 2] and mean.ravel().tolist() == [2.0, 5.0, 3.0] and lab.tolist() == [1, 0, 1]
    _, mx, _ = pool_windows(idx, z, labels, "max")
    assert mx.ravel().tolist() == [3.0, 5.0, 6.0]


def test_regression_and_multi_label_metrics():
    m = compute_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]), {0: "y"},
                        decision=Decision(problem.REGRESSION))
    assert m["rmse"] == pytest.approx(np.sqrt(1 / 3)) and m["mae"] == pytest.approx(1 / 3)
    assert m["r2"] == pytest.approx(0.5) and m["spearman"] == pytest.approx(1.0)
    y = np.array([[1, 0], [0, 1], [1, 1]])
    p = np.array([[0.9, 0.1], [0.2, 0.4], [0.8, 0.7]])
    mm = compute_metrics(y, p, {0: "a", 1: "b"}, decision=Decision(problem.MULTI))
    assert mm["subset_accuracy"] == pytest.approx(2 / 3) and mm["hamming_loss"] == pytest.approx(1 / 6)
    assert mm["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1)) and mm["per_label"]["b"]["recall"] == 0.5


def test_macro_f1_skips_classes_a_split_never_holds_nor_predicts():
    """Four classes; the split holds only 0-2 and nothing predicts 3: macro-F1 is sklearn's, over 0-2, not a 0 for 3.
    A class the model predicts but the split lacks still counts (as sklearn counts it)."""
    from sklearn.metrics import f1_score

    names = {i: n for i, n in enumerate("abcd")}
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(4)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.025
    m = compute_metrics(labels, probs, names)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(-1), average="macro"))
    assert m["macro_f1"] > np.mean([m["per_class"][n]["f1"] for n in "abcd"])  # the old mean, with d's 0
    assert m["per_class"]["d"]["support"] == 0  # the per-class table still lists every class
    probs[5] = np.eye(4)[3] * 0.9 + 0.025  # now row 5 is predicted as d, which the split lacks
    m = compute_metrics(labels, probs, names)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(-1), average="macro"))
