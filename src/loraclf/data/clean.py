"""The one cleaning path: text column(s) selected and joined, rows with an empty or NaN text/label dropped with a
count or refused (data.empty_text), long texts cut to data.max_text_chars.

clean_batch holds the rules for a batch of raw rows; DataFrames (clean_frame), memory-mapped Datasets (clean_arrow)
and the training stream (stream.train_stream) all go through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..base import logs
from ..config import DataConfig
from ..base.errors import DataError, did_you_mean
from .read import column, read_table

logger = logs.get(__name__)

ID_COLUMNS = ("ID", "Id", "id")


def text_columns(cfg: DataConfig) -> list[str]:
    return [cfg.text_column] if isinstance(cfg.text_column, str) else list(cfg.text_column)


def pair_columns(cfg: DataConfig) -> list[str]:
    """The column(s) of a sentence pair's second text (data.text_pair_column); [] for single texts."""
    tp = cfg.text_pair_column
    return [] if tp is None else [tp] if isinstance(tp, str) else list(tp)


def label_source(cfg: DataConfig) -> list[str]:
    """The column(s) the labels are read from: data.label_columns, else data.label_column."""
    return list(cfg.label_columns) if cfg.label_columns else [cfg.label_column]


def drops_empty_labels(cfg: DataConfig, problem_type: str) -> bool:
    """Single-label rows with no label are dropped with a count; an empty label set (multi-label) or a missing
    target (regression) is the encoder's error instead."""
    return problem_type == "single_label_classification"


def is_missing(v) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):  # lists/arrays in a cell are not "missing"
        return False


def check_columns(columns, cfg: DataConfig, where: str, need_label: bool, text_key: str = "data.text_column") -> None:
    """The missing-text-column, missing-label-column and (labelled files) missing-ID-column errors, in that order."""
    columns = [str(c) for c in columns]
    missing = [c for c in text_columns(cfg) if c not in columns]
    if missing:
        raise DataError(f"{where} has no text column '{missing[0]}'{did_you_mean(missing[0], columns)}; columns are: "
                        f"{', '.join(columns)} (set {text_key})")
    missing = [c for c in pair_columns(cfg) if c not in columns]
    if missing:
        raise DataError(f"{where} has no text-pair column '{missing[0]}'{did_you_mean(missing[0], columns)}; columns "
                        f"are: {', '.join(columns)} (set data.text_pair_column)")
    key = "data.label_columns" if cfg.label_columns else "data.label_column"
    missing = [c for c in label_source(cfg) if c not in columns] if need_label else []
    if missing:
        raise DataError(f"{where} has no label column '{missing[0]}'{did_you_mean(missing[0], columns)}; "
                        f"columns are: {', '.join(columns)} (set {key})")
    if need_label and cfg.id_column and cfg.id_column not in columns:
        raise DataError(f"{where} has no ID column '{cfg.id_column}'{did_you_mean(cfg.id_column, columns)}; columns "
                        f"are: {', '.join(columns)} (set data.id_column to one of them, or leave it unset to use an "
                        f"ID/id column where there is one)")


def join_text(parts: list[list]) -> list[Optional[str]]:
    """Row by row, the non-blank values of the text columns joined by a space; None where nothing is left."""
    # element-wise on Python objects: pandas' string dtypes turn None back into NaN (and NaN into "nan")
    parts = [[None if is_missing(v) else str(v) for v in values] for values in parts]
    joined = [" ".join(x for x in row if x and x.strip()) for row in zip(*parts)]
    return [t.strip() or None for t in joined]


def select_text(df: pd.DataFrame, cfg: DataConfig, where: str) -> pd.Series:
    """The text column(s) joined by a space; None where every part is missing."""
    check_columns(df.columns, cfg, where, need_label=False)
    check_text_cells({c: df[c].tolist() for c in text_columns(cfg)}, where)
    return pd.Series(join_text([df[c].tolist() for c in text_columns(cfg)]), index=df.index, dtype=object)


def not_text(values) -> Optional[tuple[int, str]]:
    """(position, description) of the first cell that is a list or an object rather than one text, else None.
    str() would make a text of it ("[]", "['a', 'b']"); the CSV form of an empty list, '[]', counts too."""
    for i, v in enumerate(values):
        if isinstance(v, (list, tuple, np.ndarray)):
            items = list(v)
            return i, f"a list ({str(items)[:60]})" if items else "an empty list"
        if isinstance(v, dict):
            return i, f"an object ({str(v)[:60]})"
        if isinstance(v, str) and v.strip() == "[]":
            return i, "an empty list ('[]')"
    return None


