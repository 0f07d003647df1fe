"""Label issues: out-of-fold probabilities on train from k-fold training, handed to cleanlab (confident learning is
cleanlab's, not re-implemented here).

Each fold is a real `loraclf.training.train` run on the config, with the other folds' rows as its training data,
written to FOLDS/fold-i. After training it predicts its held-out rows and keeps them in FOLDS/fold-i/heldout.npz
(row indices + probabilities); a fold whose file is there and holds the same rows is not trained again, so an
interrupted audit resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .. import runs
from ..base import logs
from ..config import Config
from ..data import Splits
from ..task import MULTI

logger = logs.get(__name__)
HELDOUT = "heldout.npz"


def fold_indices(labels: np.ndarray, k: int, seed: int, multi: bool) -> list[np.ndarray]:
    """The held-out rows of each fold: stratified by class (single-label), shuffled (multi-label)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = KFold(k, shuffle=True, random_state=seed) if multi else StratifiedKFold(k, shuffle=True,
                                                                                        random_state=seed)
    y = np.zeros(len(labels)) if multi else labels
    return [np.sort(held) for _, held in splitter.split(np.zeros(len(labels)), y)]


def _read_heldout(path: Path, held: np.ndarray) -> Optional[np.ndarray]:
    """The saved probabilities of a finished fold, if it held out exactly these rows."""
    try:
        with np.load(path) as saved:
            if np.array_equal(saved["rows"], held):
                return saved["probs"]
    except (OSError, ValueError, KeyError):
        pass
    return None


def _fold_config(cfg: Config, folder: Path) -> Config:
    """The config of one fold's run: the report is left out (the audit writes its own page)."""
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(folder.parent),
                                                               run_name=folder.name, report=False))


def _fold_splits(splits: Splits, held: np.ndarray, validation) -> Splits:
    keep = np.setdiff1d(np.arange(len(splits.train)), held)
    return dataclasses.replace(splits, train=splits.train.select(keep), validation=validation, test=None, notes=[])


def _predict_heldout(run_dir: Path, ds) -> np.ndarray:
    from ..infer.engine import load_inference_model

    model = load_inference_model(run_dir, "cpu")
    pairs = ds["text_pair"] if "text_pair" in ds.column_names else None
    return model.predict(ds["text"], precision="fp32", pairs=pairs)


def train_fold(cfg: Config, splits: Splits, held: np.ndarray, folder: Path, own_validation: bool,
               quiet: bool) -> np.ndarray:
    """Train fold `folder` without the held rows and return their probabilities (saved beside the run)."""
    from ..training import train

    shutil.rmtree(folder, ignore_errors=True)  # an unfinished fold of an interrupted audit starts again
    heldout = splits.train.select(held)
    validation = splits.validation if own_validation else heldout
    train(_fold_config(cfg, folder), quiet=quiet, splits=_fold_splits(splits, held, validation), run_dir=folder)
    probs = _predict_heldout(folder, heldout)
    buf = io.BytesIO()
    np.savez(buf, rows=held, probs=probs)
    runs.atomic_write_bytes(folder / HELDOUT, buf.getvalue())
    return probs


def out_of_fold(cfg: Config, splits: Splits, labels: np.ndarray, k: int, folds_dir: Path, own_validation: bool,
                quiet: bool = False) -> tuple[np.ndarray, dict]:
    """Probabilities of every training row from the fold that did not train on it, and {trained, reused} folds."""
    multi = splits.problem_type == MULTI
    probs, done = None, {"trained": 0, "reused": 0}
    for i, held in enumerate(fold_indices(labels, k, cfg.train.seed, multi)):
        folder = folds_dir / f"fold-{i}"
        p = _read_heldout(folder / HELDOUT, held)
        if p is None:
            logger.info(f"audit: training fold {i + 1} of {k} ({len(labels) - len(held)} rows, {len(held)} held out)")
            p = train_fold(cfg, splits, held, folder, own_validation, quiet)
            done["trained"] += 1
        else:
            done["reused"] += 1
        probs = np.zeros((len(labels), p.shape[1]), dtype=np.float64) if probs is None else probs
        probs[held] = p
    return probs, done


def find_issues(labels: np.ndarray, probs: np.ndarray, id2label: dict[int, str], multi: bool) -> pd.DataFrame:
    """cleanlab's label issues, worst first (lowest label quality): row, given label, suggested label, the
    self-confidence (probability of the given label; multi-label: cleanlab's label-quality score) and the
    probability of the suggestion."""
    from cleanlab.filter import find_label_issues

    if multi:
        from cleanlab.multilabel_classification import get_label_quality_scores

        given = [list(np.flatnonzero(row)) for row in labels]
        flagged = find_label_issues(labels=given, pred_probs=probs, multi_label=True)
        quality = get_label_quality_scores(given, probs)
        suggested = [[id2label[j] for j in np.flatnonzero(p >= 0.5)] for p in probs]
        shown_given = ["|".join(id2label[j] for j in g) for g in given]
        shown_suggested = ["|".join(s) for s in suggested]
        suggestion_p = np.prod(np.maximum(probs, 1 - probs), axis=1)  # the suggested set, labels independent
    else:
        flagged = find_label_issues(labels=labels, pred_probs=probs)
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
