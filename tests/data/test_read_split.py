"""Reading, cleaning, splitting and tokenizing: every file format read alike, pickles only on opt-in, joined text
columns and string labels, a seeded stratified split, empty texts dropped with a count, and per-batch padding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED, need
from loraclf.base.errors import DataError
from loraclf.config import load_config


def test_readers_agree_across_formats(tmp_path, tiny_data):
    from loraclf.data import read_table

    df = pd.read_csv(tiny_data["val"])
    paths = {
        "csv": tiny_data["val"],
        "tsv": tmp_path / "v.tsv", "jsonl": tmp_path / "v.jsonl", "json": tmp_path / "v.json",
        "parquet": tmp_path / "v.parquet",
    }
    df.to_csv(paths["tsv"], sep="\t", index=False)
    df.to_json(paths["jsonl"], orient="records", lines=True)
    df.to_json(paths["json"], orient="records")
    df.to_parquet(paths["parquet"], index=False)
    for kind, p in paths.items():
        got = read_table(p)
        assert got["text"].tolist() == df["text"].tolist(), kind
        assert got["label"].astype(int).tolist() == df["label"].tolist(), kind


def test_pickle_needs_opt_in_and_reads_the_competition_files(ag_news):
    from loraclf.data import read_table

    kaggle = need(SHARED / "data" / "kaggle", "competition pickles")
    for name in ("test_unlabelled.pkl", "test_unlabelled_df.pkl"):
        with pytest.raises(DataError, match="data.allow_pickle=true"):
            read_table(kaggle / name)
        df = read_table(kaggle / name, allow_pickle=True)
        assert len(df) == 2000 and "text" in df.columns


def test_joined_text_columns_string_labels_and_stratified_split(tmp_path, tiny_data):
    from loraclf.data import load_splits

    df = pd.read_csv(tiny_data["train"])
    names = {0: "World", 1: "Sports", 2: "Business", 3: "Sci/Tech"}
    df["topic"] = df["label"].map(names)
    f = tmp_path / "t.csv"
    df.to_csv(f, index=False)
    cfg = load_config(None, [f"data.train={f}", "data.text_column=[title, description]", "data.label_column=topic",
                             "data.validation_split=40"])
    s = load_splits(cfg.data, log=lambda m: None)
    assert s.id2label == {0: "Business", 1: "Sci/Tech", 2: "Sports", 3: "World"}  # sorted names
    assert len(s.validation) == 40 and len(s.train) == len(df) - 40
    assert np.bincount(s.validation["label"]).tolist() == [10, 10, 10, 10]  # stratified
    assert s.train[0]["text"] == f"{df.loc[s_index(df, s.train[0]['text']), 'title']} {df.loc[s_index(df, s.train[0]['text']), 'description']}"
    again = load_splits(cfg.data, log=lambda m: None)
    assert again.validation["text"] == s.validation["text"]  # seeded
    frac = load_splits(load_config(None, [f"data.train={f}", "data.label_column=topic", "data.validation_split=0.25"]).data,
                       log=lambda m: None)
    assert len(frac.validation) == 60


def s_index(df, text):
    joined = df["title"] + " " + df["description"]
    return int(np.flatnonzero(joined.values == text)[0])


def test_empty_texts_are_dropped_with_a_count(tiny_overrides, tiny_data, tmp_path, capsys):
    from loraclf.data import load_splits

    df = pd.read_csv(tiny_data["train"])
    df.loc[[1, 5], "text"] = None
    f = tmp_path / "nan.csv"
    df.to_csv(f, index=False)
    msgs = []
    s = load_splits(load_config(None, [f"data.train={f}", f"data.validation={tiny_data['val']}"]).data, log=msgs.append)
    assert len(s.train) == len(df) - 2
    assert any("dropped 2 rows" in m for m in msgs)


def test_tokenize_without_padding_then_pad_per_batch_and_group_by_length(tmp_path, tiny_data, minilm_path):
    from transformers import AutoTokenizer

    from loraclf.data import eval_loader, load_splits, tokenize, train_loader

    cfg = load_config(None, [f"data.train={tiny_data['train_2000']}", f"data.validation={tiny_data['val']}",
                             "data.max_length=128", f"data.cache_dir={tmp_path}"])
    s = load_splits(cfg.data, log=lambda m: None)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    ds = tokenize(s.train, tok, cfg.data)
    lengths = np.array(ds["length"])
    assert lengths.max() <= 128 and lengths.min() < 64  # truncated, not padded
    assert len(list(tmp_path.glob("*.arrow"))) >= 1  # cached on disk

    def padding_fraction(loader):
        real = pad = 0
        for b in loader:
            m = b["attention_mask"]
            real += int(m.sum())
            pad += int((1 - m).sum())
            assert m.shape[1] == int(m.sum(1).max())  # padded to the batch's longest row only
        return pad / (real + pad)

    grouped = padding_fraction(train_loader(ds, tok, 32, True, 0, 0))
    plain = padding_fraction(train_loader(ds, tok, 32, False, 0, 0))
    assert grouped < 0.1 < plain / 2  # length grouping removes most padding
    order = [int(i) for b in eval_loader(ds, tok, 16) for i in b["index"]]
    assert sorted(order) == list(range(len(ds)))


