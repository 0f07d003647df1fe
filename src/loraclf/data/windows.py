"""Texts as token ids, per data.long_text: truncated, head + tail, or sliding windows (chunks).

The one tokenization path of training, evaluation and prediction. Each output row names the text it came from
(`doc`), so a document cut into windows is pooled back into one row after the model (evaluate.pool_windows).
"""

from __future__ import annotations

from typing import Optional

from ..base import logs
from ..config import DataConfig
from ..base.errors import ConfigError

logger = logs.get(__name__)


def encode(tokenizer, texts: list[str], pairs: Optional[list[str]], data: DataConfig) -> dict:
    """The tokenizer's columns (input_ids, attention_mask, ...) plus `doc`: the index into texts of every row."""
    texts = list(texts)
    if data.long_text == "chunks":
        return _chunks(tokenizer, texts, data)
    if data.long_text == "head_tail":
        return _head_tail(tokenizer, texts, data)
    if pairs is not None:
        texts, pairs = cut_long_sides(tokenizer, texts, list(pairs), data.max_length)
        enc = _pair_encode(tokenizer, texts, pairs, data.truncation, data.max_length)
    else:
        enc = dict(tokenizer(texts, truncation=True, max_length=data.max_length))
    enc["doc"] = list(range(len(texts)))
    return enc


_WARNED: set[str] = set()  # one warning per strategy and process: predict and serve encode batch after batch


def _pair_encode(tokenizer, texts: list[str], pairs: list[str], strategy: str, max_length: int) -> dict:
    """Pairs cut by data.truncation; where only_first / only_second cannot fit a pair (the side it may cut is shorter
    than the excess), that pair is cut with longest_first instead of the tokenizer raising mid-run.

    A user asking to cut only one side wants the other kept whole where possible, not a crash on the first pair
    whose kept side alone is over max_length; the pairs this happens to are counted in one warning."""
    if strategy == "longest_first":
        return dict(tokenizer(texts, pairs, truncation=strategy, max_length=max_length))
    cut = texts if strategy == "only_first" else pairs
    n_cut = [len(x) for x in tokenizer(cut, add_special_tokens=False)["input_ids"]]
    n_all = [len(a) + len(b) for a, b in zip(tokenizer(texts, add_special_tokens=False)["input_ids"],
                                              tokenizer(pairs, add_special_tokens=False)["input_ids"])]
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    # the tokenizers' own rule: the side to cut must keep at least one token after losing the excess
    unfit = [i for i, (c, a) in enumerate(zip(n_cut, n_all)) if a > room and c <= a - room]
    if not unfit:
        return dict(tokenizer(texts, pairs, truncation=strategy, max_length=max_length))
    if strategy not in _WARNED:
        _WARNED.add(strategy)
        kept = "first" if strategy == "only_second" else "second"
        logger.warning(f"data.truncation={strategy}: {len(unfit)} of {len(texts)} pairs have a {kept} text that alone "
                       f"fills data.max_length={max_length}; those are cut with longest_first (both sides) instead")
    fit = [i for i in range(len(texts)) if i not in set(unfit)]
    parts = [(fit, strategy), (unfit, "longest_first")]
    out: dict = {}
    for rows, how in parts:
        if not rows:
            continue
        enc = tokenizer([texts[i] for i in rows], [pairs[i] for i in rows], truncation=how, max_length=max_length)
        for key, values in enc.items():
            column = out.setdefault(key, [None] * len(texts))
            for i, v in zip(rows, values):
                column[i] = v
    return out


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
