"""Tokenize (no padding, cached on disk as Arrow) and batch: dynamic padding, length-grouped training order.

Tokenized splits keep `label`, add `input_ids`, `attention_mask`, `length`, and an `index` column so predictions
can be put back in input order.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..base import sources
from ..config import DataConfig
from . import windows
from .read import column
from .collate import PaddedBatches, identity, pad_settings
from .token_batches import TokenBatchSampler, token_batches

# per-row columns a training batch carries besides the tokens (weight, soft_labels: self-training's pseudo-labels;
# row: the row's position, added where train.prefix_cache looks rows up)
TRAIN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "label", "weight", "soft_labels", "row")
EVAL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "label", "index")


def cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else sources.cache_root() / "tokenized"


def _fingerprint(ds, tokenizer, max_length: int, how: str = "") -> str:
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    h.update(str(len(tokenizer)).encode())
    h.update(str(max_length).encode())
    h.update(how.encode())
    h.update(str(getattr(ds, "_fingerprint", "")).encode())
    if ds.cache_files:
        # memory-mapped: datasets' fingerprint already follows the file (path, mtime) and every transform since,
        # and reading the text here would pull the whole file into memory
        return h.hexdigest()[:24]
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    for col in ("text", "text_pair", "label"):
        if col in ds.column_names:
            values = table.column(col).to_pandas()
            if values.dtype == object:  # label sets: lists are unhashable, their text is not
                values = values.map(lambda v: "" if v is None else str(list(v)) if not isinstance(v, str) else v)
            h.update(pd.util.hash_pandas_object(values, index=False).values.tobytes())
    return h.hexdigest()[:24]


def tokenize(ds, tokenizer, cfg: DataConfig, cache: bool = True):
    """Tokenize without padding, adding `length` and `index`; cached on disk as Arrow when cache is set."""
    pairs = "text_pair" in ds.column_names

    def fn(batch, idx):
        enc = windows.encode(tokenizer, batch["text"], batch["text_pair"] if pairs else None, cfg)
        doc = enc.pop("doc")
        enc["length"] = [len(x) for x in enc["input_ids"]]
        enc["index"] = [idx[d] for d in doc]  # a document's windows share its index
        if "label" in batch:
            enc["label"] = [batch["label"][d] for d in doc]  # every window carries its document's label
        return enc

    remove = list(ds.column_names)
    num_proc = cfg.num_proc
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8) if len(ds) >= 50_000 else None
    kwargs = dict(batched=True, with_indices=True, remove_columns=remove, desc="Tokenizing", num_proc=num_proc)
    if cache:
        d = cache_dir(cfg)
        d.mkdir(parents=True, exist_ok=True)
        how = f"{cfg.truncation if pairs else ''}|{cfg.long_text}|{cfg.head_tokens}|{cfg.stride}"
        key = _fingerprint(ds, tokenizer, cfg.max_length, how)
        kwargs["cache_file_name"] = str(d / f"{key}.arrow")
        kwargs["load_from_cache_file"] = True
        # our key already names tokenizer, max_length and data; without it datasets pickles `fn` (the whole
        # tokenizer) to make one, which is most of a cached re-run's time
        kwargs["new_fingerprint"] = key
    return ds.map(fn, **kwargs)


def collator(tokenizer, pad_multiple: Optional[int] = None):
    """Dynamic padding to the longest row of the batch (rounded up to pad_multiple: 8 on a GPU, for its tensor
    cores); `label` renamed to `labels` as models expect. Other per-row columns (index, weight, soft_labels) come
    through as tensors."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple)


