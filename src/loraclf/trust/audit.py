"""`loraclf audit`: every check on the arguments and the data first (nothing is written when one fails), then the
duplicates, the summaries and the label issues, then DIR/issues.csv, duplicates.csv, summary.json and audit.html,
each written atomically (the folds under DIR/folds are kept, so an interrupted audit resumes)."""

from __future__ import annotations

import importlib.util
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .. import data as data_mod
from .. import runs
from ..base import logs
from ..base.errors import ConfigError, DataError
from ..config import Config
from ..task import MULTI, REGRESSION
from ..training import cv
from . import clean, duplicates, embed, labels, page, probs as probs_mod, summary as summary_mod

logger = logs.get(__name__)
FILES = ("issues.csv", "duplicates.csv", "summary.json", "audit.html")
FOLDS = "folds"


@dataclass
class AuditResult:
    """What `audit` returns: the folder, the summary (summary.json) and the two tables."""
    output: Path
    summary: dict
    issues: pd.DataFrame = field(repr=False)
    duplicates: pd.DataFrame = field(repr=False)


def check_args(cfg: Config, output: Path, folds: int, near_threshold: Optional[float],
               write_clean: Optional[Path], relabel: bool, from_cv: Optional[Path] = None,
               sources: tuple[str, ...] = probs_mod.DEFAULT_SOURCES, filter_by: str = labels.FILTER_BY) -> None:
    """The arguments' checks, before any data is read (sources: already parsed by probs.parse_sources)."""
    if importlib.util.find_spec("cleanlab") is None:
        raise ConfigError(["audit needs cleanlab: pip install 'loraclf[audit]'"])
    if cfg.model.problem_type == REGRESSION:
        raise ConfigError(["audit finds label issues of classes; model.problem_type=regression has none to find "
                           "(run it on a classification config)"])
    if cfg.data.streaming:
        raise ConfigError(["audit reads the whole training split; set data.streaming=false"])
    if folds < 2:
        raise ConfigError([f"--folds must be at least 2, got {folds}"])
    labels.check_filter(filter_by)
    if from_cv is not None and "folds" not in sources:
        raise ConfigError(["--from-cv gives the folds' probabilities, but --label-probs leaves out folds; add folds "
                           "or drop --from-cv"])
    if from_cv is not None and not from_cv.is_dir():
        raise DataError(f"--from-cv {from_cv} is not a folder; give the --output folder of a finished `loraclf cv`")
    if near_threshold is not None and not 0 < near_threshold <= 1:
        raise ConfigError([f"--near-threshold must be in (0, 1], got {near_threshold}"])
    if relabel and write_clean is None:
        raise ConfigError(["--relabel changes the labels of the file --write-clean writes; give --write-clean FILE"])
    if write_clean is not None:
        clean.check_target(cfg, write_clean, relabel)
    runs.check_output_dir(output, "--output")


def load(cfg: Config) -> tuple[data_mod.Splits, bool]:
    """The splits as k-fold training reads them (training.cv.load): every row of the training file in train, with
    its group, and whether the config names a validation split of its own."""
    return cv.load(cfg)


def check_folds(splits: data_mod.Splits, cfg: Config, folds: int) -> None:
    """The folds' checks (training.cv.folds.check): enough rows of every class, enough groups."""
    groups = cv.cross_validate.groups_of(splits)
    cv.check(data_mod.train_labels(splits), splits.problem_type, folds, splits.id2label, groups, cfg.data.group_column)


def _shown_labels(y: np.ndarray, id2label: dict[int, str], multi: bool) -> list[str]:
    if multi:
        return ["|".join(id2label[j] for j in np.flatnonzero(row)) for row in y]
    return [id2label[int(i)] for i in y]


