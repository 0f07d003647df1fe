"""Labels of the other problem types: label sets (multi-label) and numbers (regression), read and encoded.

A multi-label cell is a list (JSONL, Parquet), a JSON list in text ('["World", "Business"]'), or names joined by
data.label_delimiter; data.label_columns gives one 0/1 column per label instead. Encoded, a row is a multi-hot
float vector over id2label. A regression target is a finite number, encoded as a float.
"""

from __future__ import annotations

import json
import math
from typing import Optional

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..base.errors import DataError

DELIMITER_HINTS = ("|", ";", ",")


def _shown(values, n: int = 5) -> str:
    values = list(values)
    return ", ".join(repr(v) for v in values[:n]) + (", ..." if len(values) > n else "")


def _cell_set(v, delimiter: Optional[str], where: str) -> list[str]:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x).strip() for x in v if str(x).strip()]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    text = str(v).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise DataError(f"{where} has a label cell that starts like a JSON list but is not one: {text[:80]!r}; "
                            f"write it as [\"a\", \"b\"], or join names with data.label_delimiter") from None
        if not isinstance(parsed, list):
            raise DataError(f"{where} has a label cell {text[:80]!r} that is not a list")
        return [str(x).strip() for x in parsed if str(x).strip()]
    if delimiter:
        return [p.strip() for p in text.split(delimiter) if p.strip()]
    return [text] if text else []


def label_sets(values, cfg: DataConfig, where: str, start: int = 0) -> list[list[str]]:
    """Each row's label names (duplicates removed, order kept); `start` is the first value's row number."""
    return sets_of(values, cfg.label_delimiter, where, start)


def sets_of(values, delimiter: Optional[str], where: str, start: int = 0) -> list[list[str]]:
    """label_sets with only the setting it reads (a cached map's key follows what its function captures)."""
    sets = [list(dict.fromkeys(_cell_set(v, delimiter, where))) for v in values]
    if not delimiter:
        joined = next((n for s in sets for n in s if any(d in n for d in DELIMITER_HINTS)), None)
        if joined is not None:
            d = next(d for d in DELIMITER_HINTS if d in joined)
            raise DataError(f"{where} has label cells like {joined!r}, which look like several labels joined by "
                            f"{d!r}; set data.label_delimiter={d!r} (or give JSON lists)")
    return sets


def columns_to_sets(df: pd.DataFrame, columns: list[str], where: str) -> list[list[str]]:
    """data.label_columns: the names of the columns holding 1, per row; any value other than 0/1 is an error."""
    for c in columns:
        col = pd.to_numeric(df[c], errors="coerce")
        bad = df[c][~col.isin([0, 1])]
        if len(bad):
            found = [v.item() if isinstance(v, np.generic) else v for v in bad.unique()]
            raise DataError(f"{where}: data.label_columns column '{c}' must hold 0 or 1, found {_shown(found)} "
                            f"(first at row {int(bad.index[0])}); give one 0/1 column per label")
    flags = np.stack([pd.to_numeric(df[c]).to_numpy() == 1 for c in columns], axis=1)
    return [[columns[j] for j in np.flatnonzero(row)] for row in flags]


def multi_label_map(sets: list[list[str]], cfg: DataConfig) -> dict[int, str]:
    """id2label: data.label_columns in their order, else every name of the training sets, sorted."""
    names = list(cfg.label_columns) if cfg.label_columns else sorted({n for s in sets for n in s})
    if len(names) > cfg.max_labels:
        raise DataError(f"the label sets name {len(names):,} distinct labels, over data.max_labels={cfg.max_labels}; "
                        f"is data.label_delimiter right?")
    if len(names) < 2:
        raise DataError(f"the training label sets name {'only ' + repr(names[0]) if names else 'no label'}; "
                        f"multi-label classification needs at least two labels")
    return {i: n for i, n in enumerate(names)}


def encode_sets(sets: list[list[str]], id2label: dict[int, str], where: str, allow_empty: bool,
                start: int = 0) -> list[list[float]]:
    """Multi-hot vectors over id2label; an unknown name or (unless allowed) an empty set is a one-line error."""
    label2id = {n: i for i, n in id2label.items()}
    unknown = sorted({n for s in sets for n in s if n not in label2id})
    if unknown:
        raise DataError(f"{where} has label sets naming labels never seen in training: {_shown(unknown)}; known "
                        f"labels are {', '.join(id2label.values())}")
    empty = [i for i, s in enumerate(sets) if not s]
    if empty and not allow_empty:
        raise DataError(f"{where} has {len(empty)} rows with an empty label set (first at row {start + empty[0]}); give "
                        f"each row at least one label, or set data.allow_empty_labels=true if rows may have none")
    k = len(id2label)
    out = []
    for s in sets:
        row = [0.0] * k
        for n in s:
            row[label2id[n]] = 1.0
        out.append(row)
    return out


