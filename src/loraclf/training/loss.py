"""The training loss of each problem type, with its weights: class weights (train.class_weights), focal loss,
label smoothing, Huber, and the regression target scaling. Built once from the training split (`build`), logged,
and written to the run folder as loss.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import task as problem
from ..config import Config
from ..base.errors import DataError
from ..task import MULTI, REGRESSION


@dataclass
class LossSpec:
    problem_type: str
    name: str  # cross_entropy, focal, bce, mse, huber
    class_weights: Optional[list[float]] = None  # single-label: per class; multi-label: BCE positive weight per label
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    huber_delta: float = 1.0
    target_mean: float = 0.0
    target_std: float = 1.0

    def to_json(self, id2label: dict[int, str]) -> dict:
        out = asdict(self)
        if self.class_weights is not None:
            out["class_weights"] = {id2label[i]: w for i, w in enumerate(self.class_weights)}
        return out

    def describe(self, id2label: dict[int, str]) -> str:
        text = f"loss: {self.name}"
        if self.name == "focal":
            text += f" (gamma {self.focal_gamma:g})"
        if self.label_smoothing:
            text += f", label smoothing {self.label_smoothing:g}"
        if self.class_weights is not None:
            kind = "positive weights" if self.problem_type == MULTI else "class weights"
            shown = ", ".join(f"{id2label[i]} {w:.3g}" for i, w in enumerate(self.class_weights[:12]))
            text += f"; {kind}: {shown}" + (", ..." if len(self.class_weights) > 12 else "")
        if self.problem_type == REGRESSION:
            text += f"; targets standardised with mean {self.target_mean:.4g}, std {self.target_std:.4g}"
        return text


def _balanced(labels: np.ndarray, id2label: dict[int, str], problem_type: str) -> list[float]:
    k = len(id2label)
    if problem_type == MULTI:
        pos = labels.sum(0)
        absent = [id2label[j] for j in range(k) if pos[j] == 0]
        if absent:
            raise DataError(f"train.class_weights=balanced needs every label in the training split; "
                            f"{', '.join(map(repr, absent[:5]))} never occurs there (add rows with it, or give the "
                            f"weights as a mapping)")
        return [float((len(labels) - pos[j]) / pos[j]) for j in range(k)]
    counts = np.bincount(labels.astype(np.int64), minlength=k)
    absent = [id2label[j] for j in range(k) if counts[j] == 0]
    if absent:
        raise DataError(f"train.class_weights=balanced needs every class in the training split; "
                        f"{', '.join(map(repr, absent[:5]))} has no training rows (add some, or give the weights "
                        f"as a mapping)")
    return [float(len(labels) / (k * counts[j])) for j in range(k)]


def _mapped(weights: dict[str, float], id2label: dict[int, str]) -> list[float]:
    label2id = {v: i for i, v in id2label.items()}
    unknown = [k for k in weights if k not in label2id]
    if unknown:
        raise DataError(f"train.class_weights names {unknown[0]!r}, which is not a label of this data; labels are "
                        f"{', '.join(id2label.values())}")
    return [float(weights.get(id2label[i], 1.0)) for i in range(len(id2label))]


def build(cfg: Config, id2label: dict[int, str], labels: np.ndarray) -> LossSpec:
    """The loss as configured, its weights computed from the encoded training labels."""
    pt = cfg.model.problem_type
    t = cfg.train
    spec = LossSpec(pt, problem.loss_name(pt, t.loss), focal_gamma=t.focal_gamma, label_smoothing=t.label_smoothing,
                    huber_delta=t.huber_delta)
    if pt == REGRESSION:
        y = np.asarray(labels, dtype=np.float64)
        if cfg.data.standardize_targets and len(y) > 1 and y.std() > 0:
            spec.target_mean, spec.target_std = float(y.mean()), float(y.std())
        return spec
    if t.class_weights == "balanced":
        spec.class_weights = _balanced(np.asarray(labels), id2label, pt)
    elif isinstance(t.class_weights, dict):
        spec.class_weights = _mapped(t.class_weights, id2label)
    return spec


def loss_of(logits: torch.Tensor, batch: dict, spec: LossSpec) -> torch.Tensor:
    """The batch's loss; per-row weights (self-training's pseudo-labels) and class weights both weigh the mean."""
    logits = logits.float()
    if spec.problem_type == REGRESSION:
        per, norm = _regression(logits, batch, spec), None
    elif spec.problem_type == MULTI:
        per, norm = _multi_label(logits, batch, spec), None
    else:
        per, norm = _single_label(logits, batch, spec)
    row = batch.get("weight")
    if row is not None:
        norm = row if norm is None else row * norm
    if norm is None:
        return per.mean()
    return (per * (row if row is not None else 1.0)).sum() / norm.sum().clamp_min(1e-12)


def _single_label(logits, batch, spec: LossSpec):
    """Per-row loss and, with class weights, the per-row weight the mean is normalised by (as torch's CE does).

    Every variant is one formula over a target distribution q (one-hot for hard labels):
    row loss = sum_k w_k q~_k (1 - p_k)^gamma (-log p_k), mean normalised by sum_rows sum_k w_k q_k, where q~ is q
    smoothed as torch smooths hard labels, w the class weights (1 without) and gamma 0 unless the loss is focal.
    Hard labels without focal are torch's cross_entropy(weight=, label_smoothing=) itself."""
    w = torch.tensor(spec.class_weights, device=logits.device) if spec.class_weights is not None else None
    if "soft_labels" in batch:
        return _targeted(logits, batch["soft_labels"].float(), w, spec)
    y = batch["labels"].long()
    if spec.name == "focal":
        return _targeted(logits, F.one_hot(y, logits.shape[-1]).float(), w, spec)
    ce = F.cross_entropy(logits, y, weight=w, reduction="none", label_smoothing=spec.label_smoothing)
    return ce, (None if w is None else w[y])


def _targeted(logits, q, w, spec: LossSpec):
    """Probability targets (self-training's soft pseudo-labels, or one-hot rows for the focal loss): smoothed as
    torch smooths hard labels, each class's term weighed by its class weight and, for focal, by (1 - p_k)^gamma;
    each row's mean weight is its expected class weight, so one-hot targets give exactly the hard-label loss."""
    q_s = q * (1 - spec.label_smoothing) + spec.label_smoothing / q.shape[-1] if spec.label_smoothing else q
    log_p = torch.log_softmax(logits, -1)
    terms = -q_s * log_p
    if spec.name == "focal":
        terms = (1 - log_p.exp()).pow(spec.focal_gamma) * terms
    if w is None:
        return terms.sum(-1), None
    return (terms * w).sum(-1), (q * w).sum(-1)


def _multi_label(logits, batch, spec: LossSpec):
    y = batch["labels"].float().view_as(logits)
    pos = torch.tensor(spec.class_weights, device=logits.device) if spec.class_weights is not None else None
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none", pos_weight=pos)
    if spec.name == "focal":
        p = torch.sigmoid(logits)
        p_t = torch.where(y > 0.5, p, 1 - p)
        bce = (1 - p_t).pow(spec.focal_gamma) * bce
    return bce.mean(-1)


def _regression(logits, batch, spec: LossSpec):
    z = logits.view(-1)
    y = (batch["labels"].float().view(-1) - spec.target_mean) / spec.target_std
    if spec.name == "huber":
        return F.huber_loss(z, y, reduction="none", delta=spec.huber_delta)
    return F.mse_loss(z, y, reduction="none")
