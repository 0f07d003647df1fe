"""What each split holds: rows, class balance, text lengths (words) and their outliers, empty or near-empty texts."""

from __future__ import annotations

from collections import Counter

import numpy as np

NEAR_EMPTY_WORDS = 2  # a text of at most this many words (after normalisation) is near-empty
OUTLIER_IQR = 3.0  # lengths beyond this many interquartile ranges past the quartiles are outliers
SHOWN = 20  # rows listed per kind of finding


def class_balance(labels: list[str], multi: bool) -> dict:
    """{label: {rows, share}} (multi-label: rows carrying each label of the 'a|b' sets), most frequent first."""
    c = Counter(name for shown in labels for name in (shown.split("|") if shown else [])) if multi else Counter(labels)
    n = max(len(labels), 1)
    return {k: {"rows": v, "share": round(v / n, 4)} for k, v in c.most_common()}


def lengths(texts: list[str]) -> dict:
    """Word counts: quartiles, mean, max, and the rows outside OUTLIER_IQR interquartile ranges."""
    words = np.array([len(t.split()) for t in texts])
    if not len(words):
        return {"rows": 0}
    q1, median, q3 = np.percentile(words, [25, 50, 75])
    low, high = q1 - OUTLIER_IQR * (q3 - q1), q3 + OUTLIER_IQR * (q3 - q1)
    out = np.flatnonzero((words < low) | (words > high))
    return {"min": int(words.min()), "q1": float(q1), "median": float(median), "q3": float(q3),
            "mean": round(float(words.mean()), 2), "max": int(words.max()), "outlier_bounds": [float(low), float(high)],
            "outliers": int(len(out)), "outlier_rows": [{"row": int(i), "words": int(words[i])} for i in out[:SHOWN]]}


def near_empty(keys: list[str]) -> dict:
    """Rows whose normalised text has at most NEAR_EMPTY_WORDS words (empty rows never reach here: data.empty_text)."""
    rows = [i for i, k in enumerate(keys) if len(k.split()) <= NEAR_EMPTY_WORDS]
    return {"rows": len(rows), "first_rows": rows[:SHOWN]}


def summarise(parts: dict[str, dict], multi: bool) -> dict:
    """Per split: rows, class_balance, lengths, near_empty; with the largest/smallest class ratio of train."""
    out = {}
    for split, part in parts.items():
        balance = class_balance(part["labels"], multi)
        out[split] = {"rows": len(part["texts"]), "class_balance": balance, "lengths": lengths(part["texts"]),
                      "near_empty": near_empty(part["keys"])}
        counts = [v["rows"] for v in balance.values()]
        if counts:
            out[split]["imbalance_ratio"] = round(max(counts) / max(min(counts), 1), 2)
    return out
