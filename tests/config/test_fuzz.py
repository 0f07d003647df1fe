"""Property-based tests: config parsing and overrides, label mapping and the data readers never raise
anything but the tool's own error types (LoraclfError subclasses), whatever they are given."""

from __future__ import annotations

import json
import string

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loraclf import config as config_mod
from loraclf.config import Config, DataConfig, from_dict, load_config
from loraclf.data import normalise_label, build_label_map, encode_labels, load_splits, read_table
from loraclf.base.errors import ConfigError, DataError, LoraclfError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_FILES = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))

KEYS = [k for k, *_ in config_mod.describe_keys()]
SECTIONS = sorted({k.split(".")[0] for k in KEYS})

# ------------------------------------------------------------------------------------------ config

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["auto", "lora", "qv", "1e-4", "fp32", "", "null", "~", "[]", "{}"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=10)
key_names = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(max_size=15))


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(SECTIONS), st.text(max_size=8)),
                       st.one_of(values, st.dictionaries(st.one_of(st.sampled_from([k.split(".")[-1] for k in KEYS]),
                                                                   st.text(max_size=8)), values, max_size=6)),
                       max_size=6))
def test_from_dict_returns_a_config_or_a_config_error(data):
    try:
        cfg = from_dict(data)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        return
    assert isinstance(cfg, Config)
    assert from_dict(cfg.to_dict()) == cfg  # what validated once round-trips


raw_values = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=string.digits, min_size=4400, max_size=4500),  # over Python's int-parsing digit limit
    st.builds(lambda v: json.dumps(v), values),
    st.sampled_from(["[", "{a: [1, 2", "!!python/object:os.system ['echo hi']", "&a [*a]", "1e400", "-.inf", ".nan",
                     "2024-01-01", "0x1F", "0o17", "'quoted'", "\"x\\u0000\"", "[" * 200, "a: b: c"]),
)


@FUZZ
@given(st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", key_names, raw_values), st.text(max_size=30)),
                max_size=5))
@example(["train.learning_rate=" + "9" * 5000])
@example(["=1", "a..b=2", ".=3", "train.learning_rate.x=1"])
def test_overrides_give_a_config_or_a_config_error(overrides):
    try:
        cfg = load_config(None, overrides)
    except ConfigError:
        return
    assert isinstance(cfg, Config)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8"))))
@example(b"train:\n  seed: " + b"9" * 5000 + b"\n")
@example(b"[" * 2000)
@example(b"!!python/object/apply:os.system ['echo pwned']\n")
@example(b"? [a, b]\n: 1\n")
def test_yaml_files_give_a_config_or_a_config_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_bytes(content)
    try:
        load_config(path)
    except ConfigError:
        pass


# ------------------------------------------------------------------------------------------ label mapping

labels_strategy = st.lists(
    st.one_of(st.integers(min_value=-3, max_value=12), st.text(max_size=6), st.booleans(), st.none(),
              st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([np.int64(2), np.float64(3.0), 1.0])),
    max_size=30,
)


@FUZZ
@given(labels_strategy, st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=6)), st.integers(2, 12),
       labels_strategy)
def test_label_mapping_is_total_or_a_data_error(labels, names, max_labels, other):
    try:
        id2label = build_label_map(labels, names, max_labels)
    except DataError:
        return
    assert 2 <= len(id2label) <= max_labels
    assert sorted(id2label) == list(range(len(id2label)))
    ids = encode_labels(pd.Series(labels, dtype=object), id2label, "train")
    assert ids.dtype == np.int64 and ((ids >= 0) & (ids < len(id2label))).all()
    normalised = [normalise_label(v) for v in labels]
    if all(isinstance(v, int) for v in normalised):
        assert ids.tolist() == normalised  # integer labels keep their values (0..K-1, gaps allowed)
    else:
        assert len(set(ids.tolist())) == len(id2label)  # every name occurs in the data that defined it
        assert [id2label[i] for i in ids] == [str(v) for v in normalised]
    try:  # another split: maps into the same ids or names what is unseen
        other_ids = encode_labels(pd.Series(other, dtype=object), id2label, "test")
    except DataError as e:
        assert "never seen in training" in str(e)
        return
    assert ((other_ids >= 0) & (other_ids < len(id2label))).all()


# ------------------------------------------------------------------------------------------ data readers

