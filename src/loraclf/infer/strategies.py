"""What to label next, as arithmetic on a model's outputs: the uncertainty scores (entropy, margin) of single- and
multi-label probabilities, and the order in which each selection strategy takes pool rows.

Every strategy returns (row indices in the order they are picked, the score of each picked row). Scores are the
strategy's own: entropy in nats (higher = less sure), margin (lower = less sure), a uniform draw for random.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..base.errors import ConfigError
from ..task import MULTI

STRATEGIES = ("random", "entropy", "margin", "diverse")
DEFAULT_STRATEGY = "entropy"  # the best after 5 rounds in bench/results/active_learning.md (3 seeds)
NEEDS_MODEL = ("entropy", "margin", "diverse")
PREFILTER = 10  # diverse: the PREFILTER x k most uncertain rows are clustered into k groups
EPS = 1e-12


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        from ..base.errors import did_you_mean

        raise ConfigError([f"unknown --strategy '{strategy}'{did_you_mean(strategy, STRATEGIES)}; choose one of "
                           f"{', '.join(STRATEGIES)}"])
    return strategy


def entropy(probs: np.ndarray, problem_type: str) -> np.ndarray:
    """Per row: the entropy of the class distribution (single-label), or the mean binary entropy of the labels
    (multi-label), in nats."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    if problem_type == MULTI:
        q = np.clip(1.0 - p, EPS, 1.0)
        return -(p * np.log(p) + q * np.log(q)).mean(axis=1)
    return -(p * np.log(p)).sum(axis=1)


def margin(probs: np.ndarray, problem_type: str, thresholds: Optional[list] = None) -> np.ndarray:
    """Per row: the top-1 minus the top-2 class probability (single-label), or the smallest distance of any label's
    probability to its decision threshold (multi-label: the run's tuned thresholds, else 0.5). Small = unsure."""
    p = np.asarray(probs, dtype=np.float64)
    if problem_type == MULTI:
        t = np.asarray(thresholds if thresholds is not None else [0.5] * p.shape[1], dtype=np.float64)
        return np.abs(p - t).min(axis=1)
    if p.shape[1] < 2:
        return np.ones(len(p))
    top = np.sort(p, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def _stable_order(values: np.ndarray) -> np.ndarray:
    """Indices by values ascending; ties keep pool order."""
    return np.argsort(values, kind="stable")


def pick_random(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    draw = np.random.default_rng(seed).random(n)
    order = _stable_order(draw)[:k]
    return order, draw[order]


def pick_entropy(probs: np.ndarray, k: int, problem_type: str) -> tuple[np.ndarray, np.ndarray]:
    h = entropy(probs, problem_type)
    order = _stable_order(-h)[:k]
    return order, h[order]


def pick_margin(probs: np.ndarray, k: int, problem_type: str,
                thresholds: Optional[list] = None) -> tuple[np.ndarray, np.ndarray]:
    m = margin(probs, problem_type, thresholds)
    order = _stable_order(m)[:k]
    return order, m[order]


def cluster_labels(embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means (k-means++ start, sklearn) of L2-normalised embeddings into at most k clusters."""
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)
    distinct = len(np.unique(np.round(x, 6), axis=0))
    n_clusters = max(1, min(k, distinct))
    return KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit_predict(x)


def pick_diverse(probs: np.ndarray, embeddings: np.ndarray, k: int, problem_type: str,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uncertainty within clusters: the PREFILTER x k most uncertain rows (entropy) are clustered into k groups by
    k-means on the fine-tuned encoder's embeddings, and the most uncertain row of each group is taken, most
    uncertain first; if fewer than k groups form (duplicates), the next most uncertain rows fill the rest."""
    h = entropy(probs, problem_type)
    by_h = _stable_order(-h)
    candidates = by_h[: min(len(h), PREFILTER * k)]
    groups = cluster_labels(embeddings[candidates], k, seed)
    chosen: list[int] = []
    for g in np.unique(groups):
        members = candidates[groups == g]  # in entropy order already
        chosen.append(int(members[0]))
    taken = set(chosen)
    chosen += [int(i) for i in by_h if int(i) not in taken][: k - len(chosen)]
    order = np.asarray(chosen, dtype=np.int64)
    order = order[_stable_order(-h[order])][:k]
    return order, h[order]
