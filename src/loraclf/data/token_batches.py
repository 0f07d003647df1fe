"""Batches capped by padded tokens instead of a fixed row count (train.batch_tokens; evaluation and predict).

A fixed batch of 32 rows gives a GPU a few thousand tokens a step: far too little work to keep it busy. Capping a
batch by its padded tokens (rows x its longest row) instead lets batches of short texts hold many rows while
batches of long texts stay within the same memory, and length grouping keeps the padding small.

token_batches: evaluation and predict order (every row once, longest first).
TokenBatchSampler: one training epoch's batches, shuffled (seed + epoch), each cut from a pool of rows sorted by
length; the same draws on every process count, so N processes see the batches one process would.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

POOL_BATCHES = 50  # rows are sorted by length within pools of about this many batches (transformers' grouping too)


def _cut(order: np.ndarray, lengths: np.ndarray, max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Cut rows already sorted longest first into batches of at most max_rows rows and max_tokens padded tokens
    (a row longer than max_tokens alone is a batch of one)."""
    out, start, n = [], 0, len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_rows, max_tokens // longest))
        out.append(order[start:start + size])
        start += size
    return out


def token_batches(lengths: np.ndarray, batch_size: int, max_tokens: int,
                  max_rows: Optional[int] = None) -> list[np.ndarray]:
    """Indices into lengths, longest first, cut into batches of at most max_rows texts (default batch_size x 4)
    and max_tokens padded tokens.

    Sorting keeps padding small; the token cap lets batches of short texts grow past batch_size while long texts
    stay in batches that fit in cache (or GPU memory).
    """
    lengths = np.asarray(lengths)
    return _cut(np.argsort(-lengths, kind="stable"), lengths, max_tokens, max_rows or batch_size * 4)


class TokenBatchSampler:
    """One epoch's training batches of at most max_tokens padded tokens and max_rows rows.

    `order` is the epoch's row order (a permutation, or balanced draws with replacement). It is split into pools of
    about POOL_BATCHES batches, each pool sorted by length (longest first) and cut by the caps; the batches are then
    shuffled, the one with the most padded tokens first (an out-of-memory error shows at the first step, as with
    transformers' length grouping). The batches are fixed when the sampler is made, so its length is exact.
    """

    def __init__(self, order: np.ndarray, lengths: np.ndarray, max_tokens: int, max_rows: int, generator):
        import torch

        lengths = np.asarray(lengths)
        order = np.asarray(order, dtype=np.int64)
        typical = max(int(np.median(lengths[order])) if len(order) else 1, 1)
        pool = max(1, min(max_rows, max_tokens // typical)) * POOL_BATCHES
        batches: list[np.ndarray] = []
        for i in range(0, len(order), pool):
            chunk = order[i: i + pool]
            batches += _cut(chunk[np.argsort(-lengths[chunk], kind="stable")], lengths, max_tokens, max_rows)
        perm = torch.randperm(len(batches), generator=generator).numpy() if batches else np.zeros(0, np.int64)
        batches = [batches[j] for j in perm]
        if batches:
            tokens = [len(b) * int(lengths[b].max()) for b in batches]
            top = int(np.argmax(tokens))
            batches[0], batches[top] = batches[top], batches[0]
        self.batches = batches
        self.batch_size = None  # varies: Accelerate shards these batches whole, round-robin over processes
        self.cumulative_rows = np.cumsum([len(b) for b in batches], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return (b.tolist() for b in self.batches)

    def rows_before(self, n_batches: int) -> int:
        """Rows in the first n_batches batches (the epoch's data position after them)."""
        n = min(n_batches, len(self.batches))
        return int(self.cumulative_rows[n - 1]) if n > 0 else 0

    def batches_before(self, rows: int) -> int:
        """How many whole batches the first `rows` rows of this epoch fill (the inverse of rows_before)."""
        return int(np.searchsorted(self.cumulative_rows, rows, side="right"))

    @property
    def mean_rows(self) -> float:
        return float(self.cumulative_rows[-1]) / len(self.batches) if self.batches else 0.0
