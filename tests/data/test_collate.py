"""PaddedBatches (Arrow + numpy padding) gives exactly the tensors transformers' DataCollatorWithPadding gives: keys,
dtypes, values, for every per-row column loraclf trains with, both padding sides and a pad multiple."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from loraclf.data.batches import TRAIN_COLUMNS, collator
from loraclf.data.collate import PaddedBatches, pad_settings

TEXTS = ["A short one.", "A somewhat longer text with several more words in it, to pad the others.", "Mid length text.",
         "x", "Another row of a moderate length here."]
PAIRS = ["first pair side", "b", "the other side is longer than this one", "y y y", "z"]


def _rows(tok, kind: str) -> datasets.Dataset:
    enc = tok(TEXTS, PAIRS if kind == "pairs" else None, truncation=True, max_length=32)
    data = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    n = len(TEXTS)
    data["label"] = {"single": [0, 2, 1, 3, 0], "pairs": [1, 0, 1, 0, 1], "multi": [[1.0, 0.0, 1.0]] * n,
                     "multi_int": [[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0]],
                     "regression": [0.5, -1.25, 3.0, 0.0, 2.5]}[kind]
    if kind == "single":  # self-training's per-row columns and train.prefix_cache's row numbers
        data["weight"] = [1.0, 0.5, 0.25, 1.0, 0.75]
        data["soft_labels"] = [[0.7, 0.1, 0.1, 0.1]] * n
        data["row"] = list(range(n))
    return datasets.Dataset.from_dict(data)


@pytest.mark.parametrize("kind", ["single", "pairs", "multi", "multi_int", "regression"])
@pytest.mark.parametrize("side,multiple", [("right", None), ("left", None), ("right", 8)])
def test_padded_batches_equal_transformers_collator(minilm_path, kind, side, multiple):
    tok = AutoTokenizer.from_pretrained(minilm_path)
    tok.padding_side = side
    ds = _rows(tok, kind)
    idx = [3, 1, 4, 0]
    pad_id, left = pad_settings(tok)
    ours = PaddedBatches(ds, TRAIN_COLUMNS, pad_id, left, multiple).__getitems__(idx)
    theirs = collator(tok, multiple)([{k: ds[i][k] for k in ds.column_names} for i in idx])
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype, k
        assert torch.equal(ours[k], theirs[k]), k
    width = ours["input_ids"].shape[1]
    assert width % 8 == 0 if multiple else width == max(len(ds[i]["input_ids"]) for i in idx)
