"""Where the label-issue search's out-of-fold probabilities come from, and how they are combined.

Three sources, each out of fold on the same folds (training.cv.assign: stratified, grouped when the config names a
group column), averaged row by row:

    folds       the fine-tuned fold models (labels.out_of_fold, or a finished `loraclf cv` run with --from-cv)
    embeddings  a logistic regression (C=1) on the frozen base encoder's mean-pooled embeddings (embed.py), the
                ones the near-duplicate search uses: a sentence encoder's mean-pooled embeddings are strong features,
                and five fits on them take seconds
    tfidf       a logistic regression (C=1) on TF-IDF of word 1-2-grams (min_df=2), fitted inside each fold

The sources err differently (a fine-tuned encoder, its frozen geometry, the words themselves), so their mean ranks
the wrong labels better than any one of them: on AG News with 250 planted flips (bench/trust.py --part labels) the
mean of the three gave a higher F1 than each source alone (bench/results/trust.md). Multi-label data fits one
logistic regression per label (one-vs-rest), whose probabilities are per label as cleanlab's multi-label path wants.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from ..base.errors import ConfigError

SOURCES = ("folds", "embeddings", "tfidf")
DEFAULT_SOURCES = SOURCES
LINEAR_C = 1.0
TFIDF = {"ngram_range": (1, 2), "min_df": 2, "sublinear_tf": False}


def parse_sources(value: str | Sequence[str]) -> tuple[str, ...]:
    """'folds,embeddings' or a sequence of names -> the sources, checked, in SOURCES order."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise ConfigError([f"--label-probs takes a comma-separated subset of {', '.join(SOURCES)}; got "
                           f"{','.join(map(str, names)) or 'nothing'}"])
    return tuple(s for s in SOURCES if s in names)


def _classifier(multi: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    lr = LogisticRegression(C=LINEAR_C, max_iter=3000)
    return OneVsRestClassifier(lr) if multi else lr


def _fit_predict(fit_x, predict_x, y: np.ndarray, multi: bool, width: int) -> np.ndarray:
    """One fold: fit on (fit_x, y), probabilities of predict_x, one column per class (a class missing from the
    fold's training rows gets probability 0)."""
    model = _classifier(multi)
    with warnings.catch_warnings():  # a label constant in a fold (one-vs-rest) or a slow convergence: not fatal
        warnings.simplefilter("ignore")
        model.fit(fit_x, y)
        p = model.predict_proba(predict_x)
    if multi:
        return p
    out = np.zeros((p.shape[0], width))
    out[:, model.classes_.astype(int)] = p
    return out


def linear_oof(features: Callable[[np.ndarray, np.ndarray], tuple], y: np.ndarray, held: list[np.ndarray],
               multi: bool, width: int) -> np.ndarray:
    """Out-of-fold probabilities of a logistic regression; features(train_rows, held_rows) -> (X_train, X_held)."""
    n = len(y)
    out = np.zeros((n, width))
    for rows in held:
        rest = np.setdiff1d(np.arange(n), rows)
        fit_x, predict_x = features(rest, rows)
        out[rows] = _fit_predict(fit_x, predict_x, y[rest], multi, width)
    return out


def embedding_oof(emb: np.ndarray, y: np.ndarray, held: list[np.ndarray], multi: bool, width: int) -> np.ndarray:
    return linear_oof(lambda a, b: (emb[a], emb[b]), y, held, multi, width)


def tfidf_oof(texts: list[str], y: np.ndarray, held: list[np.ndarray], multi: bool, width: int
              ) -> Optional[np.ndarray]:
    """None when a fold's texts leave TF-IDF no word (no word of two letters occurs twice)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    def features(a, b):
        vec = TfidfVectorizer(**TFIDF)
        return vec.fit_transform([texts[i] for i in a]), vec.transform([texts[i] for i in b])

    try:
        return linear_oof(features, y, held, multi, width)
    except ValueError as e:  # sklearn: "empty vocabulary; perhaps the documents only contain stop words"
        if "vocabulary" not in str(e):
            raise
        return None


def agreement(probs: np.ndarray, y: np.ndarray, multi: bool) -> float:
    """How often a source's prediction is the given label (multi-label: the given set): its out-of-fold accuracy
    against the labels as given, noise included."""
    if multi:
        return round(float(((probs >= 0.5) == (y > 0.5)).all(1).mean()), 4)
    return round(float((probs.argmax(1) == y).mean()), 4)


def combine(found: dict[str, np.ndarray], y: np.ndarray, multi: bool) -> tuple[np.ndarray, dict]:
    """The mean of the sources' probabilities, and what the summary says of them."""
    mean = np.mean(list(found.values()), axis=0)
    info = {"sources": list(found), "combined": "mean of the sources' out-of-fold probabilities",
            "agreement_with_given_labels": {k: agreement(v, y, multi) for k, v in found.items()}}
    if len(found) > 1:
        info["agreement_with_given_labels"]["mean"] = agreement(mean, y, multi)
    return mean, info
