"""Rows of validation or test that repeat a training row, once texts are normalised (case, whitespace and
punctuation): the cheap leak check `loraclf train` runs on every start. `loraclf audit` finds near-duplicates too."""

from __future__ import annotations

import re
from typing import Iterable, Optional

from ..base import logs
from .read import column

logger = logs.get(__name__)
_NOT_WORD = re.compile(r"[^\w\s]|_")
PAIR_MARK = " || "  # joins a pair's two texts, so ("a b", "c") and ("a", "b c") stay apart


def normalise(text: str) -> str:
    """Lower case, punctuation gone, runs of whitespace as one space."""
    return " ".join(_NOT_WORD.sub(" ", text.lower()).split())


def row_keys(ds) -> list[str]:
    """The normalised text of each row of a split (a pair: both texts)."""
    texts = column(ds, "text").to_pylist()
    if "text_pair" not in ds.column_names:
        return [normalise(t or "") for t in texts]
    pairs = column(ds, "text_pair").to_pylist()
    return [normalise(t or "") + PAIR_MARK + normalise(p or "") for t, p in zip(texts, pairs)]


def count_in(keys: Iterable[str], seen: set[str]) -> int:
    return sum(k in seen for k in keys)


def warn_overlap(splits, log=None) -> dict[str, int]:
    """Count the validation and test rows whose normalised text is also a training row's, and say so in one warning
    line when there are any. Returns {split: count}; a streamed training split is not read (empty result)."""
    if not hasattr(splits.train, "column_names") or not hasattr(splits.train, "__len__"):
        return {}
    seen = set(row_keys(splits.train))
    counts = {name: count_in(row_keys(ds), seen) for name, ds in (("validation", splits.validation),
                                                                   ("test", splits.test)) if ds is not None}
    found = {k: v for k, v in counts.items() if v}
    if found:
        parts = ", ".join(f"{v} of {len(getattr(splits, k))} {k} rows" for k, v in found.items())
        (log or logger.warning)(f"warning: {parts} repeat training rows (exact after normalising case, whitespace "
                                f"and punctuation); scores on them overstate the model; `loraclf audit` lists them")
    return counts


def first_index(keys: list[str], allowed: Optional[set[int]] = None) -> dict[str, int]:
    """Each key's first row (among allowed rows, when given)."""
    out: dict[str, int] = {}
    for i, k in enumerate(keys):
        if (allowed is None or i in allowed) and k not in out:
            out[k] = i
    return out