def check_text_cells(columns: dict, where: str, start: Optional[int] = 0) -> None:
    """Refuse a text or text-pair cell that is not one text (column name -> values; start: the first row's number,
    None when unknown, as in a stream)."""
    for name, values in columns.items():
        found = not_text(values)
        if found:
            at = f" row {start + found[0]}," if start is not None else ""
            raise DataError(f"{where}{at} column {name!r} holds {found[1]}, not a text; give each text cell one "
                            f"string")


def clean_batch(batch, text_cols: list[str], label_col: Optional[str], max_chars: int,
                pair_cols: tuple = (), where: str = "the data", start: Optional[int] = 0) -> dict:
    """The rules for one batch of raw rows (column -> values).

    Returns `text` (joined and cut to max_chars; None when empty), with pair_cols `text_pair` the same way, `keep`
    (False where a text or, with label_col, the label is empty or NaN) and `cut` (True where a text was cut). A cell
    that is a list is an error naming `where` and its row (start: the batch's first row). Only plain arguments, no
    config: a cached map's key follows what its function captures.
    """
    check_text_cells({c: batch[c] for c in (*text_cols, *pair_cols)}, where, start)
    text = join_text([list(batch[c]) for c in text_cols])
    keep = np.array([t is not None for t in text], dtype=bool)
    cut = np.array([t is not None and len(t) > max_chars for t in text], dtype=bool)
    out = {"text": [t if t is None else t[:max_chars] for t in text]}
    if pair_cols:
        pair = join_text([list(batch[c]) for c in pair_cols])
        keep &= np.array([t is not None for t in pair], dtype=bool)
        cut |= np.array([t is not None and len(t) > max_chars for t in pair], dtype=bool)
        out["text_pair"] = [t if t is None else t[:max_chars] for t in pair]
    if label_col is not None:
        lab = pd.Series(list(batch[label_col]), dtype=object)
        keep &= ~(lab.isna() | lab.map(lambda v: isinstance(v, str) and not v.strip())).to_numpy(dtype=bool)
    return {**out, "keep": keep, "cut": cut}


def account(keep: np.ndarray, cut: np.ndarray, cfg: DataConfig, where: str, say) -> None:
    """Refuse or count the rows clean_batch would not keep (data.empty_text), then count the texts it cut."""
    n_empty = int((~keep).sum())
    if n_empty:
        if cfg.empty_text == "error":
            raise DataError(f"{where} has {n_empty} empty or NaN texts/labels (first at row {int(np.flatnonzero(~keep)[0])}); "
                            f"set data.empty_text=drop to skip them")
        say(f"{where}: dropped {n_empty} rows with empty or NaN text/label")
    if not keep.any():
        raise DataError(f"{where} has no usable rows (all texts empty)")
    n_cut = int(cut[keep].sum())
    if n_cut:
        say(f"{where}: cut {n_cut} texts to data.max_text_chars={cfg.max_text_chars} characters")


def group_cells(values) -> list[Optional[str]]:
    """data.group_column's cells as texts (None where missing), so that 3 and '3' are one group."""
    return [None if is_missing(v) else str(v) for v in values]


def clean_frame(df: pd.DataFrame, cfg: DataConfig, where: str, need_label: bool = True, log=None,
                problem_type: str = "single_label_classification", group: bool = False) -> pd.DataFrame:
    """A DataFrame's usable rows as columns `text` (`text_pair` for pairs) and, with need_label, the raw `label`
    (with data.label_columns: the list of names whose column holds 1); with group, data.group_column as `group`."""
    from .targets import columns_to_sets

    check_columns(df.columns, cfg, where, need_label)
    label_col = cfg.label_column if need_label and drops_empty_labels(cfg, problem_type) else None
    cols = list(dict.fromkeys(text_columns(cfg) + pair_columns(cfg) + ([label_col] if label_col else [])))
    b = clean_batch({c: df[c].tolist() for c in cols}, text_columns(cfg), label_col, cfg.max_text_chars,
                    tuple(pair_columns(cfg)), where)
    account(b["keep"], b["cut"], cfg, where, logs.sink(log, logger))
    out = pd.DataFrame({"text": pd.Series(b["text"], dtype=object)})
    if "text_pair" in b:
        out["text_pair"] = pd.Series(b["text_pair"], dtype=object)
    if need_label and cfg.label_columns:
        out["label"] = pd.Series(columns_to_sets(df.reset_index(drop=True), cfg.label_columns, where), dtype=object)
    elif need_label:
        out["label"] = df[cfg.label_column].values
    if group:
        out["group"] = pd.Series(group_cells(df[cfg.group_column].tolist()), dtype=object)
    return out[b["keep"]].reset_index(drop=True)


