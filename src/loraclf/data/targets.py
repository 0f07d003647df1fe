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
import pyarrow as pa

from ..config import DataConfig
from ..base.errors import DataError

DELIMITER_HINTS = ("|", ";", ",")


def _shown(values, n: int = 5) -> str:
    values = list(values)
    return ", ".join(repr(v) for v in values[:n]) + (", ..." if len(values) > n else "")


def _what(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "null"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x)).lower()
    if isinstance(x, (int, float, np.number)):
        return f"the number {x}"
    if isinstance(x, (list, tuple, np.ndarray)):
        return "a nested list"
    return "an object" if isinstance(x, dict) else f"a {type(x).__name__}"


def _names(items, where: str, row: int, column: str) -> list[str]:
    """The label names of one list cell; anything but a string in it is an error (str() would make null the label
    'None', 3 the label '3' and a nested list a label of its own)."""
    items = list(items)
    odd = next((x for x in items if not isinstance(x, str)), _ALL_STRINGS)
    if odd is not _ALL_STRINGS:
        try:
            shown = json.dumps([x.tolist() if isinstance(x, np.ndarray) else x for x in items])[:80]
        except (TypeError, ValueError):
            shown = repr(items)[:80]
        raise DataError(f"{where} row {row}, column {column!r}: the label list {shown} holds {_what(odd)}; label "
                        f"lists hold label names as strings, e.g. [\"world\", \"sports\"]")
    return [x.strip() for x in items if x.strip()]


_ALL_STRINGS = object()


def _cell_set(v, delimiter: Optional[str], where: str, row: int, column: str) -> list[str]:
    if isinstance(v, (list, tuple, np.ndarray)):
        return _names(v, where, row, column)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    text = str(v).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise DataError(f"{where} row {row}, column {column!r}: a label cell that starts like a JSON list but is "
                            f"not one: {text[:80]!r}; write it as [\"a\", \"b\"], or join names with "
                            f"data.label_delimiter") from None
        if not isinstance(parsed, list):
            raise DataError(f"{where} row {row}, column {column!r}: the label cell {text[:80]!r} is not a list")
        return _names(parsed, where, row, column)
    if delimiter:
        return [p.strip() for p in text.split(delimiter) if p.strip()]
    return [text] if text else []


def label_sets(values, cfg: DataConfig, where: str, start: int = 0) -> list[list[str]]:
    """Each row's label names (duplicates removed, order kept); `start` is the first value's row number."""
    return sets_of(values, cfg.label_delimiter, where, start, cfg.label_column)


def sets_of(values, delimiter: Optional[str], where: str, start: int = 0, column: str = "label") -> list[list[str]]:
    """label_sets with only the settings it reads (a cached map's key follows what its function captures)."""
    sets = [list(dict.fromkeys(_cell_set(v, delimiter, where, start + i, column))) for i, v in enumerate(values)]
    if not delimiter:
        joined = next((n for s in sets for n in s if any(d in n for d in DELIMITER_HINTS)), None)
        if joined is not None:
            d = next(d for d in DELIMITER_HINTS if d in joined)
            raise DataError(f"{where} has label cells like {joined!r}, which look like several labels joined by "
                            f"{d!r}; set data.label_delimiter={d!r} (or give JSON lists)")
    return sets


class DelimiterUse:
    """Whether data.label_delimiter occurs in any delimited cell of the training labels, and the first cell that
    looks joined by another delimiter; read a batch at a time (see check)."""

    def __init__(self, delimiter: Optional[str]):
        self.delimiter, self.matched, self.example, self.hint = delimiter, False, None, None

    def read(self, values) -> None:
        if not self.delimiter or self.matched:
            return
        for v in values:
            if not isinstance(v, str) or v.strip().startswith("["):
                continue
            if self.delimiter in v:
                self.matched = True
                return
            if self.hint is None:
                self.hint = next((d for d in (*DELIMITER_HINTS, *self.delimiter) if d in v), None)
                self.example = v if self.hint else None

    def check(self, where: str, column: str) -> None:
        """A delimiter that splits no cell makes every row one label: refused when it is surely a mistake (the
        cells look joined by something else, or a multi-character delimiter that was meant to match)."""
        d = self.delimiter
        if not d or self.matched or (len(d) == 1 and self.hint is None):
            return
        fix = (f"its cells look joined by {self.hint!r} (e.g. {self.example[:60]!r}): set "
               f"data.label_delimiter={self.hint!r}" if self.hint else
               "set the delimiter the cells use, or leave data.label_delimiter unset if each row has one label")
        raise DataError(f"data.label_delimiter {d!r} occurs in no label cell of {where} (column {column!r}), so no "
                        f"row would have more than one label; {fix}")


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


FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32: a larger target becomes inf


