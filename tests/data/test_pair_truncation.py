"""data.truncation=only_first / only_second on real sentence pairs (issue 42): where the side that may be cut is
shorter than the excess (a long description beside a short title), the tokenizer raised mid-run. Those pairs are
cut with longest_first instead, with one warning; every other pair is cut exactly as the strategy cuts it."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from conftest import SHARED, need
from loraclf import cli
from loraclf.config import load_config
from loraclf.data import windows

AG_PAIRS = SHARED / "data" / "ag_pairs"


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    return pd.read_csv(need(AG_PAIRS, "ag_pairs data") / "val.csv")


def _data(strategy: str, max_length: int):
    return load_config(None, ["data.text_column=title", "data.text_pair_column=description",
                              f"data.truncation={strategy}", f"data.max_length={max_length}"]).data


def _own(tokenizer, a: str, b: str, strategy: str, max_length: int):
    try:
        return tokenizer(a, b, truncation=strategy, max_length=max_length)["input_ids"]
    except Exception:  # the tokenizers' "Sequence to truncate too short to respect the provided max_length"
        return None


@pytest.mark.parametrize("strategy", ["only_first", "only_second"])
@pytest.mark.parametrize("max_length", [32, 128])
def test_one_side_truncation_on_ag_pairs_never_raises(tokenizer, pairs, strategy, max_length, caplog, monkeypatch):
    titles, descriptions = pairs["title"].tolist(), pairs["description"].tolist()
    monkeypatch.setattr(windows, "_WARNED", set(), raising=False)  # the warning is once per process
    with caplog.at_level(logging.WARNING, logger="loraclf.data.windows"):
        enc = windows.encode(tokenizer, titles, descriptions, _data(strategy, max_length))
    fallback = 0
    for i, ids in enumerate(enc["input_ids"]):
        assert len(ids) <= max_length
        own = _own(tokenizer, titles[i], descriptions[i], strategy, max_length)
        if own is None:  # the strategy cannot fit this pair: both sides are cut
            fallback += 1
            assert ids == tokenizer(titles[i], descriptions[i], truncation="longest_first",
                                    max_length=max_length)["input_ids"]
        else:
            assert ids == own
    assert enc["doc"] == list(range(len(titles)))
    warnings = [r.getMessage() for r in caplog.records if "data.truncation" in r.getMessage()]
    if fallback:
        assert warnings == [f"data.truncation={strategy}: {fallback} of {len(titles)} pairs have a "
                            f"{'first' if strategy == 'only_second' else 'second'} text that alone fills "
                            f"data.max_length={max_length}; those are cut with longest_first (both sides) instead"]
    else:
        assert not warnings
    if strategy == "only_first" and max_length == 32:
        assert fallback > 0  # the case that raised: titles are short, descriptions long


@pytest.mark.parametrize("strategy", ["only_first", "only_second"])
def test_a_short_side_beside_a_very_long_one(tokenizer, strategy):
    short, long = "Markets rally", "shares profit investors merger earnings " * 600  # ~24k characters
    for a, b in ((short, long), (long, short)):
        enc = windows.encode(tokenizer, [a, short], [b, short], _data(strategy, 32))
        assert [len(x) for x in enc["input_ids"]][0] == 32
        assert enc["input_ids"][1] == tokenizer(short, short)["input_ids"]


def test_training_on_ag_pairs_with_only_first_runs(tiny_bert, pairs, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORACLF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(windows, "_WARNED", set(), raising=False)
    argv = ["train", f"model.name_or_path={tiny_bert}", f"data.train={AG_PAIRS / 'val.csv'}",
            f"data.validation={AG_PAIRS / 'test.csv'}", "data.text_column=title",
            "data.text_pair_column=description", "data.truncation=only_first", "data.max_length=32",
            "train.max_steps=2", "train.per_device_train_batch_size=8", "eval.eval_steps=2", "output.report=false",
            f"output.dir={tmp_path / 'runs'}", "output.run_name=pairs", f"data.cache_dir={tmp_path / 'tok'}"]
    assert cli.main(argv) == 0, capfd.readouterr().err[-2000:]
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert sum("data.truncation=only_first:" in line for line in err.splitlines()) == 1
    assert (tmp_path / "runs" / "pairs" / "metrics.json").is_file()
