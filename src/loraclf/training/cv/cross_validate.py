"""`loraclf cv`: K-fold cross-validation of a config on its training rows.

Every check on the arguments and the data comes first (nothing is written when one fails). Then each fold trains
(run.py) into DIR/fold-1..K, a normal run folder each, with its validation split taken from its own training rows
(data.validation_split, grouped and stratified as the folds are) or, when the config names one, the config's
validation file; the held-out fold is never seen by its run. Then DIR/oof.csv (every training row's out-of-fold
prediction and probabilities), DIR/cv.json (per-fold metrics, their mean and std) and DIR/report.html are written,
each atomically. A killed cv resumes with the folds not yet finished; DIR/config.yaml ties DIR to its config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ... import data as data_mod
from ... import runs
from ...base import logs
from ...base.errors import ConfigError, DataError
from ...config import Config
from ...task import MULTI, REGRESSION, SCALARS
from . import folds as folds_mod
from .run import HELDOUT, Fold, Heldout, out_of_fold, read_heldout, run_folds

logger = logs.get(__name__)
FILES = ("cv.json", "oof.csv", "report.html")
CONFIG = "config.yaml"
ROWS = "rows.sha256"  # the training rows' fingerprint: a cv folder resumes only on the rows it started on


@dataclass
class CVResult:
    """What `cross_validate` returns: the folder, cv.json's contents and the out-of-fold table (oof.csv)."""
    output: Path
    summary: dict
    oof: pd.DataFrame = field(repr=False)

    @property
    def mean(self) -> dict:
        return self.summary["mean"]

    @property
    def std(self) -> dict:
        return self.summary["std"]


# ------------------------------------------------------------------------------------------ the data


def load(cfg: Config) -> tuple[data_mod.Splits, bool]:
    """The splits, with every row of the training file in train (no validation is split off it: the folds hold
    rows out instead), its groups (data.group_column) as a `group` column, and whether the config names a
    validation split of its own."""
    own = cfg.data.validation is not None or not cfg.data.train
    d = cfg.data if own else dataclasses.replace(cfg.data, validation=cfg.data.train)
    splits = data_mod.load_splits(d, problem_type=cfg.model.problem_type, groups=True)
    return (splits if own else dataclasses.replace(splits, validation=None)), own


def groups_of(splits: data_mod.Splits):
    return list(splits.train["group"]) if "group" in splits.train.column_names else None


def rows_key(splits: data_mod.Splits) -> str:
    """A fingerprint of the training rows in order (texts, pairs, encoded labels), to tie a cv run to its data."""
    h = hashlib.sha256()
    ds = splits.train
    pairs = ds["text_pair"] if "text_pair" in ds.column_names else [None] * len(ds)
    for t, p in zip(ds["text"], pairs):
        h.update(f"{t}\x1f{p}\x1e".encode("utf-8", "surrogatepass"))
    h.update(np.ascontiguousarray(data_mod.train_labels(splits), dtype=np.float64).tobytes())
    return h.hexdigest()


def fold_plan(cfg: Config, splits: data_mod.Splits, k: int, root: Path, name=lambda i: f"fold-{i}") -> list[Fold]:
    """The checked folds of the training rows (single-label folds need one row of every class each)."""
    y = data_mod.train_labels(splits)
    groups = groups_of(splits)
    folds_mod.check(y, splits.problem_type, k, splits.id2label, groups, cfg.data.group_column)
    held = folds_mod.assign(y, splits.problem_type, k, cfg.train.seed, groups)
    return [Fold(i + 1, h, root / name(i + 1)) for i, h in enumerate(held)]


def inner_validation(cfg: Config, splits: data_mod.Splits, fold: Fold):
    """A validation split of the fold's own training rows: data.validation_split of them, stratified (and grouped)
    as the folds are, drawn with data.split_seed."""
    rest = np.setdiff1d(np.arange(len(splits.train)), fold.held)
    y = data_mod.train_labels(splits)[rest]
    size = cfg.data.validation_split
    k = round(1 / size) if size < 1 else round(len(rest) / size)
    groups = groups_of(splits)
    if groups is not None:
        groups = [groups[i] for i in rest]
        k = min(k, len(set(groups)))
    k = max(2, min(k, len(rest)))
    held = folds_mod.assign(y, splits.problem_type, k, cfg.data.split_seed, groups)[0]
    return splits.train.select(rest[held])


# ------------------------------------------------------------------------------------------ the outputs


def _label_text(value, splits: data_mod.Splits) -> object:
    if splits.problem_type == REGRESSION:
        return float(value)
    if splits.problem_type == MULTI:
        return "|".join(splits.id2label[j] for j in np.flatnonzero(value))
    return int(value) if splits.int_labels else splits.id2label[int(value)]


