"""Large training files: the memory-mapped Arrow data path gives the same splits as the pandas path, the same
one-line errors, a tokenization cache that a second run reuses, and the same length-grouped batch order.
Streaming (data.streaming) is tested in test_streaming.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import loraclf.data as data
from loraclf.config import load_config
from loraclf.base.errors import DataError


@pytest.fixture
def arrow_always(monkeypatch, tmp_path):
    """Send every csv/tsv/jsonl/parquet file through the Arrow path, with its caches under tmp_path."""
    monkeypatch.setattr(data.read, "ARROW_MIN_MB", 0.0)
    monkeypatch.setenv("LORACLF_CACHE", str(tmp_path / "cache"))


def _cfg(*overrides):
    return load_config(None, list(overrides)).data


def _rows(ds):
    return list(ds["text"][:]), [int(x) for x in ds["label"][:]]


def test_arrow_path_gives_the_pandas_splits(tiny_data, monkeypatch, tmp_path):
    monkeypatch.setenv("LORACLF_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(f"data.train={tiny_data['train']}", f"data.test={tiny_data['test']}")  # validation split from train
    pandas_splits = data.load_splits(cfg, log=lambda m: None)
    monkeypatch.setattr(data.read, "ARROW_MIN_MB", 0.0)
    arrow_splits = data.load_splits(cfg, log=lambda m: None)
    assert arrow_splits.train.cache_files, "the Arrow path should be memory-mapped from a file"
    for key in ("train", "validation", "test"):
        assert _rows(getattr(arrow_splits, key)) == _rows(getattr(pandas_splits, key)), key
    assert arrow_splits.id2label == pandas_splits.id2label == {0: "0", 1: "1", 2: "2", 3: "3"}
    assert arrow_splits.int_labels and pandas_splits.int_labels


def test_arrow_path_string_labels_empty_rows_and_long_texts(tmp_path, arrow_always):
    df = pd.DataFrame({"body": ["good film", "", "bad film " * 50, "fine", "awful", "great", None],
                       "y": ["pos", "neg", "neg", "", "neg", "pos", "pos"]})
    path = tmp_path / "reviews.csv"
    df.to_csv(path, index=False)
    notes = []
    cfg = _cfg(f"data.train={path}", f"data.validation={path}", "data.text_column=body", "data.label_column=y",
               "data.empty_text=drop", "data.max_text_chars=20")
    splits = data.load_splits(cfg, log=notes.append)
    assert splits.id2label == {0: "neg", 1: "pos"}
    assert _rows(splits.train) == (["good film", "bad film bad film ba", "awful", "great"], [1, 0, 0, 1])
    assert not splits.int_labels
    assert any("dropped 3 rows" in n for n in notes) and any("cut 1 texts" in n for n in notes)


@pytest.mark.parametrize("overrides, bad", [
    (["data.text_column=txt"], None),
    (["data.label_column=lable"], None),
    (["data.empty_text=error"], "empty"),
    ([], "unseen"),
])
def test_arrow_path_errors_match_the_pandas_path(tiny_data, tmp_path, monkeypatch, overrides, bad):
    monkeypatch.setenv("LORACLF_CACHE", str(tmp_path / "cache"))
    train = pd.read_csv(tiny_data["train"])
    val = pd.read_csv(tiny_data["val"])
    if bad == "empty":
        train.loc[7, "text"] = "   "
    if bad == "unseen":
        val.loc[3, "label"] = 9
    train.to_csv(tmp_path / "train.csv", index=False)
    val.to_csv(tmp_path / "val.csv", index=False)
    cfg = _cfg(f"data.train={tmp_path / 'train.csv'}", f"data.validation={tmp_path / 'val.csv'}", *overrides)
    with pytest.raises(DataError) as pandas_err:
        data.load_splits(cfg, log=lambda m: None)
    monkeypatch.setattr(data.read, "ARROW_MIN_MB", 0.0)
    with pytest.raises(DataError) as arrow_err:
        data.load_splits(cfg, log=lambda m: None)
    assert str(arrow_err.value) == str(pandas_err.value)
    assert "\n" not in str(arrow_err.value)


def test_tokenization_cache_is_reused_by_a_new_load(tiny_data, tiny_bert, tmp_path, arrow_always):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    cfg = _cfg(f"data.train={tiny_data['train']}", f"data.validation={tiny_data['val']}",
               f"data.cache_dir={tmp_path / 'tok'}", "data.max_length=32")
    first = data.tokenize(data.load_splits(cfg, log=lambda m: None).train, tok, cfg)
    files = sorted((tmp_path / "tok").glob("*.arrow"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = data.tokenize(data.load_splits(cfg, log=lambda m: None).train, tok, cfg)  # a fresh load: new objects
    assert sorted((tmp_path / "tok").glob("*.arrow")) == files and files[0].stat().st_mtime_ns == stamp
    assert again["input_ids"][:] == first["input_ids"][:]
    # a different max_length is a different cache entry
    data.tokenize(data.load_splits(cfg, log=lambda m: None).train, tok, _cfg(*[f"data.{k}" for k in (
        f"train={tiny_data['train']}", f"validation={tiny_data['val']}", f"cache_dir={tmp_path / 'tok'}", "max_length=16")]))
    assert len(list((tmp_path / "tok").glob("*.arrow"))) == 2
    # the raw split is read from the file, and the batches too: lengths come out as numpy, not a Python list
    assert isinstance(data.column(first, "length").to_numpy(), np.ndarray)


@pytest.mark.parametrize("n, batch", [(3, 8), (1000, 8), (4321, 16)])
def test_length_grouped_order_matches_transformers(n, batch):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = np.random.default_rng(n).integers(1, 40, n)
    ga, gb = torch.Generator(), torch.Generator()
    ga.manual_seed(5)
    gb.manual_seed(5)
    theirs = LengthGroupedSampler(batch, lengths=lengths.tolist(), generator=ga)
    ours = data.LengthGroupedSampler(lengths, batch, gb)
    for _ in range(2):  # the generator advances the same way epoch after epoch
        assert list(ours) == list(theirs)


def test_training_on_the_arrow_path(tiny_overrides, arrow_always):
    from loraclf.training import train

    cfg = load_config(None, tiny_overrides)
    result = train(cfg, quiet=True)
    assert (result.run_dir / "metrics.json").exists()