cell = st.one_of(st.text(max_size=12), st.integers(-5, 5), st.floats(allow_nan=True), st.none(), st.booleans(),
                 st.sampled_from(["", " ", "NaN", "nan", "null", "\"", "a,b", "line\nbreak", "\t", "é", "\x00"]))
records = st.lists(st.dictionaries(st.sampled_from(["text", "label", "title", "x", ""]), cell, max_size=4), max_size=12)


def _csv_bytes(rows, sep=","):
    df = pd.DataFrame(rows)
    return df.to_csv(index=False, sep=sep).encode("utf-8") if len(df.columns) else b""


def _jsonl_bytes(rows):
    return "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows).encode("utf-8")


file_contents = st.one_of(
    st.tuples(st.just(".csv"), records.map(_csv_bytes)),
    st.tuples(st.just(".tsv"), records.map(lambda r: _csv_bytes(r, "\t"))),
    st.tuples(st.just(".jsonl"), records.map(_jsonl_bytes)),
    st.tuples(st.just(".json"), records.map(lambda r: json.dumps(r, allow_nan=True).encode("utf-8"))),
    st.tuples(st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".txt", ".parquet"]), st.binary(max_size=200)),
    st.tuples(st.sampled_from([".csv", ".jsonl", ".json"]),
              st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200).map(lambda t: t.encode())),
)


@FUZZ_FILES
@given(file_contents)
@example((".csv", b"text,label\n\"unclosed,1\n"))
@example((".csv", b"\xff\xfe\x00t\x00e\x00x\x00t"))
@example((".jsonl", b"1\n2\n"))
@example((".jsonl", b"[1, 2]\n"))
@example((".json", b"{\"data\": 5}"))
@example((".json", b"9" * 5000))
@example((".parquet", b"PAR1garbagePAR1"))
def test_read_table_gives_a_table_or_a_data_error(tmp_path_factory, kind_and_bytes):
    kind, content = kind_and_bytes
    path = tmp_path_factory.mktemp("read") / f"f{kind}"
    path.write_bytes(content)
    try:
        df = read_table(path)
    except DataError:
        return
    assert isinstance(df, pd.DataFrame) and len(df) > 0 and len(df.columns) > 0
    assert all(isinstance(c, str) for c in df.columns)


@FUZZ_FILES
@given(file_contents, st.sampled_from([0.1, 0.5, 1, 2, 3, 5]), st.sampled_from(["drop", "error"]),
       st.sampled_from(["text", ["text", "title"]]))
@example((".csv", b"text,label\na,0\nb,0\nc,1\nd,1\n"), 3, "drop", "text")
@example((".csv", b"text,label\na,0\nb,0\nc,1\nd,1\ne,2\nf,2\n"), 2, "drop", "text")
def test_the_whole_data_pipeline_gives_splits_or_a_data_error(tmp_path_factory, kind_and_bytes, split, empty, text_col):
    kind, content = kind_and_bytes
    path = tmp_path_factory.mktemp("splits") / f"train{kind}"
    path.write_bytes(content)
    cfg = DataConfig(train=str(path), validation_split=split, empty_text=empty, text_column=text_col)
    try:
        splits = load_splits(cfg, log=lambda m: None)
    except DataError:
        return
    assert len(splits.train) > 0 and len(splits.validation) > 0 and len(splits.id2label) >= 2
    for ds in (splits.train, splits.validation):
        assert all(isinstance(t, str) and t.strip() for t in ds["text"])
        assert all(0 <= y < len(splits.id2label) for y in ds["label"])


@FUZZ_FILES
@given(file_contents, st.sampled_from([None, "ID", "x"]), st.sampled_from(["text", "title", ["text", "title"]]))
def test_predict_input_reading_gives_texts_or_a_data_error(tmp_path_factory, kind_and_bytes, id_col, text_col):
    from loraclf.data import read_texts

    kind, content = kind_and_bytes
    path = tmp_path_factory.mktemp("texts") / f"in{kind}"
    path.write_bytes(content)
    try:
        texts, ids, df = read_texts(path, DataConfig(id_column=id_col, text_column=text_col))
    except DataError:
        return
    assert len(texts) == len(df) and all(isinstance(t, str) for t in texts)
    assert ids is None or len(ids) == len(texts)


def test_only_loraclf_errors_are_counted_as_handled():
    """The tests above catch ConfigError/DataError only: anything else (KeyError, ValueError, ...) fails them."""
    assert issubclass(ConfigError, LoraclfError) and issubclass(DataError, LoraclfError)
    assert not issubclass(ValueError, LoraclfError)