def oof_table(splits: data_mod.Splits, plan: list[Fold], outputs: np.ndarray, preds: np.ndarray,
              group_column: str | None = None) -> pd.DataFrame:
    """One row per training row: its index, text (pair), group (under data.group_column's name), given label,
    fold, predicted label and probabilities."""
    ds, y = splits.train, data_mod.train_labels(splits)
    table = {"row": np.arange(len(ds)), "text": ds["text"]}
    if "text_pair" in ds.column_names:
        table["text_pair"] = ds["text_pair"]
    if "group" in ds.column_names:
        fixed = {"row", "text", "text_pair", "label", "fold", "predicted"}
        table[group_column if group_column and group_column not in fixed else "group"] = ds["group"]
    table["label"] = [_label_text(v, splits) for v in y]
    table["fold"] = folds_mod.fold_of([f.held for f in plan], len(ds))
    table["predicted"] = [_label_text(v, splits) for v in preds]
    if splits.problem_type != REGRESSION:
        for j in range(outputs.shape[1]):
            table[f"p_{splits.id2label[j]}"] = np.round(outputs[:, j], 6)
    return pd.DataFrame(table)


def _fold_test(fold: Fold, problem_type: str) -> dict | None:
    try:
        m = runs.read_json(fold.folder / "metrics.json").get("test")
    except Exception:  # a run without metrics.json is reported without test numbers, never fails the summary
        return None
    return {k: m.get(k) for k in SCALARS[problem_type]} if isinstance(m, dict) else None


def mean_std(per_fold: list[dict], keys) -> tuple[dict, dict]:
    """Mean and sample standard deviation (n - 1) over folds of each metric every fold has as a number."""
    mean, std = {}, {}
    for k in keys:
        xs = [f[k] for f in per_fold if isinstance(f.get(k), (int, float))]
        if len(xs) == len(per_fold) and xs:
            mean[k] = float(np.mean(xs))
            std[k] = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return mean, std


def summary(cfg: Config, splits: data_mod.Splits, plan: list[Fold], found: list[Heldout], done: dict,
            seconds: float, key: str) -> dict:
    pt, keys = splits.problem_type, SCALARS[splits.problem_type]
    per_fold = [{"fold": f.number, "folder": f.folder.name, "held_out_rows": len(f.held),
                 **{k: h.metrics.get(k) for k in keys}} for f, h in zip(plan, found)]
    mean, std = mean_std(per_fold, keys)
    out = {"problem_type": pt, "folds": len(plan), "rows": len(splits.train), "rows_sha256": key,
           "labels": [splits.id2label[i] for i in range(len(splits.id2label))], "seed": cfg.train.seed,
           "group_column": cfg.data.group_column, "validation": "config" if splits.validation is not None
           else f"data.validation_split={cfg.data.validation_split:g} of each fold's training rows",
           "per_fold": per_fold, "mean": mean, "std": std, "folds_trained": done["trained"],
           "folds_reused": done["reused"], "seconds": round(seconds, 1)}
    tests = [_fold_test(f, pt) for f in plan]
    if all(tests):
        out["test_per_fold"] = tests
        out["test_mean"], out["test_std"] = mean_std(tests, keys)
    return out


# ------------------------------------------------------------------------------------------ the verb


def _yaml(tree: dict) -> str:
    import yaml

    return yaml.safe_dump(tree, sort_keys=False)


def check_output(output: Path, cfg: Config, k: int) -> None:
    """--output: a new or empty folder, or the folder of an earlier cv of this same config (then it resumes)."""
    runs.check_output_dir(output, "--output")
    if not output.is_dir() or not any(output.iterdir()):
        return
    saved = output / CONFIG
    if not saved.is_file():
        raise ConfigError([f"--output {output} is not empty and holds no cv run ({CONFIG} is missing); give a new "
                           f"or empty folder"])
    if saved.read_text(encoding="utf-8") != _yaml(_tree(cfg, k)):
        raise ConfigError([f"--output {output} holds a cv run of another config or --folds (its {CONFIG} differs); "
                           f"give another --output, or the same config and --folds to resume it"])


def _tree(cfg: Config, k: int) -> dict:
    """What ties a cv folder to its run: the config without its output section, and the number of folds."""
    tree = cfg.to_dict()
    tree.pop("output", None)
    return {"cv": {"folds": k}, **tree}


def check_rows(output: Path, key: str) -> None:
    """A folder that began on other training rows (the file changed since) is not resumed: its folds are stale."""
    saved = output / ROWS
    if saved.is_file() and saved.read_text(encoding="utf-8").strip() != key:
        raise DataError(f"--output {output} holds a cv run of other training rows (the data changed since it "
                        f"started: {ROWS} differs); give a new --output")


