"""Duplicates within train and across train/validation/test: exact after normalisation (data.overlap.normalise),
and near, by the cosine of mean-pooled encoder embeddings (embed.py) at or above a threshold.

Near-duplicates come from blocked matrix products (torch): a block of query rows against the reference rows at a
time, so memory is one block x n similarities (BLOCK_FLOATS) instead of n x n, with no extra dependency. Within a
split only the blocks left of the diagonal are computed (a pair counts once, on its later row), which halves the
work. Where the CPU runs bf16 natively (AVX512-BF16, AMX), the products run in bf16, about twice float32's rate, and
every row whose best cosine may reach the threshold is recomputed in float32 over its candidate columns (RECHECK
bounds bf16's error), so the pairs reported are exactly float32's. At 100k rows of 384 wide that is ~2 x 10^12
multiply-adds, well under a minute on two cores (bench/results/trust.md); an approximate index (faiss) would be
faster still but is one more compiled dependency to install, and exact search needs no recall caveat. Each row is
reported once, against its most similar earlier row (within a split) or its most similar training row (across
splits), so the output grows with n, not with the number of similar pairs.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import torch

from ..base.device import bf16_supported

BLOCK_FLOATS = 2**25  # similarities held at once (4 bytes each in float32, 2 in bf16)
# a bound on |bf16 product - float32 product| of two unit vectors: rounding to bf16 (8 significant bits) moves each
# element by at most 2^-8 of itself, so the product by at most 2 * 2^-8 (Cauchy-Schwarz); the product is accumulated
# in float32 and rounded once to bf16 (<= 2^-8 more): 0.0117 in all, so 0.02 leaves room
RECHECK = 0.02
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


def _candidates(sims, top, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every bf16 similarity within 2 * RECHECK of its row's best, in rows whose best is at least
    threshold - RECHECK: the only rows that may reach threshold in float32, and the only columns that may be their
    float32 best (each bf16 product is within RECHECK of the float32 one). Compared in bf16 (no float32 copy of the
    block), against a floor lowered by one more bf16 step near 1 (2^-7) so that rounding it cannot lift it."""
    top = top.float()
    floor = torch.where(top >= threshold - RECHECK, top - 2 * RECHECK - 2**-7, torch.inf).to(sims.dtype)
    hit = torch.nonzero(sims >= floor[:, None])  # row-major, columns ascending
    return hit[:, 0].numpy(), hit[:, 1].numpy()


def _recheck(q: np.ndarray, ref: np.ndarray, rows: np.ndarray, cols: np.ndarray, best: np.ndarray,
             score: np.ndarray) -> None:
    """Each candidate row's best column and cosine recomputed in float32 (the first column of the highest cosine,
    as argmax picks it); rows: within the block, cols: ref rows."""
    if not len(rows):
        return
    exact = np.einsum("ij,ij->i", q[rows], ref[cols])
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    top = np.maximum.reduceat(exact, starts)
    first = np.flatnonzero(exact == np.repeat(top, np.diff(np.r_[starts, len(rows)])))
    keep = first[np.r_[True, rows[first][1:] != rows[first][:-1]]]  # the first best column of each row
    best[rows[keep]], score[rows[keep]] = cols[keep], exact[keep]


def nearest(query: np.ndarray, ref: np.ndarray, same: bool, block_floats: int = BLOCK_FLOATS,
            threshold: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the most similar ref row and the cosine (rows are L2-normalised); within one split
    (same), only earlier rows count, so a pair is reported once, on its later row, and only the blocks left of the
    diagonal are computed. -1 / -inf where none. threshold given and bf16 native on this CPU: the products run in
    bf16, and every row whose best may reach threshold is recomputed in float32 (_candidates), so the rows at or
    above threshold, their best row and cosine are float32's; the cosines of the other rows are bf16's."""
    n, m = len(query), len(ref)
    best = np.full(n, -1, dtype=np.int64)
    score = np.full(n, -np.inf, dtype=np.float32)
    if not n or not m:
        return best, score
    query, ref = np.ascontiguousarray(query, np.float32), np.ascontiguousarray(ref, np.float32)
    fast = threshold is not None and bf16_supported("cpu")
    dtype = torch.bfloat16 if fast else torch.float32
    q_t, r_t = torch.from_numpy(query).to(dtype), torch.from_numpy(ref).to(dtype)
    step = max(1, block_floats // m)
    for start in range(0, n, step):
        stop = min(n, start + step)
        width = min(m, stop) if same else m  # within a split: columns left of the block's last row only
        sims = q_t[start:stop] @ r_t[:width].T
        if same and start < width:  # the diagonal block: keep j < i
            diag = sims[:, start:width]
            diag.masked_fill_(torch.ones(diag.shape, dtype=torch.bool).triu(), float("-inf"))
        top, idx = sims.max(1)
        b, sc = idx.numpy().copy(), top.float().numpy()
        if fast:
            rows, cols = _candidates(sims, top, threshold)
            _recheck(query[start:stop], ref, rows, cols, b, sc)
        best[start:stop], score[start:stop] = b, sc
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
        best, score = nearest(q["embeddings"], r["embeddings"], same, threshold=threshold)
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