def numeric_targets(values, where: str, start: int = 0, column: str = "label") -> np.ndarray:
    """Regression targets as floats; text, NaN, infinite values or values beyond float32 are a one-line error
    naming what was found. `start` is the first value's row number."""
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
    huge = np.flatnonzero(np.abs(arr) > FLOAT32_MAX)
    if len(huge):
        raise DataError(f"{where} row {start + int(huge[0])}, column {column!r}: regression target "
                        f"{arr[huge[0]]:g} is beyond float32's range (±{FLOAT32_MAX:.2g}), which the model computes "
                        f"in ({len(huge)} target{'s' if len(huge) > 1 else ''} in all); rescale the column, e.g. "
                        f"to other units or its logarithm")
    return arr


# ------------------------------------------------------------------------------------------ by problem type


def build_map(problem_type: str, raw, cfg: DataConfig, class_names: Optional[list[str]] = None,
              where: str = "the training data") -> dict[int, str]:
    """id2label from the training split's raw labels: classes, labels of the sets, or the one regression output."""
    from .labels import build_label_map

    if problem_type == "multi_label_classification":
        use = DelimiterUse(cfg.label_delimiter)
        use.read(raw)
        sets = label_sets(raw, cfg, where)
        use.check(where, cfg.label_column)
        return multi_label_map(sets, cfg)
    if problem_type == "regression":
        numeric_targets(raw, where, column=cfg.label_column)
        return {0: cfg.label_column}
    check_single(raw)
    return build_label_map(raw, cfg.label_names or class_names, cfg.max_labels, where, cfg.label_column)


def encode(problem_type: str, raw, id2label: dict[int, str], cfg: DataConfig, where: str, start: int = 0):
    """Raw labels as the model trains on them: class ids, multi-hot lists, or floats. `start` is the first raw
    label's row number, for the errors."""
    from .labels import encode_labels

    if problem_type == "multi_label_classification":
        return encode_sets(label_sets(raw, cfg, where, start), id2label, where, cfg.allow_empty_labels, start)
    if problem_type == "regression":
        return numeric_targets(raw, where, start, cfg.label_column)
    return encode_labels(raw, id2label, where)


# ------------------------------------------------------------------------------------------ memory-mapped splits
# Files of read.ARROW_MIN_MB or more stay memory-mapped Datasets: their labels are read and encoded a batch at a time.

ARROW_BATCH = 10_000


def _label_batches(ds):
    """(row number of the batch's first row, the batch's raw labels), through the whole `label` column."""
    for i, batch in enumerate(ds.select_columns(["label"]).iter(batch_size=ARROW_BATCH)):
        yield i * ARROW_BATCH, batch["label"]


def distinct_labels(ds, where: str, column: str) -> list:
    """The distinct raw labels of a memory-mapped single-label split. A column the JSON reader could not give one type
    (datasets' Json type: 1 beside "1" or "sports", or lists beside names) is refused as the pandas path refuses it."""
    from .read import column as column_of

    labels = column_of(ds, "label")
    if not isinstance(labels.type, pa.BaseExtensionType):  # a plain Arrow type: one type for the whole column
        return labels.unique().to_pylist()
    storage = (labels.combine_chunks() if hasattr(labels, "combine_chunks") else labels).storage.to_pylist()
    first = {}
    for i, v in enumerate(storage):  # each cell as JSON text: "\"world\"", "3", "[...]"
        first.setdefault({'"': "text", "[": "list", "{": "list"}.get((v or " ")[0], "integer"), (i, v))
    if "list" in first:
        check_single([json.loads(first["list"][1])])
    eg = ""
    if "text" in first and "integer" in first:
        (ir, iv), (sr, sv) = first["integer"], first["text"]
        eg = f" (e.g. {json.loads(iv)!r}, first at row {ir}, and {json.loads(sv)!r}, first at row {sr})"
    raise DataError(f"{where}: the label column {column!r} mixes integer labels and text labels{eg}; write every "
                    f"label the same way, all as text or all as integers")


def arrow_map(problem_type: str, ds, cfg: DataConfig, where: str = "the training data") -> dict[int, str]:
    """build_map for a memory-mapped training split of label sets or regression targets, a batch at a time."""
    names: set[str] = set()
    use = DelimiterUse(cfg.label_delimiter)
    for start, raw in _label_batches(ds):
        if problem_type == "multi_label_classification":
            use.read(raw)
            names.update(n for s in label_sets(raw, cfg, where, start) for n in s)
        else:
            numeric_targets(raw, where, start, cfg.label_column)
    if problem_type == "regression":
        return {0: cfg.label_column}
    use.check(where, cfg.label_column)
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
    column = cfg.label_column

    def fn(batch, idx):
        start = idx[0] if len(idx) else 0
        if multi:
            return {"label": encode_sets(sets_of(batch["label"], delimiter, where, start, column), id2label, where,
                                         allow_empty, start)}
        return {"label": numeric_targets(batch["label"], where, start, column)}

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