def check_args(cfg: Config, output: Path, k: int) -> None:
    if cfg.data.streaming:
        raise ConfigError(["cv folds a training split read whole; set data.streaming=false"])
    if cfg.data.unlabeled:
        raise ConfigError(["cv trains each fold as one run; self-training (data.unlabeled) is not cross-validated: "
                           "unset data.unlabeled"])
    if k < 2:
        raise ConfigError([f"--folds must be at least 2, got {k}"])
    check_output(output, cfg, k)


def write_outputs(output: Path, cv: dict, oof: pd.DataFrame, title: str) -> None:
    from ...report import cv as cv_page

    buf = io.StringIO()
    oof.to_csv(buf, index=False)
    runs.atomic_write_text(output / "oof.csv", buf.getvalue())
    runs.write_json(output / "cv.json", cv)
    cv_page.write(cv, output / "report.html", title)


def run_cv(cfg: Config, output: str | Path, folds: int = 5, quiet: bool = False) -> CVResult:
    """Cross-validate cfg into output (see the module's docstring)."""
    output = Path(output)
    with logs.quiet(quiet):
        check_args(cfg, output, folds)
        splits, own = load(cfg)
        plan = fold_plan(cfg, splits, folds, output)
        key = rows_key(splits)
        check_rows(output, key)
        started = time.time()
        output.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_text(output / CONFIG, _yaml(_tree(cfg, folds)))
        runs.atomic_write_text(output / ROWS, key + "\n")
        y = data_mod.train_labels(splits)
        found, done = run_folds(cfg, splits, y, plan, lambda f: splits.validation if own
                                else inner_validation(cfg, splits, f), keep_test=splits.test is not None,
                                quiet=quiet, what="cv")
        outputs, preds = out_of_fold(found, len(y))
        oof = oof_table(splits, plan, outputs, preds, cfg.data.group_column)
        cv = summary(cfg, splits, plan, found, done, time.time() - started, key)
        write_outputs(output, cv, oof, f"loraclf cv: {cfg.data.train or cfg.data.name}, {folds} folds")
        main = SCALARS[splits.problem_type][0]
        if main in cv["mean"]:
            logger.info(f"cv: {main} {cv['mean'][main]:.4f} ± {cv['std'][main]:.4f} over {folds} folds -> {output}")
    return CVResult(output, cv, oof)


# ------------------------------------------------------------------------------------------ reading a cv run back


def read_oof(folder: str | Path, splits: data_mod.Splits, what: str = "--from-cv") -> tuple[np.ndarray, dict]:
    """The out-of-fold outputs of the cv run in folder and its cv.json, refused (one line) unless it is a finished
    cv run of these very training rows."""
    folder = Path(folder)
    if not (folder / "cv.json").is_file():
        raise DataError(f"{what} {folder} is not a cv run folder (it has no cv.json); give the --output folder of a "
                        f"finished `loraclf cv`")
    cv = runs.read_json(folder / "cv.json")
    n = len(splits.train)
    labels = [splits.id2label[i] for i in range(len(splits.id2label))]
    if cv.get("problem_type") != splits.problem_type or cv.get("labels") != labels:
        raise DataError(f"{what} {folder} is a cv run of another problem or label set ({cv.get('problem_type')}, "
                        f"{len(cv.get('labels') or [])} labels; here {splits.problem_type}, {len(labels)}); run cv "
                        f"on this config")
    if cv.get("rows") != n or cv.get("rows_sha256") != rows_key(splits):
        raise DataError(f"{what} {folder} was cross-validated on other training rows ({cv.get('rows')} rows there, "
                        f"{n} here, or the texts or labels differ); run cv on this config's data")
    found = [read_heldout(folder / f["folder"], _saved_rows(folder / f["folder"])) for f in cv["per_fold"]]
    covered = np.sort(np.concatenate([h.rows for h in found if h is not None])) if any(found) else np.zeros(0)
    if any(h is None for h in found) or not np.array_equal(covered, np.arange(n)):
        raise DataError(f"{what} {folder}: the folds' held-out predictions are missing or do not cover the {n} "
                        f"training rows once each; run cv again into that folder to finish it")
    return out_of_fold(found, n)[0], cv


def _saved_rows(folder: Path) -> np.ndarray:
    try:
        with np.load(folder / HELDOUT, allow_pickle=False) as saved:
            return saved["rows"]
    except (OSError, ValueError, KeyError):
        return np.zeros(0, dtype=np.int64)
