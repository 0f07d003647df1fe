"""Fold assignment: which training rows each of K folds holds out, by problem type, optionally grouped.

- single-label: stratified by class (sklearn's StratifiedKFold; StratifiedGroupKFold with groups);
- multi-label: iteratively stratified (Sechidis et al. 2011, through iterative-stratification's
  MultilabelStratifiedKFold); with groups, each group's labels are pooled (any row of the group has the label) and
  the groups are stratified, so a group's rows stay together;
- regression: stratified on quantile bins of the target (at most MAX_BINS bins, each of at least K rows).

`check` refuses, with one line naming the cause, a K the data cannot fold: K < 2, K above the rows of the smallest
class (or above the rows), a group column with an empty cell, one group, or fewer groups than K.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from ...base.errors import ConfigError, DataError
from ...task import MULTI, REGRESSION

MAX_BINS = 10  # regression: quantile bins of the target that the folds are stratified on


def check(y: np.ndarray, problem_type: str, k: int, id2label: dict[int, str], groups: Optional[list] = None,
          group_column: Optional[str] = None, what: str = "--folds") -> None:
    """Refuse a fold count the training rows cannot give (see the module's docstring)."""
    if k < 2:
        raise ConfigError([f"{what} must be at least 2, got {k}"])
    n = len(y)
    if problem_type not in (MULTI, REGRESSION):
        counts = {i: c for i, c in enumerate(np.bincount(y.astype(int), minlength=len(id2label))) if c}
        if len(counts) < 2:
            raise DataError(f"the training split has only one class ({id2label[next(iter(counts))]}); folds need "
                            f"at least two")
        small = min(counts, key=counts.get)
        if k > counts[small]:
            raise DataError(f"{what} {k} is more than the {counts[small]} training rows of class "
                            f"'{id2label[small]}'; each fold needs one of every class: lower {what} to at most "
                            f"{counts[small]}")
    elif k > n:
        raise DataError(f"{what} {k} is more than the {n} training rows; lower {what} to at most {n}")
    if groups is not None:
        _check_groups(groups, k, group_column or "data.group_column", what)


def _check_groups(groups: list, k: int, column: str, what: str) -> None:
    missing = [i for i, g in enumerate(groups) if g is None]
    if missing:
        raise DataError(f"the group column '{column}' is empty in {len(missing)} training rows (first at row "
                        f"{missing[0]}); give every row a group, or unset data.group_column")
    distinct = sorted(set(groups))
    if len(distinct) == 1:
        raise DataError(f"the group column '{column}' has one group ('{distinct[0]}') in all {len(groups)} training "
                        f"rows; grouped folds need at least {k} groups (check data.group_column)")
    if len(distinct) < k:
        raise DataError(f"the group column '{column}' has {len(distinct)} groups, fewer than {what} {k}; no group "
                        f"may span two folds, so lower {what} to at most {len(distinct)}")


def regression_bins(y: np.ndarray, k: int) -> np.ndarray:
    """Quantile bins of the target (ties kept in one bin), as many as leave each bin about K rows or more."""
    n_bins = int(max(1, min(MAX_BINS, len(y) // max(k, 1))))
    if n_bins < 2:
        return np.zeros(len(y), dtype=int)
    edges = np.unique(np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, y, side="right")


def _pooled_group_labels(y: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    pooled = np.zeros((n_groups, y.shape[1]), dtype=int)
    np.maximum.at(pooled, codes, (y > 0).astype(int))
    return pooled


def _multi_label(y: np.ndarray, k: int, seed: int, groups: Optional[list]) -> list[np.ndarray]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    y = np.asarray(y, dtype=int)
    if groups is None:
        return [held for _, held in splitter.split(np.zeros(len(y)), y)]
    names, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    pooled = _pooled_group_labels(y, codes, len(names))
    return [np.flatnonzero(np.isin(codes, held_groups))
            for _, held_groups in splitter.split(np.zeros(len(names)), pooled)]


def assign(y: np.ndarray, problem_type: str, k: int, seed: int,
           groups: Optional[list] = None) -> list[np.ndarray]:
    """The held-out rows of each of the k folds (sorted; every row in exactly one fold)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    if problem_type == MULTI:
        held = _multi_label(y, k, seed, groups)
    else:
        strata = regression_bins(y.astype(float), k) if problem_type == REGRESSION else y
        with warnings.catch_warnings():  # a stratum smaller than k: sklearn warns, and folds it as well as it can
            warnings.simplefilter("ignore", UserWarning)
            if groups is None:
                splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
                held = [h for _, h in splitter.split(np.zeros(len(y)), strata)]
            else:
                splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
                g = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
                held = [h for _, h in splitter.split(np.zeros(len(y)), strata, g)]
    return [np.sort(np.asarray(h, dtype=np.int64)) for h in held]


def fold_of(held: list[np.ndarray], n: int) -> np.ndarray:
    """Each row's fold number (1-based) from the held-out rows of each fold."""
    out = np.zeros(n, dtype=np.int64)
    for i, rows in enumerate(held):
        out[rows] = i + 1
    return out
