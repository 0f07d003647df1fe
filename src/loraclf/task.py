"""The problem type (`model.problem_type`, as in transformers configs) and everything that depends on it.

    single_label_classification   one class per text: softmax, cross-entropy (or focal), argmax (or a tuned
                                  binary threshold)
    multi_label_classification    a set of labels per text: sigmoid per label, BCE-with-logits (or focal),
                                  one decision threshold per label tuned on validation
    regression                    a number per text: one output, MSE (or Huber), targets optionally standardised

A run's `decision.json` (`Decision`) holds what turns logits into outputs after training: the temperature, the
thresholds and the target scaling; loraclf.runs reads and checks it, predict, evaluate, serve and export apply it
through `outputs` and `predictions` here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np


SINGLE = "single_label_classification"
MULTI = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = (SINGLE, MULTI, REGRESSION)

# the scalar metrics each type reports (history.jsonl, trackers, eval.metric_for_best_model), main metric first
SCALARS = {
    SINGLE: ("accuracy", "macro_f1", "loss", "ece", "nll"),
    MULTI: ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "mean_average_precision", "loss"),
    REGRESSION: ("rmse", "mae", "pearson", "spearman", "r2", "loss"),
}
LOWER_IS_BETTER = {"loss", "rmse", "mae", "hamming_loss", "ece", "nll"}
# the losses each type accepts (train.loss); the first is its default
LOSSES = {SINGLE: ("cross_entropy", "focal"), MULTI: ("bce", "focal"), REGRESSION: ("mse", "huber")}
ECE_BINS = 15


def main_metric(problem_type: str) -> str:
    return SCALARS[problem_type][0]


def best_metric(problem_type: str, configured: Optional[str]) -> str:
    """eval.metric_for_best_model as configured, or the type's main metric."""
    return configured or main_metric(problem_type)


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def loss_name(problem_type: str, configured: Optional[str]) -> str:
    return configured or LOSSES[problem_type][0]


def num_labels(problem_type: str, id2label: dict) -> int:
    return 1 if problem_type == REGRESSION else len(id2label)


# ------------------------------------------------------------------------------------------ the decision rule


@dataclass
class Decision:
    """What turns a run's logits into outputs; stored as decision.json in the run folder."""

    problem_type: str = SINGLE
    temperature: float = 1.0  # eval.calibration=temperature: logits are divided by it
    thresholds: Optional[list[float]] = None  # multi-label: one per label; binary: on the second class's probability
    threshold_metric: Optional[str] = None  # what the thresholds were tuned for (f1, fbeta)
    target_mean: float = 0.0  # regression: output = raw output x target_std + target_mean
    target_std: float = 1.0
    notes: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "Decision":
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in obj.items() if k in keys})


def outputs(logits: np.ndarray, d: Decision) -> np.ndarray:
    """Probabilities per class (single-label: softmax; multi-label: sigmoid per label), or values (regression)."""
    z = np.asarray(logits, dtype=np.float64)
    if d.problem_type == REGRESSION:
        return (z.reshape(len(z), -1)[:, 0] * d.target_std + d.target_mean).astype(np.float64)
    z = z / d.temperature
    if d.problem_type == MULTI:
        return 1.0 / (1.0 + np.exp(-z))
    if z.size == 0:
        return z.astype(np.float32)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def predictions(out: np.ndarray, d: Decision) -> np.ndarray:
    """Class ids (single-label), a 0/1 matrix (multi-label), or the values themselves (regression)."""
    if d.problem_type == REGRESSION:
        return out
    if d.problem_type == MULTI:
        t = np.asarray(d.thresholds if d.thresholds is not None else [0.5] * out.shape[1])
        return (out >= t).astype(np.int64)
    if len(out) == 0:
        return np.zeros(0, dtype=np.int64)
    if d.thresholds is not None and out.shape[1] == 2:
        return (out[:, 1] >= d.thresholds[0]).astype(np.int64)
    return out.argmax(-1)


# ------------------------------------------------------------------------------------------ tuning after training


def _fbeta(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float) -> np.ndarray:
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return np.where(den > 0, (1 + b2) * tp / np.maximum(den, 1e-12), 0.0)


def tune_threshold(y: np.ndarray, p: np.ndarray, beta: float = 1.0) -> float:
    """The probability cut that maximises F-beta of one binary label on validation (midpoint between scores)."""
    y = np.asarray(y).astype(bool)
    if not y.any() or y.all():
        return 0.5
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    fn = ys.sum() - tp
    score = _fbeta(tp, fp, fn, beta)
    # only cut between distinct scores: everything at or above ps[i] is predicted positive
    last = np.r_[ps[1:] != ps[:-1], True]
    score = np.where(last, score, -1.0)
    i = int(np.argmax(score))
    nxt = ps[i + 1] if i + 1 < len(ps) else 0.0
    return float((ps[i] + nxt) / 2)


def tune_thresholds(labels: np.ndarray, out: np.ndarray, beta: float = 1.0) -> list[float]:
    """One threshold per column of a multi-label output matrix (labels: the 0/1 matrix)."""
    return [tune_threshold(labels[:, j], out[:, j], beta) for j in range(out.shape[1])]


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises validation NLL (one scalar, LBFGS on log T, as Guo et al. 2017)."""
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    return t if math.isfinite(t) and t > 0 else 1.0
