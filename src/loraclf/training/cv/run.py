"""Running the folds: each fold is a real `loraclf.training.train` run on the config, with the other folds' rows as
its training data, written to its own folder. After training it predicts its held-out rows and keeps them in
FOLDER/heldout.npz (row indices, outputs, the run's decided predictions, and the held-out metrics as JSON); a fold
whose file is there and holds the same rows is finished and is not trained again, so an interrupted k-fold run
resumes where it stopped. An unfinished fold's folder is removed and the fold trained again.

The k-fold loop of the code base: `loraclf cv` (cross_validate.py) and `loraclf audit`'s label issues use it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ... import runs
from ...base import logs
from ...config import Config
from ...data import Splits

logger = logs.get(__name__)
HELDOUT = "heldout.npz"


@dataclass
class Fold:
    number: int  # 1-based
    held: np.ndarray  # the held-out row indices of the training split, sorted
    folder: Path  # its run folder


@dataclass
class Heldout:
    """A finished fold's held-out rows: outputs (probabilities or values), decided predictions, metrics."""
    rows: np.ndarray
    outputs: np.ndarray
    predictions: np.ndarray
    metrics: dict


def read_heldout(folder: Path, held: np.ndarray) -> Optional[Heldout]:
    """The saved held-out predictions of a finished fold, if it held out exactly these rows."""
    try:
        with np.load(folder / HELDOUT, allow_pickle=False) as saved:
            if not np.array_equal(saved["rows"], held):
                return None
            return Heldout(saved["rows"], saved["probs"], saved["pred"], json.loads(str(saved["metrics"])))
    except (OSError, ValueError, KeyError):
        return None


def fold_config(cfg: Config, folder: Path) -> Config:
    """The config of one fold's run: its own folder (overwritten: an unfinished fold starts again), no report."""
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(folder.parent),
                                                               run_name=folder.name, report=False))


def without_groups(ds):
    return ds.remove_columns(["group"]) if ds is not None and "group" in ds.column_names else ds


def fold_splits(splits: Splits, train_rows: np.ndarray, validation, keep_test: bool) -> Splits:
    return dataclasses.replace(splits, train=without_groups(splits.train.select(train_rows)),
                               validation=without_groups(validation),
                               test=splits.test if keep_test else None, notes=[])


def predict_heldout(run_dir: Path, ds, labels: np.ndarray) -> Heldout:
    """Outputs, decided predictions and metrics of the fold's run on its held-out rows (fp32, on the CPU)."""
    from ...infer.engine import load_inference_model
    from ...infer.metrics import compute_metrics
    from ... import task as problem

    model = load_inference_model(run_dir, "cpu")
    pairs = ds["text_pair"] if "text_pair" in ds.column_names else None
    out = model.predict(ds["text"], precision="fp32", pairs=pairs)
    metrics = compute_metrics(labels, out, model.id2label, decision=model.decision)
    return Heldout(np.zeros(0, dtype=np.int64), out, problem.predictions(out, model.decision), metrics)


def _plain(o):
    """numpy scalars and arrays in the metrics as JSON numbers and lists."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


def save_heldout(folder: Path, h: Heldout) -> None:
    buf = io.BytesIO()
    np.savez(buf, rows=h.rows, probs=h.outputs, pred=h.predictions,
             metrics=np.array(json.dumps(h.metrics, default=_plain)))
    runs.atomic_write_bytes(folder / HELDOUT, buf.getvalue())


def train_fold(cfg: Config, splits: Splits, fold: Fold, labels: np.ndarray, validation, keep_test: bool,
               quiet: bool) -> Heldout:
    """Train `fold` without its held-out rows, then predict those and save them beside the run."""
    from .. import train

    shutil.rmtree(fold.folder, ignore_errors=True)  # an unfinished fold of an interrupted run starts again
    train_rows = np.setdiff1d(np.arange(len(splits.train)), fold.held)
    train(fold_config(cfg, fold.folder), quiet=quiet,
          splits=fold_splits(splits, train_rows, validation, keep_test), run_dir=fold.folder)
    h = predict_heldout(fold.folder, without_groups(splits.train.select(fold.held)), labels[fold.held])
    h.rows = fold.held
    save_heldout(fold.folder, h)
    return h


def run_folds(cfg: Config, splits: Splits, labels: np.ndarray, folds: list[Fold],
              validation_of: Callable[[Fold], object], keep_test: bool = False, quiet: bool = False,
              what: str = "cv") -> tuple[list[Heldout], dict]:
    """Every fold's held-out predictions (trained now, or read from a finished fold) and {trained, reused}.

    validation_of(fold): the validation split of that fold's run (a Dataset)."""
    done, found = {"trained": 0, "reused": 0}, []
    for fold in folds:
        h = read_heldout(fold.folder, fold.held)
        if h is None:
            logger.info(f"{what}: training fold {fold.number} of {len(folds)} ({len(labels) - len(fold.held)} rows, "
                        f"{len(fold.held)} held out) -> {fold.folder}")
            h = train_fold(cfg, splits, fold, labels, validation_of(fold), keep_test, quiet)
            done["trained"] += 1
        else:
            logger.info(f"{what}: fold {fold.number} of {len(folds)} is finished ({fold.folder / HELDOUT}); reused")
            done["reused"] += 1
        found.append(h)
    return found, done


def out_of_fold(found: list[Heldout], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every training row's output and decided prediction, from the fold that held it out."""
    first = found[0]
    outputs = np.zeros((n, *first.outputs.shape[1:]), dtype=np.float64)
    preds = np.zeros((n, *first.predictions.shape[1:]), dtype=first.predictions.dtype)
    for h in found:
        outputs[h.rows] = h.outputs
        preds[h.rows] = h.predictions
    return outputs, preds
