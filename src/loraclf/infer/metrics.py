"""Metrics from outputs, per problem type: accuracy, F1, calibration error and reliability (single-label), micro/
macro F1, subset accuracy, Hamming loss and mAP (multi-label), RMSE, MAE and correlations (regression)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import task as problem
from ..task import Decision

SINGLE_DECISION = Decision()


def compute_metrics(labels: np.ndarray, out: np.ndarray, id2label: dict[int, str], loss: Optional[float] = None,
                    decision: Decision = SINGLE_DECISION) -> dict:
    """The problem type's metrics (see problem.SCALARS) from labels and outputs (problem.outputs)."""
    if decision.problem_type == problem.MULTI:
        return multi_label_metrics(labels, out, id2label, decision)
    if decision.problem_type == problem.REGRESSION:
        return regression_metrics(labels, out)
    return single_label_metrics(labels, out, id2label, loss, decision)


def calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = problem.ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| per equal-width confidence bin, weighted by its rows."""
    if len(labels) == 0:
        return 0.0
    conf = probs.max(-1)
    correct = probs.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.sum() * abs(correct[m].mean() - conf[m].mean())
    return float(total / len(labels))


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = problem.ECE_BINS) -> list[dict]:
    """Per confidence bin: rows, mean confidence, accuracy (the reliability diagram's bars)."""
    conf = probs.max(-1)
    correct = probs.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(conf[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(correct[which == b].mean()) if (which == b).any() else None} for b in range(bins)]


def _macro(f: np.ndarray, support: np.ndarray, preds: np.ndarray, k: int) -> float:
    """Macro-F1 over the classes a split has or the model predicts (sklearn's own set), so a class that a small
    split never holds and the model never guesses does not count as a 0."""
    seen = (support > 0) | (np.bincount(preds, minlength=k)[:k] > 0)
    return float(np.mean(f[seen])) if seen.any() else 0.0


def single_label_metrics(labels, probs, id2label: dict[int, str], loss: Optional[float] = None,
                         decision: Decision = SINGLE_DECISION) -> dict:
    """Accuracy, macro-F1, loss (NLL), ECE, per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    k = len(id2label)
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs)
    preds = problem.predictions(probs, decision) if len(probs) else np.zeros(0, dtype=np.int64)
    ids = list(range(k))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=ids, zero_division=0)
    nll = None
    if len(labels):
        nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))
    out = {
        "accuracy": float((preds == labels).mean()) if len(labels) else 0.0,
        "macro_f1": _macro(f, s, preds, k),
        "n": int(len(labels)),
        "per_class": {
            id2label[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i in ids
        },
        "confusion_matrix": confusion_matrix(labels, preds, labels=ids).tolist(),
        "labels": [id2label[i] for i in ids],
        "ece": calibration_error(labels, probs) if len(labels) else None,
        "nll": nll,
    }
    out["loss"] = float(loss) if loss is not None else nll
    return out


def _average_precision(y: np.ndarray, p: np.ndarray) -> Optional[float]:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, p)) if 0 < y.sum() < len(y) else None


def multi_label_metrics(labels, probs, id2label: dict[int, str], decision: Decision) -> dict:
    """Micro- and macro-F1, subset accuracy, Hamming loss, mean average precision, per-label P/R/F1, BCE loss."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    y = np.asarray(labels).astype(np.int64).reshape(len(labels), -1)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(y), -1)
    pred = problem.predictions(probs, decision)
    k = len(id2label)
    p, r, f, s = precision_recall_fscore_support(y, pred, zero_division=0) if len(y) else ([0] * k,) * 4
    aps = [_average_precision(y[:, j], probs[:, j]) for j in range(k)] if len(y) else []
    aps = [a for a in aps if a is not None]
    q = np.clip(probs, 1e-12, 1 - 1e-12)
    thresholds = decision.thresholds or [0.5] * k
    return {
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)) if len(y) else 0.0,
        "macro_f1": float(np.mean(f)) if k and len(y) else 0.0,
        "subset_accuracy": float((pred == y).all(1).mean()) if len(y) else 0.0,
        "hamming_loss": float((pred != y).mean()) if len(y) else 0.0,
        "mean_average_precision": float(np.mean(aps)) if aps else None,
        "loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))) if len(y) else None,
        "n": int(len(y)),
        "per_label": {
            id2label[j]: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(s[j]),
                          "threshold": float(thresholds[j])} for j in range(k)
        },
        "labels": [id2label[j] for j in range(k)],
    }


def regression_metrics(labels, values) -> dict:
    """RMSE, MAE, Pearson, Spearman, R² and the MSE as loss, in the targets' own units."""
    from scipy.stats import pearsonr, spearmanr

    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    err = v - y
    n = len(y)
    varies = n > 1 and np.std(y) > 0 and np.std(v) > 0
    ss_tot = float(((y - y.mean()) ** 2).sum()) if n else 0.0
    return {
        "rmse": float(np.sqrt(np.mean(err ** 2))) if n else None,
        "mae": float(np.mean(np.abs(err))) if n else None,
        "pearson": float(pearsonr(y, v)[0]) if varies else None,
        "spearman": float(spearmanr(y, v)[0]) if varies else None,
        "r2": float(1 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else None,
        "loss": float(np.mean(err ** 2)) if n else None,
        "n": int(n),
    }


def scalars(m: dict, problem_type: str) -> dict:
    """The type's scalar metrics of a metrics dict, for history.jsonl, log lines and trackers."""
    return {k: m.get(k) for k in problem.SCALARS[problem_type]}
