"""Pseudo-labels for self-training (self_train.py): each problem type's label and confidence, the selection of the
confident ones, the agreement between rounds, and the student's train set.

Each problem type has its pseudo-label and its confidence (`pseudo_labels`):

    single_label_classification   the most probable class; confidence = its probability
    multi_label_classification    the label set under the run's per-label thresholds; confidence = that of the least
                                  sure label, where a label's confidence is p when it is predicted (p >= its
                                  threshold) and 1 - p when it is not: a row passes adapt.threshold only when every
                                  label is confidently on its side
    regression                    the predicted value; confidence = agreement between two views: the model on the
                                  text and on a copy with 10% of its words deleted (EDA random deletion, no WordNet),
                                  1 - |difference| / (std of the labelled targets), so adapt.threshold=0.9 keeps the
                                  values that move by at most 0.1 std

adapt.top_fraction_per_class balances per predicted class (single-label); for the other types, which have no one
class per row, it keeps at most ceil(fraction x N) rows overall, most confident first. adapt.weighting=soft trains
on the probabilities as targets (single-label: soft cross-entropy; multi-label: BCE on the label probabilities);
regression has no probabilities, so soft is refused there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..data import augment
from .. import task as problem
from ..config import AugmentConfig, Config

if TYPE_CHECKING:
    import datasets


# ------------------------------------------------------------------------------------------ what a pseudo-label is


@dataclass
class Pseudo:
    """One model's pseudo-labels over the unlabeled texts, in the problem type's terms (see the module docstring)."""

    out: np.ndarray  # outputs: class probabilities, label probabilities, or values
    labels: np.ndarray  # what a student trains on: class ids, 0/1 rows, or values
    confidence: np.ndarray  # one per text
    second: Optional[np.ndarray] = None  # regression: the values on the second view


def pseudo_labels(out: np.ndarray, decision: problem.Decision, second: Optional[np.ndarray] = None,
                  scale: float = 1.0) -> Pseudo:
    """The pseudo-labels and confidences of a model's outputs (regression: and of its outputs on the second view)."""
    out = np.asarray(out, dtype=np.float64)
    if decision.problem_type == problem.MULTI:
        labels = problem.predictions(out, decision).astype(np.float64)
        return Pseudo(out, labels, np.where(labels > 0, out, 1.0 - out).min(-1, initial=1.0))
    if decision.problem_type == problem.REGRESSION:
        conf = np.clip(1.0 - np.abs(out - second) / (scale if scale > 0 else 1.0), 0.0, 1.0)
        return Pseudo(out, out, conf, np.asarray(second, dtype=np.float64))
    return Pseudo(out, out.argmax(-1), out.max(-1))


# regression's second view: each unlabeled text with this share of its words deleted (needs no WordNet)
SECOND_VIEW = AugmentConfig(enabled=True, synonym_p=0.0, insert_p=0.0, swap_p=0.0, delete_p=0.1, num_copies=1)


def second_view(texts: list[str], seed: int) -> list[str]:
    """Regression's second view: each text with SECOND_VIEW.delete_p of its words deleted."""
    aug, rng = augment.Augmenter(SECOND_VIEW), random.Random(seed)
    return [aug.augment(t, rng) for t in texts]


# ------------------------------------------------------------------------------------------ selection


def select(pseudo: Pseudo, problem_type: str, cfg: Config) -> np.ndarray:
    """The kept pseudo-labels' indices under adapt.threshold and adapt.top_fraction_per_class."""
    if problem_type == problem.SINGLE:
        return select_pseudo_labels(pseudo.out, cfg.adapt.threshold, cfg.adapt.top_fraction_per_class)
    return select_confident(pseudo.confidence, cfg.adapt.threshold, cfg.adapt.top_fraction_per_class)


def select_pseudo_labels(probs: np.ndarray, threshold: Optional[float] = None,
                         top_fraction_per_class: Optional[float] = None) -> np.ndarray:
    """Indices (ascending) of the pseudo-labels to keep.

    threshold: keep those whose top probability is at least this. top_fraction_per_class: then keep, per predicted
    class, at most ceil(fraction * N / K) of them, most confident first, so that no class floods the student.
    """
    probs = np.asarray(probs)
    n, k = probs.shape
    conf = probs.max(-1)
    pred = probs.argmax(-1)
    keep = np.ones(n, dtype=bool) if threshold is None else conf >= threshold
    if top_fraction_per_class is not None:
        quota = int(np.ceil(top_fraction_per_class * n / k))
        capped = np.zeros(n, dtype=bool)
        for c in range(k):
            idx = np.flatnonzero(keep & (pred == c))
            best = idx[np.argsort(-conf[idx], kind="stable")[:quota]]
            capped[best] = True
        keep = capped
    return np.flatnonzero(keep)