def parts_of(splits: data_mod.Splits, multi: bool) -> dict[str, dict]:
    """split -> texts (a pair shown as 'text || pair'), normalised keys, printable labels, the raw datasets."""
    out = {}
    for name in ("train", "validation", "test"):
        ds = getattr(splits, name)
        if ds is None:
            continue
        texts = ds["text"]
        if "text_pair" in ds.column_names:
            texts = [f"{t}{data_mod.overlap.PAIR_MARK}{p}" for t, p in zip(texts, ds["text_pair"])]
        out[name] = {"ds": ds, "texts": texts, "keys": data_mod.row_keys(ds),
                     "labels": _shown_labels(data_mod.splits.label_array(ds), splits.id2label, multi)}
    return out


def add_embeddings(cfg: Config, parts: dict[str, dict], names: tuple[str, ...] = ("train", "validation", "test")
                   ) -> None:
    """Each named split's mean-pooled embeddings (part["embeddings"]), from the config's base encoder."""
    encoder, tokenizer = embed.load_encoder(cfg)
    for name, part in parts.items():
        if name not in names or part.get("embeddings") is not None:
            continue
        ds = part["ds"]
        pairs = ds["text_pair"] if "text_pair" in ds.column_names else None
        part["embeddings"] = embed.embed(encoder, tokenizer, ds["text"], pairs, cfg.data.max_length)


def _fold_probs(cfg: Config, splits: data_mod.Splits, y: np.ndarray, own_validation: bool, folds: int,
                output: Path, quiet: bool, from_cv) -> tuple[np.ndarray, int, dict]:
    """The fine-tuned folds' out-of-fold probabilities (trained here, or from a finished cv run), the number of
    folds, and what the folds did."""
    if from_cv is None:
        probs, done = labels.out_of_fold(cfg, splits, y, folds, output / FOLDS, own_validation, quiet)
        return probs, folds, {f"folds_{k}": v for k, v in done.items()}
    probs, cv_json, folder = from_cv
    return probs, cv_json["folds"], {"from_cv": str(folder)}