def numeric_targets(values, where: str, start: int = 0) -> np.ndarray:
    """Regression targets as floats; text, NaN or infinite values are a one-line error naming what was found.
    `start` is the first value's row number."""
    raw = pd.Series(list(values), dtype=object, index=pd.RangeIndex(start, start + len(values)))
    num = pd.to_numeric(raw, errors="coerce")
    text = raw[num.isna() & raw.notna() & raw.map(lambda v: not (isinstance(v, float) and math.isnan(v)))]
    if len(text):
        hint = ("; these look like classes: set model.problem_type=single_label_classification"
                if text.nunique() <= 50 else "")
        raise DataError(f"{where} has non-numeric regression targets: {_shown(text.unique())} (first at row "
                        f"{int(text.index[0])}){hint}")
    arr = num.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise DataError(f"{where} has {len(bad)} missing (NaN) or infinite regression targets (first at row "
                        f"{start + int(bad[0])}); fill or drop those rows")
    return arr


# ------------------------------------------------------------------------------------------ by problem type


def build_map(problem_type: str, raw, cfg: DataConfig, class_names: Optional[list[str]] = None) -> dict[int, str]:
    """id2label from the training split's raw labels: classes, labels of the sets, or the one regression output."""
    from .labels import build_label_map

    if problem_type == "multi_label_classification":
        return multi_label_map(label_sets(raw, cfg, "the training data"), cfg)
    if problem_type == "regression":
        numeric_targets(raw, "the training data")
        return {0: cfg.label_column}
    check_single(raw)
    return build_label_map(raw, cfg.label_names or class_names, cfg.max_labels)


def encode(problem_type: str, raw, id2label: dict[int, str], cfg: DataConfig, where: str, start: int = 0):
    """Raw labels as the model trains on them: class ids, multi-hot lists, or floats. `start` is the first raw
    label's row number, for the errors."""
    from .labels import encode_labels

    if problem_type == "multi_label_classification":
        return encode_sets(label_sets(raw, cfg, where, start), id2label, where, cfg.allow_empty_labels, start)
    if problem_type == "regression":
        return numeric_targets(raw, where, start)
    return encode_labels(raw, id2label, where)


# ------------------------------------------------------------------------------------------ memory-mapped splits
# Files of read.ARROW_MIN_MB or more stay memory-mapped Datasets: their labels are read and encoded a batch at a time.

ARROW_BATCH = 10_000


def _label_batches(ds):
    """(row number of the batch's first row, the batch's raw labels), through the whole `label` column."""
    for i, batch in enumerate(ds.select_columns(["label"]).iter(batch_size=ARROW_BATCH)):
        yield i * ARROW_BATCH, batch["label"]


def arrow_map(problem_type: str, ds, cfg: DataConfig) -> dict[int, str]:
    """build_map for a memory-mapped training split of label sets or regression targets, a batch at a time."""
    names: set[str] = set()
    for start, raw in _label_batches(ds):
        if problem_type == "multi_label_classification":
            names.update(n for s in label_sets(raw, cfg, "the training data", start) for n in s)
        else:
            numeric_targets(raw, "the training data", start)
    if problem_type == "regression":
        return {0: cfg.label_column}
    return multi_label_map([sorted(names)], cfg)


def encode_arrow(problem_type: str, ds, id2label: dict[int, str], cfg: DataConfig, where: str):
    """encode for a memory-mapped split: its raw `label` column replaced by class ids, multi-hot rows or floats, in a
    cached batched map (this also flattens any select)."""
    import datasets

    from .labels import encode_arrow as encode_classes

    if problem_type not in ("multi_label_classification", "regression"):
        return encode_classes(ds, id2label, where)
    multi, delimiter, allow_empty = problem_type == "multi_label_classification", cfg.label_delimiter, \
        cfg.allow_empty_labels

    def fn(batch, idx):
        start = idx[0] if len(idx) else 0
        if multi:
            return {"label": encode_sets(sets_of(batch["label"], delimiter, where, start), id2label, where,
                                         allow_empty, start)}
        return {"label": numeric_targets(batch["label"], where, start)}

    feats = ds.features.copy()
    feats["label"] = datasets.Sequence(datasets.Value("float64")) if multi else datasets.Value("float64")
    return ds.map(fn, batched=True, batch_size=ARROW_BATCH, with_indices=True, features=feats,
                  desc=f"Encoding labels of {where.rsplit('/', 1)[-1]}")


def check_single(raw) -> None:
    """Single-label data that holds label sets is refused with the setting that fits."""
    sample = list(raw[:1000]) if hasattr(raw, "__getitem__") else list(raw)[:1000]
    lists = [v for v in sample if isinstance(v, (list, tuple, np.ndarray))
             or (isinstance(v, str) and v.strip().startswith("[") and v.strip().endswith("]"))]
    if lists:
        raise DataError(f"the labels hold lists (e.g. {str(lists[0])[:60]}): label sets need "
                        f"model.problem_type=multi_label_classification")
