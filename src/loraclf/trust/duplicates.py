"""Duplicates within train and across train/validation/test: exact after normalisation (data.overlap.normalise),
and near, by the cosine of mean-pooled encoder embeddings (embed.py) at or above a threshold.

Near-duplicates come from blocked matrix products in numpy: a block of query rows against every reference row at a
time, so memory is one block x n similarities (BLOCK_FLOATS, ~128 MB) instead of n x n, with no extra dependency.
At 100k rows of 384 wide that is ~10^10 multiply-adds, well within a minute or two of BLAS on two cores; an
approximate index (faiss) would be faster still but is one more compiled dependency to install, and exact search
needs no recall caveat. Each row is reported once, against its most similar earlier row (within a split) or its most
similar training row (across splits), so the output grows with n, not with the number of similar pairs.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

BLOCK_FLOATS = 2**25  # similarities held at once (4 bytes each)
COLUMNS = ["kind", "scope", "split", "row", "duplicate_of_split", "duplicate_of_row", "similarity", "label",
           "duplicate_label", "conflict", "text", "duplicate_text"]
# (query split, reference split): each row of the first is matched to the second; train first, so a leak is always
# read as "this validation/test row repeats that training row"
PAIRS = (("train", "train"), ("validation", "train"), ("test", "train"), ("test", "validation"))


def exact_matches(keys: list[str], ref_keys: list[str], same: bool) -> list[tuple[int, int]]:
    """(row, ref row) for each row whose key is a ref row's key; within one split (same), the first earlier row."""
    first: dict[str, int] = {}
    for j, k in enumerate(ref_keys):
        first.setdefault(k, j)
    out = []
    for i, k in enumerate(keys):
        j = first.get(k)
        if j is not None and (not same or j < i):
            out.append((i, j))
    return out


def nearest(query: np.ndarray, ref: np.ndarray, same: bool, block_floats: int = BLOCK_FLOATS
            ) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the most similar ref row and the cosine (rows are L2-normalised); within one split
    (same), only earlier rows count, so a pair is reported once, on its later row. -1 / -inf where none."""
    n, m = len(query), len(ref)
    best = np.full(n, -1, dtype=np.int64)
    score = np.full(n, -np.inf, dtype=np.float32)
    if not n or not m:
        return best, score
    step = max(1, block_floats // m)
    for start in range(0, n, step):
        sims = query[start:start + step] @ ref.T
        if same:  # keep j < i only
            rows = np.arange(start, start + len(sims))[:, None]
            sims[np.arange(m)[None, :] >= rows] = -np.inf
        best[start:start + step] = sims.argmax(1)
        score[start:start + step] = sims[np.arange(len(sims)), best[start:start + step]]
    best[~np.isfinite(score)] = -1
    return best, score


def _scope(split: str, ref: str) -> str:
    return f"within {split}" if split == ref else f"{ref}-{split}"


def _record(kind: str, split: str, i: int, ref: str, j: int, sim: float, parts: dict) -> dict:
    label, ref_label = parts[split]["labels"][i], parts[ref]["labels"][j]
    return {"kind": kind, "scope": _scope(split, ref), "split": split, "row": i, "duplicate_of_split": ref,
            "duplicate_of_row": j, "similarity": round(float(sim), 4), "label": label, "duplicate_label": ref_label,
            "conflict": label != ref_label, "text": parts[split]["texts"][i], "duplicate_text": parts[ref]["texts"][j]}


def find_duplicates(parts: dict[str, dict], threshold: Optional[float]) -> pd.DataFrame:
    """parts: split -> {texts, keys (normalised), labels (printable), embeddings (or None)}. Exact matches first;
    a row with an exact match is not reported again as near. threshold None: exact only."""
    records = []
    for split, ref in PAIRS:
        if split not in parts or ref not in parts:
            continue
        q, r, same = parts[split], parts[ref], split == ref
        exact = exact_matches(q["keys"], r["keys"], same)
        records += [_record("exact", split, i, ref, j, 1.0, parts) for i, j in exact]
        if threshold is None or q.get("embeddings") is None:
            continue
        best, score = nearest(q["embeddings"], r["embeddings"], same)
        done = {i for i, _ in exact}
        records += [_record("near", split, i, ref, int(best[i]), score[i], parts)
                    for i in np.flatnonzero(score >= threshold) if i not in done]
    return pd.DataFrame(records, columns=COLUMNS)


def counts(found: pd.DataFrame) -> dict:
    """{scope: {exact, near, conflicting}} for the summary."""
    out = {}
    for scope, group in found.groupby("scope", sort=False):
        out[scope] = {"exact": int((group["kind"] == "exact").sum()), "near": int((group["kind"] == "near").sum()),
                      "conflicting_labels": int(group["conflict"].sum())}
    return out
