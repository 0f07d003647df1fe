"""The near-duplicate search (trust.duplicates.nearest) against a plain float32 all-pairs computation: the blocked,
triangular search, bf16 where the CPU has it with the float32 recheck, finds exactly the same pairs (row, its most
similar row) at or above the threshold, on random vectors with planted near-duplicates around the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from loraclf.trust import duplicates
from loraclf.trust.duplicates import nearest

THRESHOLD = 0.95


def planted(n: int, width: int, seed: int) -> np.ndarray:
    """n unit vectors; a third of them noisy copies of an earlier one, at cosines spread over 0.90-0.999 so that
    many fall within bf16's error of the threshold; some copies of copies (several candidates per row)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, width)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for i in rng.choice(np.arange(10, n), size=n // 3, replace=False):
        src = x[rng.integers(0, i)]
        noise = rng.normal(size=width).astype(np.float32)
        noise -= noise @ src * src
        noise /= np.linalg.norm(noise)
        cos = rng.uniform(0.90, 0.999)
        x[i] = cos * src + np.sqrt(1 - cos**2) * noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def plain(query: np.ndarray, ref: np.ndarray, same: bool) -> dict[int, tuple[int, float]]:
    """row -> (best ref row, cosine) at or above THRESHOLD, from the whole float32 similarity matrix."""
    sims = query.astype(np.float64) @ ref.T.astype(np.float64)
    if same:
        sims[np.triu_indices(len(query), 0, len(ref))] = -np.inf
    best = sims.argmax(1)
    top = sims[np.arange(len(query)), best]
    return {i: (int(best[i]), float(top[i])) for i in np.flatnonzero(top >= THRESHOLD)}


def found(best: np.ndarray, score: np.ndarray) -> dict[int, tuple[int, float]]:
    return {i: (int(best[i]), float(score[i])) for i in np.flatnonzero(score >= THRESHOLD)}


@pytest.mark.parametrize("same", [True, False])
@pytest.mark.parametrize("block_floats", [64 * 400, 7 * 300])
def test_the_search_finds_exactly_the_pairs_of_plain_float32(same, block_floats):
    x = planted(400, 48, seed=1)
    query, ref = (x, x) if same else (x[200:], x[:300])
    want = plain(query, ref, same)
    near_threshold = [i for i, (_, s) in want.items() if abs(s - THRESHOLD) < duplicates.RECHECK]
    assert len(want) > 30 and near_threshold, "the planted rows must reach and straddle the threshold"
    got = found(*nearest(query, ref, same, block_floats=block_floats, threshold=THRESHOLD))
    assert {i: j for i, (j, _) in got.items()} == {i: j for i, (j, _) in want.items()}
    assert all(abs(got[i][1] - want[i][1]) < 1e-5 for i in want)


def test_bf16_alone_would_differ_so_the_recheck_is_what_makes_it_exact(monkeypatch):
    """Without the float32 recheck (RECHECK 0: no candidate row), bf16's cosines miss or add rows near the
    threshold or change their scores: the comparison above can fail. Skipped where the CPU has no native bf16."""
    if not duplicates.bf16_supported("cpu"):
        pytest.skip("no native bf16 on this CPU: the search runs in float32")
    x = planted(400, 48, seed=1)
    want = plain(x, x, True)
    monkeypatch.setattr(duplicates, "_candidates", lambda *a: (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    got = found(*nearest(x, x, True, threshold=THRESHOLD))
    assert got.keys() != want.keys() or any(abs(got[i][1] - want[i][1]) > 1e-4 for i in want)
