"""The label map (id2label) built from the training labels, and labels encoded as class ids through it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..base.errors import DataError


def normalise_label(v):
    """A raw label as the label map knows it: integral numbers as int, anything else as a stripped string."""
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    return str(v).strip()


def is_fraction(v) -> bool:
    """A number with a fractional part (0.5, 3.25): a regression target, not a class."""
    return (isinstance(v, (float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
            and not float(v).is_integer())


def check_not_fractional(labels) -> None:
    """Refuse labels like 0, 0.5, 1, ..., 3.5, which would otherwise become string classes ('0.5')."""
    arr = np.asarray(labels) if not isinstance(labels, list) else None
    if arr is not None and arr.dtype.kind == "f":  # a float column (CSV labels with NaNs, JSON 1.0): vectorised
        fractions = sorted(set(arr[np.isfinite(arr) & (arr != np.floor(arr))].tolist()))
    else:
        fractions = sorted({float(v) for v in labels if is_fraction(v)})
    if fractions:
        shown = ", ".join(f"{v:g}" for v in fractions[:5]) + (", ..." if len(fractions) > 5 else "")
        raise DataError(f"the labels hold {len(fractions)} distinct non-integer numeric label"
                        f"{'s' if len(fractions) > 1 else ''} ({shown}): they look like regression targets; set "
                        f"model.problem_type=regression, or give integer or string labels for classes")


def build_label_map(labels, label_names: Optional[list[str]], max_labels: int, where: str = "the training data",
                    column: str = "label") -> dict[int, str]:
    """id2label from the training labels: ints keep their values, strings are sorted."""
    check_not_fractional(labels)
    check_one_kind(labels, where, column)
    values = sorted({normalise_label(v) for v in labels}, key=lambda v: (isinstance(v, str), v))
    if len(values) > max_labels:
        raise DataError(f"the label column has {len(values):,} distinct values, over data.max_labels={max_labels}; is it the right column?")
    if len(values) < 2:
        raise DataError(
            f"the training data has only one class ({values[0]!r}); a classifier needs at least two"
            if values else "the training data has no labels"
        )
    if all(isinstance(v, int) for v in values):
        if values[0] < 0:
            raise DataError(f"integer labels must be >= 0, found {values[0]}; number the classes 0..K-1 or use label names")
        k = max(values) + 1
        if k > max_labels:
            raise DataError(f"integer labels reach {max(values)}, over data.max_labels={max_labels}")
        if label_names:
            if len(label_names) < k:
                raise DataError(f"data.label_names has {len(label_names)} names but labels go up to {k - 1}; "
                                f"give one name per label 0..{k - 1}")
            return {i: str(label_names[i]) for i in range(k)}
        return {i: str(i) for i in range(k)}
    if label_names:
        raise DataError("data.label_names is only for integer labels; these labels are already names")
    return {i: str(v) for i, v in enumerate(values)}


def check_one_kind(labels, where: str, column: str) -> None:
    """Integer and text labels in one column (JSON and Parquet keep the types) are refused: 1 and '1' would become
    two classes with one name, and 3 beside 'sports' is a class id beside a class name."""
    first: dict[type, tuple[int, object]] = {}
    for i, v in enumerate(labels):
        kind = type(normalise_label(v))
        if kind not in first:
            first[kind] = (i, v)
            if len(first) == 2:
                (ir, iv), (sr, sv) = first[int], first[str]
                raise DataError(f"{where}: the label column {column!r} mixes integer labels (e.g. "
                                f"{normalise_label(iv)!r}, first at row {ir}) and text labels (e.g. "
                                f"{normalise_label(sv)!r}, first at row {sr}); write every label the same way, all "
                                f"as text or all as integers")


def encode_labels(labels, id2label: dict[int, str], where: str, streamed: bool = False) -> np.ndarray:
    """Class ids of raw labels; a label outside id2label is a one-line error naming up to five of them."""
    label2id = {name: i for i, name in id2label.items()}
    ints = {i for i in id2label}
    out = np.empty(len(labels), dtype=np.int64)
    unseen = set()
    for j, v in enumerate(labels):
        v = normalise_label(v)
        if str(v) in label2id:
            out[j] = label2id[str(v)]
        elif isinstance(v, int) and v in ints:  # integer labels named by data.label_names
            out[j] = v
        else:
            unseen.add(v)
    if unseen and streamed:
        shown = ", ".join(repr(u) for u in sorted(unseen, key=str)[:5])
        raise DataError(
            f"{where} has rows with labels outside the label set read before training: {shown}; known labels are "
            f"{', '.join(id2label.values())} (a stream's label set comes from the validation data, data.label_names "
            f"or the dataset's ClassLabel: add that class to one of them, or drop those rows)"
        )
    if unseen:
        shown = ", ".join(repr(u) for u in sorted(unseen, key=str)[:5])
        raise DataError(
            f"{where} has labels never seen in training: {shown}; known labels are "
            f"{', '.join(id2label.values())} (add examples of them to the training data, or drop those rows)"
        )
    return out


def encode_arrow(ds, id2label: dict[int, str], where: str):
    """Replace a Dataset's raw label column by class ids, in a cached batched map (this also flattens any select)."""
    import datasets

    def fn(batch):
        return {"label": encode_labels(pd.Series(batch["label"], dtype=object), id2label, where)}

    feats = ds.features.copy()  # text, and text_pair for pairs
    feats["label"] = datasets.Value("int64")
    return ds.map(fn, batched=True, batch_size=10_000, features=feats, desc=f"Encoding labels of {Path(where).name}")