def _linear_probs(cfg: Config, splits: data_mod.Splits, y: np.ndarray, folds: int, train: dict,
                  sources: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The embeddings and tfidf sources, on the folds the fine-tuned ones use (same assignment, same seed)."""
    multi = splits.problem_type == MULTI
    held = cv.assign(y, splits.problem_type, folds, cfg.train.seed, cv.cross_validate.groups_of(splits))
    width = y.shape[1] if multi else len(splits.id2label)
    found = {}
    if "embeddings" in sources:
        found["embeddings"] = probs_mod.embedding_oof(train["embeddings"], y, held, multi, width)
    if "tfidf" in sources:
        tfidf = probs_mod.tfidf_oof(train["texts"], y, held, multi, width)
        if tfidf is None:
            logger.warning("audit: TF-IDF found no words in the training texts; label issues without it")
        else:
            found["tfidf"] = tfidf
    return found


def label_issues(cfg: Config, splits: data_mod.Splits, own_validation: bool, folds: int, output: Path,
                 train: dict, quiet: bool, from_cv: Optional[tuple[np.ndarray, dict, Path]] = None,
                 sources: tuple[str, ...] = probs_mod.DEFAULT_SOURCES, filter_by: str = labels.FILTER_BY
                 ) -> tuple[pd.DataFrame, dict]:
    """cleanlab's issues on the mean of the sources' out-of-fold probabilities (probs.py; the folds' trained here
    or from_cv: (probabilities, cv.json, folder) of a finished cv run), with each row's text, and what was done."""
    multi = splits.problem_type == MULTI
    y = data_mod.train_labels(splits)
    found, done = {}, {}
    if "folds" in sources:
        found["folds"], folds, done = _fold_probs(cfg, splits, y, own_validation, folds, output, quiet, from_cv)
    found.update(_linear_probs(cfg, splits, y, folds, train, sources))
    probs, info = probs_mod.combine(found, y, multi)
    issues = labels.find_issues(y, probs, splits.id2label, multi, filter_by)
    issues["text"] = [train["texts"][i] for i in issues["row"]]
    return issues, {"rows": len(y), "folds": folds, "flagged": len(issues), "filter_by": filter_by,
                    "probabilities": info, **done}


def _label_value(name: str, splits: data_mod.Splits):
    """A suggested label as the file writes it: the class id when its labels are integers, else the name."""
    if splits.int_labels:
        return next(i for i, n in splits.id2label.items() if n == name)
    return name


def clean_file(cfg: Config, path: Path, splits: data_mod.Splits, issues: pd.DataFrame, dups: pd.DataFrame,
               relabel: bool) -> dict:
    """Drop the training rows that repeat an earlier training row or a validation/test row, and the label issues
    (or, with relabel, give those their suggested label)."""
    within = dups.loc[dups["split"] == "train", "row"]
    leaked = dups.loc[(dups["split"] != "train") & (dups["duplicate_of_split"] == "train"), "duplicate_of_row"]
    drop = {int(i) for i in within} | {int(i) for i in leaked}
    fixes = {}
    if relabel:
        fixes = {int(r): _label_value(s, splits) for r, s in zip(issues["row"], issues["suggested_label"])
                 if int(r) not in drop}
    else:
        drop |= {int(i) for i in issues["row"]}
    return clean.write_clean(cfg, path, len(splits.train), drop, fixes)


def write_outputs(output: Path, summary: dict, issues: pd.DataFrame, dups: pd.DataFrame, title: str) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for name, df in (("issues.csv", issues), ("duplicates.csv", dups)):
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        runs.atomic_write_text(output / name, buf.getvalue())
    runs.write_json(output / "summary.json", summary)
    page.write(summary, issues, dups, output / "audit.html", title)


def run_audit(cfg: Config, output: str | Path, folds: int = 5, near_threshold: Optional[float] = 0.95,
              write_clean: Optional[str | Path] = None, relabel: bool = False, quiet: bool = False,
              from_cv: Optional[str | Path] = None, label_probs: str | tuple[str, ...] = probs_mod.DEFAULT_SOURCES,
              filter_by: str = labels.FILTER_BY) -> AuditResult:
    """Audit cfg's data into output (see the module's docstring); near_threshold None: exact duplicates only;
    from_cv: take the folds' out-of-fold probabilities from that finished `loraclf cv` folder instead of training
    folds; label_probs: the probability sources averaged for the label issues (probs.SOURCES); filter_by: cleanlab's
    filter (labels.FILTERS)."""
    output, target = Path(output), Path(write_clean) if write_clean is not None else None
    from_cv = Path(from_cv) if from_cv is not None else None
    with logs.quiet(quiet):
        sources = probs_mod.parse_sources(label_probs)
        check_args(cfg, output, folds, near_threshold, target, relabel, from_cv, sources, filter_by)
        splits, own_validation = load(cfg)
        multi = splits.problem_type == MULTI
        if from_cv is None:
            check_folds(splits, cfg, folds)
        else:
            from_cv = (*cv.read_oof(from_cv, splits), from_cv)
        started = time.time()
        parts = parts_of(splits, multi)
        if near_threshold is not None:
            add_embeddings(cfg, parts)
        dups = duplicates.find_duplicates(parts, near_threshold)
        dup_seconds = round(time.time() - started, 2)
        if "embeddings" in sources:
            add_embeddings(cfg, parts, ("train",))
        issues, li = label_issues(cfg, splits, own_validation, folds, output, parts["train"], quiet, from_cv,
                                  sources, filter_by)
        summary = {"problem_type": splits.problem_type, "near_threshold": near_threshold,
                   "splits": summary_mod.summarise(parts, multi), "duplicates": duplicates.counts(dups),
                   "duplicates_seconds": dup_seconds, "label_issues": li}
        if target is not None:
            summary["clean_file"] = clean_file(cfg, target, splits, issues, dups, relabel)
        write_outputs(output, summary, issues, dups, f"loraclf audit: {cfg.data.train or cfg.data.name}")
        logger.info(f"audit: {li['flagged']} label issues, {len(dups)} duplicate rows -> {output}")
    return AuditResult(output, summary, issues, dups)
