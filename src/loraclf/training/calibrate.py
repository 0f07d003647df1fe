"""After training, on validation: the temperature (eval.calibration) and the decision thresholds
(eval.tune_thresholds) that predict, evaluate, serve and export then apply (problem.Decision, decision.json)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ..base import logs
from .. import task as problem
from ..config import Config
from ..base.errors import DataError
from ..infer.metrics import calibration_error

logger = logs.get(__name__)


def _threshold_metric(cfg: Config) -> Optional[str]:
    how = cfg.eval.tune_thresholds
    if how == "auto":
        return "f1" if cfg.model.problem_type == problem.MULTI else None
    return None if how == "none" else how


def fit(cfg: Config, base: problem.Decision, logits: np.ndarray, labels: np.ndarray,
        id2label: dict[int, str]) -> problem.Decision:
    """The run's decision rule, fitted on the validation logits and labels."""
    d = dataclasses.replace(base)
    if d.problem_type == problem.REGRESSION:
        return d
    if cfg.eval.calibration == "temperature":
        if len(labels) < 2:
            raise DataError("eval.calibration=temperature needs a validation split with labelled rows; give "
                            "data.validation or data.validation_split")
        d.temperature = problem.fit_temperature(logits, labels)
        logger.info(f"calibration: temperature {d.temperature:.4f} fitted on {len(labels):,} validation rows")
    metric = _threshold_metric(cfg)
    if metric is None:
        return d
    beta = cfg.eval.threshold_beta if metric == "fbeta" else 1.0
    out = problem.outputs(logits, d)
    if d.problem_type == problem.MULTI:
        d.thresholds = problem.tune_thresholds(np.asarray(labels), out, beta)
    elif len(id2label) == 2:
        d.thresholds = [problem.tune_threshold(np.asarray(labels) == 1, out[:, 1], beta)]
    else:
        logger.warning(f"eval.tune_thresholds={metric} applies to binary and multi-label tasks; with "
                       f"{len(id2label)} classes the prediction stays the most probable class")
        return d
    d.threshold_metric = metric if metric == "f1" else f"f{beta:g}"
    shown = ", ".join(f"{id2label[j] if d.problem_type == problem.MULTI else id2label[1]} {t:.3f}"
                      for j, t in enumerate(d.thresholds))
    logger.info(f"decision thresholds ({d.threshold_metric} on validation): {shown}")
    return d


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = problem.outputs(logits, problem.Decision(temperature=temperature))
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels.astype(np.int64)], 1e-12, 1.0))))


def _ece(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return calibration_error(labels.astype(np.int64), problem.outputs(logits, problem.Decision(temperature=temperature)))


def calibration_summary(d: problem.Decision, val: tuple, test: Optional[tuple]) -> dict:
    """ECE (15 bins) and NLL before (T = 1) and after the temperature, on validation and test."""
    out = {"method": "temperature", "temperature": d.temperature, "bins": problem.ECE_BINS}
    for split, pair in (("val", val), ("test", test)):
        if pair is None or len(pair[1]) == 0:
            continue
        logits, labels = pair
        out[split] = {"ece_before": _ece(logits, labels, 1.0), "ece_after": _ece(logits, labels, d.temperature),
                      "nll_before": _nll(logits, labels, 1.0), "nll_after": _nll(logits, labels, d.temperature)}
    return out