def token_sampler(ds, seed: int, epoch: int, max_tokens: int, max_rows: int,
                  balanced: bool = False) -> TokenBatchSampler:
    """train.batch_tokens: epoch `epoch`'s batches (seed + epoch), capped by padded tokens; balanced draws rows
    with replacement so every class is drawn equally often, as data.sampling=balanced does."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    lengths = column(ds, "length").to_numpy()
    if balanced:
        order = BalancedSampler(column(ds, "label").to_numpy(), None, 1, g).draw()
    else:
        order = torch.randperm(len(lengths), generator=g).numpy()
    return TokenBatchSampler(order, lengths, max_tokens, max_rows, g)


def train_loader(ds, tokenizer, batch_size: int, group_by_length: bool, seed: int, epoch: int,
                 group_size: Optional[int] = None, balanced: bool = False, *,
                 tokens: Optional[TokenBatchSampler] = None, pin_memory: bool = False,
                 pad_multiple: Optional[int] = None):
    """Shuffled (seed + epoch) batches; length-grouped when asked, so each batch pads little; or, with `tokens`
    (token_sampler), batches capped by padded tokens.

    group_size is the global batch (per-device batch x processes): grouping by it gives every process count the
    same sample order, so N processes see exactly the samples one process would.
    """
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    pad_id, left = pad_settings(tokenizer)
    data = PaddedBatches(ds, TRAIN_COLUMNS, pad_id, left, pad_multiple)
    # the loader's own generator: without one, every new iterator draws its base seed from the global RNG,
    # which a resumed run would draw once more than an uninterrupted one (and so change its dropout masks)
    loader_g = torch.Generator()
    loader_g.manual_seed(seed + epoch)
    common = dict(collate_fn=identity, generator=loader_g, pin_memory=pin_memory)
    if tokens is not None:
        return DataLoader(data, batch_sampler=tokens, **common)
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    if balanced:
        lengths = column(ds, "length").to_numpy() if group_by_length else None
        sampler = BalancedSampler(column(ds, "label").to_numpy(), lengths, group_size or batch_size, g)
    elif group_by_length:
        sampler = LengthGroupedSampler(column(ds, "length").to_numpy(), group_size or batch_size, g)
    else:
        sampler = RandomSampler(range(len(data)), generator=g)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=False, **common)


def eval_loader(ds, tokenizer, batch_size: int, max_tokens: Optional[int] = None, max_rows: Optional[int] = None,
                pin_memory: bool = False, pad_multiple: Optional[int] = None):
    """Batches sorted by length (least padding); the `index` column restores input order. With max_tokens, the
    batches are capped by padded tokens (at most max_rows rows) instead of holding batch_size rows: one process only,
    since gathering several processes' outputs needs batches of one size."""
    from torch.utils.data import DataLoader

    lengths = column(ds, "length").to_numpy()
    pad_id, left = pad_settings(tokenizer)
    data = PaddedBatches(ds, EVAL_COLUMNS, pad_id, left, pad_multiple)
    if max_tokens:
        batches = [b.tolist() for b in token_batches(lengths, batch_size, max_tokens, max_rows)]
        return DataLoader(data, batch_sampler=batches, collate_fn=identity, pin_memory=pin_memory)
    # a fixed batch size: Accelerate gives every process batches of one size, which gathering outputs needs
    order = np.argsort(lengths, kind="stable").tolist()
    return DataLoader(data, batch_size=batch_size, sampler=order, collate_fn=identity, pin_memory=pin_memory)


class LengthGroupedSampler:
    """transformers' LengthGroupedSampler order (same draws, same result) computed in numpy.

    The original sorts Python lists of every index, which at a million rows costs hundreds of MB; this keeps one
    int64 array.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, generator):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def draw(self) -> np.ndarray:
        import torch

        return torch.randperm(len(self.lengths), generator=self.generator).numpy()

    def order(self) -> np.ndarray:
        indices = self.draw()
        n = len(indices)
        mult = min(n // (self.batch_size * 4), 50) or 1
        size = mult * self.batch_size
        # a stable sort on the negated length = Python's sorted(..., reverse=True), which keeps ties in order
        mbs = [mb[np.argsort(-self.lengths[mb], kind="stable")] for mb in
               (indices[i: i + size] for i in range(0, n, size))]
        top = int(np.argmax([self.lengths[mb[0]] for mb in mbs]))  # first maximum, as torch.argmax
        mbs[0][0], mbs[top][0] = mbs[top][0], mbs[0][0]
        return np.concatenate(mbs)

    def __iter__(self):
        return (int(i) for i in self.order())


class BalancedSampler(LengthGroupedSampler):
    """data.sampling=balanced: an epoch of N rows drawn with replacement so that every class is drawn equally often
    in expectation, then (with lengths) grouped by length as LengthGroupedSampler groups them."""

    def __init__(self, labels: np.ndarray, lengths: Optional[np.ndarray], batch_size: int, generator):
        labels = np.asarray(labels, dtype=np.int64)
        super().__init__(lengths if lengths is not None else np.zeros(len(labels), np.int64), batch_size, generator)
        counts = np.bincount(labels)
        self.weights = 1.0 / counts[labels]
        self.grouped = lengths is not None

    def draw(self) -> np.ndarray:
        import torch

        w = torch.as_tensor(self.weights, dtype=torch.float64)
        return torch.multinomial(w, len(w), replacement=True, generator=self.generator).numpy()

    def order(self) -> np.ndarray:
        return super().order() if self.grouped else self.draw()


def steps_per_epoch(n_rows: int, batch_size: int, accumulation: int, num_processes: int = 1) -> int:
    batches = math.ceil(n_rows / (batch_size * num_processes))
    return max(1, math.ceil(batches / accumulation))
