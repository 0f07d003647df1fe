"""Texts as token ids, per data.long_text: truncated, head + tail, or sliding windows (chunks).

The one tokenization path of training, evaluation and prediction. Each output row names the text it came from
(`doc`), so a document cut into windows is pooled back into one row after the model (evaluate.pool_windows).
"""

from __future__ import annotations

from typing import Optional

from ..config import DataConfig
from ..base.errors import ConfigError


def encode(tokenizer, texts: list[str], pairs: Optional[list[str]], data: DataConfig) -> dict:
    """The tokenizer's columns (input_ids, attention_mask, ...) plus `doc`: the index into texts of every row."""
    texts = list(texts)
    if data.long_text == "chunks":
        return _chunks(tokenizer, texts, data)
    if data.long_text == "head_tail":
        return _head_tail(tokenizer, texts, data)
    if pairs is not None:
        texts, pairs = cut_long_sides(tokenizer, texts, list(pairs), data.max_length)
    enc = dict(tokenizer(texts, pairs, truncation=data.truncation if pairs is not None else True,
                         max_length=data.max_length))
    enc["doc"] = list(range(len(texts)))
    return enc


PAIR_MARGIN = 32  # tokens kept past max_length when a side is cut, so the cut never changes the tokens truncation keeps


def cut_long_sides(tokenizer, texts: list[str], pairs: list[str], max_length: int) -> tuple[list[str], list[str]]:
    """Each side of a pair cut to max_length + PAIR_MARGIN tokens (at a token's end) before the pair is tokenized.

    The fast tokenizers build every overflow window of both sides of a truncated pair, the product of the two
    sides' windows: two 5k-token texts make ~1,600 windows and hundreds of MB for the one row kept, so a request of
    long pairs could take a server's memory. No side can keep more than max_length tokens, so the rows are the same.
    """
    long_at = 4 * (max_length + PAIR_MARGIN)  # shorter sides have too few tokens for the product to matter
    out = []
    for side in (texts, pairs):
        idx = [i for i, t in enumerate(side) if isinstance(t, str) and len(t) > long_at]
        side = list(side)
        if idx:
            enc = tokenizer([side[i] for i in idx], add_special_tokens=False, truncation=True,
                            max_length=max_length + PAIR_MARGIN, return_offsets_mapping=True)
            for i, offsets in zip(idx, enc["offset_mapping"]):
                if offsets:
                    side[i] = side[i][: offsets[-1][1]]
        out.append(side)
    return out[0], out[1]


def _chunks(tokenizer, texts: list[str], data: DataConfig) -> dict:
    # the fast tokenizers' own windowing: `stride` tokens shared by consecutive windows of max_length
    body = data.max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if data.stride >= body:  # the tokenizer would panic (a Rust panic, not a Python error)
        raise ConfigError([f"'data.stride' ({data.stride}) must be smaller than the {body} text tokens of a window "
                           f"(data.max_length {data.max_length} less this tokenizer's "
                           f"{data.max_length - body} special tokens); set data.stride to {body - 1} or less"])
    enc = dict(tokenizer(texts, truncation=True, max_length=data.max_length, stride=data.stride,
                         return_overflowing_tokens=True))
    enc["doc"] = list(enc.pop("overflow_to_sample_mapping"))
    return enc


def head_tokens(tokenizer, data: DataConfig) -> tuple[int, int]:
    """(first k tokens kept, tokens kept in all) of a head_tail text, special tokens excluded."""
    budget = data.max_length - tokenizer.num_special_tokens_to_add(pair=False)
    k = data.head_tokens if data.head_tokens is not None else budget // 4
    return min(k, budget), budget


def _special_template(tokenizer) -> dict:
    """A one-text encoding's columns around its tokens: {column: (before, after, the text's own value)}.

    Found by encoding a probe with and without special tokens, because transformers 5's tokenizers have no
    prepare_for_model / build_inputs_with_special_tokens to add them to ids that were cut by hand.
    """
    full = tokenizer("a", add_special_tokens=True)
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    ids = list(full["input_ids"])
    start = next((i for i in range(len(ids) - len(plain) + 1) if ids[i: i + len(plain)] == plain), None)
    if start is None:  # a tokenizer that changes the text's tokens when it adds its own: keep its ends as they are
        start, plain = 1, ids[1:-1]
    end = start + len(plain)
    return {key: (list(values[:start]), list(values[end:]), values[start] if end > start else 0)
            for key, values in full.items()}


def _head_tail(tokenizer, texts: list[str], data: DataConfig) -> dict:
    k, budget = head_tokens(tokenizer, data)
    ids = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    template = _special_template(tokenizer)
    out: dict = {key: [] for key in template}
    for row in ids:
        if len(row) > budget:
            row = row[:k] + row[len(row) - (budget - k):]
        for key, (before, after, fill) in template.items():
            body = row if key == "input_ids" else [fill] * len(row)  # masks and segment ids: the text's own value
            out[key].append(before + body + after)
    out["doc"] = list(range(len(texts)))
    return out