def select_confident(confidence: np.ndarray, threshold: Optional[float] = None,
                     top_fraction: Optional[float] = None) -> np.ndarray:
    """Multi-label and regression: indices (ascending) of the rows with confidence >= threshold, then at most
    ceil(top_fraction x N) of them, most confident first."""
    conf = np.asarray(confidence, dtype=np.float64)
    keep = np.ones(len(conf), dtype=bool) if threshold is None else conf >= threshold
    if top_fraction is not None:
        idx = np.flatnonzero(keep)
        best = idx[np.argsort(-conf[idx], kind="stable")[:int(np.ceil(top_fraction * len(conf)))]]
        keep = np.zeros(len(conf), dtype=bool)
        keep[best] = True
    return np.flatnonzero(keep)


# ------------------------------------------------------------------------------------------ the round's record


def label_counts(pseudo: Pseudo, rows: np.ndarray, problem_type: str, id2label: dict[int, str]) -> dict:
    """Pseudo-labels per class or per label; regression: the values' mean, std, min and max."""
    labels = pseudo.labels[rows]
    if problem_type == problem.MULTI:
        return {id2label[j]: int(labels[:, j].sum()) for j in range(len(id2label))}
    if problem_type == problem.REGRESSION:
        return ({"mean": float(labels.mean()), "std": float(labels.std()), "min": float(labels.min()),
                 "max": float(labels.max())} if len(labels) else {})
    return _per_class(labels, id2label)


def _per_class(labels: np.ndarray, id2label: dict[int, str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(id2label))
    return {id2label[i]: int(counts[i]) for i in range(len(id2label))}


def agreement(prev_probs: np.ndarray, prev_kept: np.ndarray, probs: np.ndarray, kept: np.ndarray,
              same: Optional[np.ndarray] = None) -> dict:
    """How this round's pseudo-labels compare with the previous round's. same: per text, whether the two rounds'
    pseudo-labels agree (default: equal argmax classes)."""
    if same is None:
        same = prev_probs.argmax(-1) == probs.argmax(-1)
    both = np.intersect1d(prev_kept, kept)
    return {
        "all": float(same.mean()),  # over every unlabeled text
        "kept_in_both": int(len(both)),
        "kept": float(same[both].mean()) if len(both) else None,
        "kept_jaccard": float(len(both) / max(len(np.union1d(prev_kept, kept)), 1)),
    }


def same_labels(prev: Pseudo, cur: Pseudo, problem_type: str, scale: float) -> np.ndarray:
    """Per text, whether two rounds agree: same class, same label set, or values within 0.1 std of the targets."""
    if problem_type == problem.MULTI:
        return (prev.labels == cur.labels).all(-1)
    if problem_type == problem.REGRESSION:
        return np.abs(prev.labels - cur.labels) <= 0.1 * (scale if scale > 0 else 1.0)
    return prev.labels == cur.labels


# ------------------------------------------------------------------------------------------ the student's train set


def student_train_set(labelled: datasets.Dataset, texts: list[str], probs: np.ndarray, kept: np.ndarray,
                      cfg: Config, seed: int, pseudo: Optional[Pseudo] = None) -> tuple[datasets.Dataset, int]:
    """Labelled rows + kept pseudo-labelled rows (+ their augmented views when adapt.consistency), as a Dataset.

    weighting=confidence adds a `weight` column (1 for labelled rows); weighting=soft trains on the teacher's
    probabilities: single-label as `soft_labels` (one-hot for labelled rows), multi-label as the label targets.
    pseudo: the pseudo-labels of another problem type (default: single-label, from probs).
    """
    import datasets

    pt = cfg.model.problem_type
    pseudo = pseudo if pseudo is not None else Pseudo(probs, np.asarray(probs).argmax(-1), np.asarray(probs).max(-1))
    p_texts, rows = [texts[i] for i in kept], list(range(len(kept)))
    n_aug = 0
    if cfg.adapt.consistency and len(kept):
        p_texts, rows = augment.augment_dataset(p_texts, rows, cfg.augment, seed)
        n_aug = len(p_texts) - len(kept)
    soft = cfg.adapt.weighting == "soft"
    targets = (pseudo.out if soft and pt == problem.MULTI else pseudo.labels)[kept]
    lab_labels = list(labelled["label"])
    p_labels = [_as_label(targets[r], pt) for r in rows]
    out = {"text": list(labelled["text"]) + p_texts, "label": [_as_label(y, pt) for y in lab_labels] + p_labels}
    if cfg.adapt.weighting == "confidence":
        out["weight"] = [1.0] * len(lab_labels) + [float(pseudo.confidence[kept][r]) for r in rows]
    elif soft and pt == problem.SINGLE:
        k = pseudo.out.shape[1]
        eye = np.eye(k, dtype=np.float32)
        out["soft_labels"] = ([eye[int(y)].tolist() for y in lab_labels]
                              + [pseudo.out[kept][r].astype(np.float32).tolist() for r in rows])
    return datasets.Dataset.from_dict(out), n_aug


def _as_label(y, problem_type: str):
    if problem_type == problem.MULTI:
        return [float(v) for v in y]
    return float(y) if problem_type == problem.REGRESSION else int(y)
