"""Label issues: out-of-fold probabilities on train from k-fold training, handed to cleanlab (confident learning is
cleanlab's, not re-implemented here).

The folds are loraclf's one k-fold loop (loraclf.training.cv): each fold a real training run on the config, with the
other folds' rows as its training data, written to FOLDS/fold-i (i from 0), its held-out rows' probabilities kept
beside it, so an interrupted audit resumes where it stopped. Each fold validates on its held-out rows, or on the
config's own validation split when it names one. Or the probabilities come from a finished `loraclf cv` run
(--from-cv), checked to be of the same training rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..base.errors import ConfigError
from ..config import Config
from ..data import Splits
from ..training import cv

# cleanlab's filter_by choices; "both" (rows flagged by prune_by_class and by prune_by_noise_rate) is the default:
# on AG News with 250 planted flips it gave the highest F1 of the first four for every probability source measured
# (bench/results/trust.md), where cleanlab's own default, prune_by_noise_rate, flags more rows at lower precision
FILTERS = ("both", "prune_by_noise_rate", "prune_by_class", "confident_learning", "predicted_neq_given",
           "low_normalized_margin", "low_self_confidence")
FILTER_BY = "both"


def out_of_fold(cfg: Config, splits: Splits, labels: np.ndarray, k: int, folds_dir: Path, own_validation: bool,
                quiet: bool = False) -> tuple[np.ndarray, dict]:
    """Probabilities of every training row from the fold that did not train on it, and {trained, reused} folds."""
    plan = cv.fold_plan(cfg, splits, k, folds_dir, name=lambda i: f"fold-{i - 1}")
    found, done = cv.run_folds(cfg, splits, labels, plan,
                               lambda f: splits.validation if own_validation else splits.train.select(f.held),
                               keep_test=False, quiet=quiet, what="audit")
    return cv.out_of_fold(found, len(labels))[0], done


def check_filter(filter_by: str) -> None:
    if filter_by not in FILTERS:
        raise ConfigError([f"--filter-by must be one of {', '.join(FILTERS)} (cleanlab's filter_by), got {filter_by}"])


def find_issues(labels: np.ndarray, probs: np.ndarray, id2label: dict[int, str], multi: bool,
                filter_by: str = FILTER_BY) -> pd.DataFrame:
    """cleanlab's label issues (find_label_issues with filter_by), worst first (lowest label quality): row, given
    label, suggested label, the self-confidence (probability of the given label; multi-label: cleanlab's
    label-quality score) and the probability of the suggestion."""
    from cleanlab.filter import find_label_issues

    if multi:
        from cleanlab.multilabel_classification import get_label_quality_scores

        given = [list(np.flatnonzero(row)) for row in labels]
        flagged = find_label_issues(labels=given, pred_probs=probs, multi_label=True, filter_by=filter_by)
        quality = get_label_quality_scores(given, probs)
        suggested = [[id2label[j] for j in np.flatnonzero(p >= 0.5)] for p in probs]
        shown_given = ["|".join(id2label[j] for j in g) for g in given]
        shown_suggested = ["|".join(s) for s in suggested]
        suggestion_p = np.prod(np.maximum(probs, 1 - probs), axis=1)  # the suggested set, labels independent
    else:
        flagged = find_label_issues(labels=labels, pred_probs=probs, filter_by=filter_by)
        quality = probs[np.arange(len(labels)), labels]
        shown_given = [id2label[int(y)] for y in labels]
        shown_suggested = [id2label[int(j)] for j in probs.argmax(1)]
        suggestion_p = probs.max(1)
    rows = np.flatnonzero(flagged)
    rows = rows[np.argsort(quality[rows], kind="stable")]
    return pd.DataFrame({"row": rows, "given_label": [shown_given[i] for i in rows],
                         "suggested_label": [shown_suggested[i] for i in rows],
                         "self_confidence": np.round(quality[rows], 4),
                         "suggested_probability": np.round(np.asarray(suggestion_p)[rows], 4)})
