"""Texts as token ids, per data.long_text: truncated, head + tail, or sliding windows (chunks).

The one tokenization path of training, evaluation and prediction. Each output row names the text it came from
(`doc`), so a document cut into windows is pooled back into one row after the model (evaluate.pool_windows).
"""

from __future__ import annotations

from typing import Optional

from ..config import DataConfig


def encode(tokenizer, texts: list[str], pairs: Optional[list[str]], data: DataConfig) -> dict:
    """The tokenizer's columns (input_ids, attention_mask, ...) plus `doc`: the index into texts of every row."""
    texts = list(texts)
    if data.long_text == "chunks":
        return _chunks(tokenizer, texts, data)
    if data.long_text == "head_tail":
        return _head_tail(tokenizer, texts, data)
    enc = dict(tokenizer(texts, list(pairs) if pairs is not None else None,
                         truncation=data.truncation if pairs is not None else True, max_length=data.max_length))
    enc["doc"] = list(range(len(texts)))
    return enc


def _chunks(tokenizer, texts: list[str], data: DataConfig) -> dict:
    # the fast tokenizers' own windowing: `stride` tokens shared by consecutive windows of max_length
    enc = dict(tokenizer(texts, truncation=True, max_length=data.max_length, stride=data.stride,
                         return_overflowing_tokens=True))
    enc["doc"] = list(enc.pop("overflow_to_sample_mapping"))
    return enc


def head_tokens(tokenizer, data: DataConfig) -> tuple[int, int]:
    """(first k tokens kept, tokens kept in all) of a head_tail text, special tokens excluded."""
    budget = data.max_length - tokenizer.num_special_tokens_to_add(pair=False)
    k = data.head_tokens if data.head_tokens is not None else budget // 4
    return min(k, budget), budget


def _head_tail(tokenizer, texts: list[str], data: DataConfig) -> dict:
    k, budget = head_tokens(tokenizer, data)
    ids = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    out: dict = {}
    for row in ids:
        if len(row) > budget:
            row = row[:k] + row[len(row) - (budget - k):]
        enc = tokenizer.prepare_for_model(row, add_special_tokens=True, truncation=False)
        for key, value in enc.items():
            out.setdefault(key, []).append(value)
    out["doc"] = list(range(len(texts)))
    return out