def clean_arrow(ds, cfg: DataConfig, where: str, need_label: bool = True, log=None,
                problem_type: str = "single_label_classification", group: bool = False):
    """clean_frame for a memory-mapped Dataset, in a cached batched map: the same rules, the same raw `label` (with
    data.label_columns: the list of names whose column holds 1), the same errors with the file's row numbers."""
    import datasets

    from .targets import columns_to_sets

    check_columns(ds.column_names, cfg, where, need_label)
    cols, pairs, max_chars = text_columns(cfg), tuple(pair_columns(cfg)), cfg.max_text_chars
    set_cols = list(cfg.label_columns or ()) if need_label else []
    label_col = cfg.label_column if need_label and not set_cols else None
    drop_col = label_col if label_col is not None and drops_empty_labels(cfg, problem_type) else None
    group_col = cfg.group_column if group else None

    def fn(batch, idx):
        b = clean_batch(batch, cols, drop_col, max_chars, pairs, where, idx[0] if len(idx) else 0)
        out = {k: b[k] for k in ("text", "text_pair") if k in b}
        out["_cut"] = b["cut"]
        if set_cols:  # row numbers in its errors count from the file's first row, as clean_frame's do
            out["label"] = columns_to_sets(pd.DataFrame({c: batch[c] for c in set_cols}, index=idx), set_cols, where)
        elif label_col is not None:
            out["label"] = batch[label_col]
        if group_col is not None:
            out["group"] = group_cells(batch[group_col])
        out["_keep"] = b["keep"]
        return out

    feats = {"text": datasets.Value("string")}
    if pairs:
        feats["text_pair"] = datasets.Value("string")
    feats["_cut"] = datasets.Value("bool")
    if set_cols:
        feats["label"] = datasets.Sequence(datasets.Value("string"))
    elif label_col is not None:
        feats["label"] = ds.features[label_col]
    if group_col is not None:
        feats["group"] = datasets.Value("string")
    feats["_keep"] = datasets.Value("bool")
    ds = ds.map(fn, batched=True, batch_size=10_000, with_indices=True, remove_columns=ds.column_names,
                features=datasets.Features(feats), desc=f"Cleaning {Path(where).name}")
    keep = np.asarray(column(ds, "_keep").to_numpy(zero_copy_only=False), dtype=bool)
    cut = np.asarray(column(ds, "_cut").to_numpy(zero_copy_only=False), dtype=bool)
    account(keep, cut, cfg, where, logs.sink(log, logger))
    if not keep.all():
        ds = ds.select(np.flatnonzero(keep))
    return ds.remove_columns(["_cut", "_keep"])


def read_texts(path: str | Path, cfg: DataConfig, allow_pickle: Optional[bool] = None,
               named: bool = False) -> tuple[list[str], Optional[list], pd.DataFrame]:
    """Texts (and IDs when present) of an input file for predict/evaluate; empty texts are kept as ''.

    A run's text column missing from the file falls back to its only column, or to `text`; named (the caller named
    the column, e.g. --text-column) makes a missing one an error instead.
    """
    df = read_table(path, cfg.allow_pickle if allow_pickle is None else allow_pickle, cfg.max_file_mb)
    named = named and Path(path).suffix.lower() != ".txt"  # a .txt file has no header to name a column in
    if named:
        check_columns(df.columns, cfg, str(path), need_label=False, text_key="--text-column")
    if named or not isinstance(cfg.text_column, str) or cfg.text_column in df.columns:
        text = select_text(df, cfg, str(path))
    elif len(df.columns) == 1:
        text = select_text(df.rename(columns={df.columns[0]: cfg.text_column}), cfg, str(path))
    elif "text" in df.columns:
        text = select_text(df.rename(columns={"text": cfg.text_column}), cfg, str(path))
    else:
        text = select_text(df, cfg, str(path))
    texts = [("" if t is None else t[: cfg.max_text_chars]) for t in text]
    id_col = cfg.id_column or next((c for c in ID_COLUMNS if c in df.columns), None)
    if cfg.id_column and cfg.id_column not in df.columns:
        raise DataError(f"{path} has no ID column '{cfg.id_column}'; columns are: {', '.join(df.columns)}")
    ids = df[id_col].tolist() if id_col else None
    if ids is None and Path(path).suffix.lower() == ".txt":
        # read_table skips blank lines; the IDs stay the (0-based) line numbers, so an ID always points at its line
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        ids = [i for i, line in enumerate(lines) if line.strip()]
    return texts, ids, df
