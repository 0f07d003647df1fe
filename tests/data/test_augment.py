"""EDA augmentation over the real WordNet (nltk data or Debian's wordnet-base), no mocks."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import need

from loraclf.data import wordnet as augment  # the WordNet names (WORDNET_ENV, LEXNAMES_TEXT, ...) moved to data.wordnet
from loraclf.data.augment import Augmenter, augment_dataset, augment_file
from loraclf.data.wordnet import get_wordnet
from loraclf.config import AugmentConfig
from loraclf.base.errors import ConfigError, DataError, LoraclfError

SENTENCE = "The market rallied after strong quarterly earnings reports"  # 8 distinct words, one stopword


def only(**rates) -> AugmentConfig:
    base = dict(synonym_p=0.0, insert_p=0.0, swap_p=0.0, delete_p=0.0)
    return AugmentConfig(**{**base, **rates})


def wordnet_synonyms(word: str) -> set[str]:
    """Every lemma of every synset of word, as text (spaces, lowercase)."""
    return {lemma.name().replace("_", " ").lower() for s in get_wordnet().synsets(word) for lemma in s.lemmas()}


def inserted_spans(before: list[str], after: list[str]) -> list[str]:
    """Every text whose insertion somewhere into before gives after."""
    m = len(after) - len(before)
    return [" ".join(after[k:k + m]) for k in range(len(before) + 1)
            if m > 0 and after[:k] == before[:k] and after[k + m:] == before[k:]]


def words(text: str) -> list[str]:
    return [re.sub(r"^\W+|\W+$", "", t) for t in text.split()]


# ---------------------------------------------------------------------------------------------- WordNet


def test_real_synonyms_for_quick_and_market():
    aug = Augmenter(only(synonym_p=1.0))
    assert "speedy" in aug.synonyms("quick")
    assert "marketplace" in aug.synonyms("market")
    for word in ("quick", "market"):
        outs = {aug.augment(word, random.Random(seed)) for seed in range(12)}
        assert word not in outs
        assert outs <= wordnet_synonyms(word)
        assert len(outs) >= 3  # the choice is random, not always the first synonym


def test_lexnames_match_the_wordnet_data():
    lines = augment.LEXNAMES_TEXT.splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    wn = get_wordnet()
    assert wn.synset("dog.n.01").lexname() == "noun.animal"
    assert wn.synset("run.v.01").lexname() == "verb.motion"
    assert wn.synset("quick.a.01").lexname() == "adj.all"


def test_system_wordnet_without_lexnames_file(monkeypatch):
    need(Path("/usr/share/wordnet/data.noun"), "Debian's wordnet-base (.ci/apt-augment.txt)")
    assert not Path("/usr/share/wordnet/lexnames").exists()
    monkeypatch.setenv(augment.WORDNET_ENV, "/usr/share/wordnet")
    wn = get_wordnet()
    assert wn.get_version() == "3.0"
    assert "marketplace" in {lemma.name() for s in wn.synsets("market") for lemma in s.lemmas()}
    assert wn.synset("market.n.01").lexname() == "noun.act"


def test_nltk_data_wordnet_is_preferred(monkeypatch, tmp_path):
    need(Path("/usr/share/wordnet/data.noun"), "Debian's wordnet-base (.ci/apt-augment.txt)")
    import shutil

    import nltk.data

    # The layout `python -m nltk.downloader wordnet` makes, built from the system files.
    folder = tmp_path / "corpora" / "wordnet"
    folder.mkdir(parents=True)
    for name in augment._WORDNET_FILES:
        shutil.copyfile(Path("/usr/share/wordnet") / name, folder / name)
    (folder / "lexnames").write_text(augment.LEXNAMES_TEXT)
    monkeypatch.delenv(augment.WORDNET_ENV, raising=False)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    wn = get_wordnet()
    assert str(wn.root) == str(folder)
    assert wn.synset("dog.n.01").lexname() == "noun.animal"


def test_missing_wordnet_dir_error_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(augment.WORDNET_ENV, str(tmp_path / "empty"))
    with pytest.raises(LoraclfError) as info:
        get_wordnet()
    msg = str(info.value)
    assert "\n" not in msg
    assert "python -m nltk.downloader wordnet" in msg and "apt-get install wordnet-base" in msg
    assert augment.WORDNET_ENV in msg
    with pytest.raises(LoraclfError, match="apt-get install wordnet-base"):
        Augmenter(only(synonym_p=0.1))
    # Swap and delete need no WordNet.
    assert Augmenter(only(swap_p=0.5)).augment("a b c d", random.Random(0)) != "a b c d"


def test_wordnet_not_installed_anywhere_error(monkeypatch, tmp_path):
    import nltk.data

    monkeypatch.delenv(augment.WORDNET_ENV, raising=False)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(augment, "SYSTEM_WORDNET_DIRS", (str(tmp_path),))
    with pytest.raises(LoraclfError) as info:
        get_wordnet()
    msg = str(info.value)
    assert "\n" not in msg
    assert msg == ("WordNet is not installed (augmentation needs it): install it with "
                   "`python -m nltk.downloader wordnet` or `apt-get install wordnet-base`")


# ---------------------------------------------------------------------------------------------- operations


def test_synonym_replacement_only():
    aug = Augmenter(only(synonym_p=0.1))  # 8 words -> one replacement
    for seed in range(20):
        out = aug.augment(SENTENCE, random.Random(seed))
        tokens = SENTENCE.split()
        replaced = [word for i, word in enumerate(tokens) for synonym in wordnet_synonyms(word)
                    if out == " ".join(tokens[:i] + [synonym] + tokens[i + 1:])]
        assert replaced and "The" not in replaced, out


def test_random_insertion_only():
    aug = Augmenter(only(insert_p=0.1))
    allowed = set().union(*(wordnet_synonyms(w) for w in SENTENCE.lower().split()[1:]))
    for seed in range(20):
        out = aug.augment(SENTENCE, random.Random(seed))
        assert len(out.split()) > len(SENTENCE.split()), out
        assert set(inserted_spans(SENTENCE.split(), out.split())) & allowed, out


def test_random_swap_only():
    text = "Oil prices rose, analysts said on Monday."
    aug = Augmenter(only(swap_p=0.25))
    outs = {aug.augment(text, random.Random(seed)) for seed in range(10)}
    assert len(outs - {text}) >= 5
    for out in outs:
        assert Counter(words(out)) == Counter(words(text))
        # punctuation stays in place while words trade positions
        assert [re.sub(r"\w", "", t) for t in out.split()] == [re.sub(r"\w", "", t) for t in text.split()]


def test_random_deletion_only():
    text = "Oil prices rose sharply, analysts said on Monday."
    aug = Augmenter(only(delete_p=0.25))  # 8 words -> two deletions
    for seed in range(20):
        out = aug.augment(text, random.Random(seed))
        kept = words(out)
        assert len(kept) == 6, out
        it = iter(words(text))
        assert all(w in it for w in kept), out  # the survivors keep their order
        assert out.endswith("."), out  # the full stop moves to the word before a deleted last word
    assert Augmenter(only(delete_p=1.0)).augment("alone", random.Random(0)) == "alone"


def test_stopwords_numbers_and_urls_are_never_replaced():
    aug = Augmenter(only(synonym_p=1.0, insert_p=1.0))
    protected = "It is 42 and 3.14 at https://example.com/market or www.example.org, so it was."
    for seed in range(5):
        assert aug.augment(protected, random.Random(seed)) == protected  # nothing there can change

    aug = Augmenter(only(synonym_p=1.0))
    text = "The market fell 42 points at https://example.com/market on Monday"
    for seed in range(5):
        out = aug.augment(text, random.Random(seed)).split()
        assert out[0] == "The" and "42" in out and "https://example.com/market" in out and "on" in out
        assert out != text.split()  # market, fell and points can change


def test_capitalisation_is_kept():
    aug = Augmenter(only(synonym_p=1.0))
    for seed in range(10):
        title = aug.augment("Quick", random.Random(seed))
        assert title[0].isupper() and title[1:] == title[1:].lower() and title.lower() in wordnet_synonyms("quick")
        upper = aug.augment("QUICK", random.Random(seed))
        assert upper.isupper() and upper.lower() in wordnet_synonyms("quick")
        lower = aug.augment("quick", random.Random(seed))
        assert lower.islower()
        # a capitalised word inside a sentence is a name, not a common noun
        assert "Apple" in aug.augment("analysts said Apple shares", random.Random(seed)).split()


def test_punctuation_attached_to_a_replaced_word_is_kept():
    aug = Augmenter(only(synonym_p=1.0))
    out = aug.augment('"Quick!"', random.Random(0))
    assert out.startswith('"') and out.endswith('!"') and out[1:-2].lower() in wordnet_synonyms("quick")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list("abcXYZ  ,.!?'-\n0123") + ["market", "Quick", "the", "https://x.org"]),
                max_size=30).map("".join),
       st.integers(0, 2**32))
def test_any_text_gives_text_and_swap_keeps_its_words(text, seed):
    out = Augmenter(AugmentConfig(synonym_p=0.3, insert_p=0.3, swap_p=0.3, delete_p=0.3)).augment(text, random.Random(seed))
    assert isinstance(out, str) and bool(out.strip()) == bool(text.strip())
    swapped = Augmenter(only(swap_p=0.5)).augment(text, random.Random(seed))
    assert Counter(words(swapped)) == Counter(words(text))


def test_all_rates_zero_is_a_config_error():
    with pytest.raises(ConfigError, match="all 0"):
        Augmenter(only())


# ---------------------------------------------------------------------------------------------- datasets

TEXTS = [
    "Stocks rallied on Monday as oil prices fell sharply.",
    "The striker scored twice in the final minutes of the match.",
    "Researchers unveiled a faster chip for mobile phones.",
    "Voters waited in long lines to cast their ballots.",
]
CFG = AugmentConfig(synonym_p=0.2, insert_p=0.1, swap_p=0.1, delete_p=0.1, num_copies=3)


def test_augment_dataset_keeps_originals_and_labels():
    labels = ["business", "sports", "sci/tech", "world"]
    texts, out_labels = augment_dataset(TEXTS, labels, CFG, seed=7)
    assert len(texts) == len(out_labels) == 4 * len(TEXTS)
    assert texts[:4] == TEXTS
    assert out_labels == labels * 4
    assert all(t not in TEXTS for t in texts[4:])
    with pytest.raises(DataError, match="4 texts but 3 labels"):
        augment_dataset(TEXTS, labels[:3], CFG, seed=7)


def test_augment_dataset_same_seed_same_text_other_seed_other_text():
    first, _ = augment_dataset(TEXTS, [0, 1, 2, 3], CFG, seed=1)
    assert augment_dataset(TEXTS, [0, 1, 2, 3], CFG, seed=1)[0] == first
    assert augment_dataset(TEXTS, [0, 1, 2, 3], CFG, seed=2)[0][4:] != first[4:]


def test_augment_dataset_does_not_depend_on_the_hash_seed():
    script = (
        "from loraclf.data.augment import augment_dataset; from loraclf.config import AugmentConfig; import json, sys; "
        "cfg = AugmentConfig(**json.loads(sys.argv[1])); texts = json.loads(sys.argv[2]); "
        "print(json.dumps(augment_dataset(texts, list(range(len(texts))), cfg, 1)[0]))"
    )
    import dataclasses
    import json

    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    run = subprocess.run([sys.executable, "-c", script, json.dumps(dataclasses.asdict(CFG)), json.dumps(TEXTS)],
                         env=env, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == augment_dataset(TEXTS, list(range(len(TEXTS))), CFG, 1)[0]


# ---------------------------------------------------------------------------------------------- files


@pytest.fixture
def ag_news_50(tiny_data, tmp_path) -> Path:
    """The first 50 rows of the AG-News-shaped tiny_data train file."""
    path = tmp_path / "train50.csv"
    pd.read_csv(tiny_data["train"], nrows=50).to_csv(path, index=False)
    return path


def test_augment_file_round_trip_on_ag_news(ag_news_50, tmp_path):
    cfg = AugmentConfig(synonym_p=0.1, num_copies=1)
    result = augment_file(ag_news_50, tmp_path / "out.jsonl", cfg, seed=3)
    original = pd.read_csv(ag_news_50)
    out = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert result["rows_in"] == 50 and result["rows_out"] == 100 == len(out)
    assert result["label_column"] == "label"
    assert len(result["examples"]) == 5 and result["examples"][0][0] == original["text"][0]
    assert list(out.columns) == list(original.columns)
    pd.testing.assert_frame_equal(out.iloc[:50].reset_index(drop=True), original, check_dtype=False)
    copies = out.iloc[50:].reset_index(drop=True)
    for column in ("label", "title", "description"):
        assert copies[column].tolist() == original[column].tolist()
    assert (copies["text"] != original["text"]).sum() >= 45
    assert [after for _, after in result["examples"]] == copies["text"][:5].tolist()

    augment_file(ag_news_50, tmp_path / "out.parquet", cfg, seed=3)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), out, check_dtype=False)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_augment_file_bad_inputs(tmp_path):
    cfg = AugmentConfig(synonym_p=0.1)
    out = tmp_path / "out.csv"
    table = pd.DataFrame({"sentence": ["Stocks rallied on Monday."], "label": [1]})

    def error(*args, **kwargs) -> str:
        with pytest.raises(DataError) as info:
            augment_file(*args, **kwargs)
        assert "\n" not in str(info.value)
        assert not out.exists()
        return str(info.value)

    assert error(tmp_path / "nope.csv", out, cfg, 0) == f"input file not found: {tmp_path / 'nope.csv'}"

    (tmp_path / "data.xlsx").write_bytes(b"x")
    assert "unknown input format '.xlsx'" in error(tmp_path / "data.xlsx", out, cfg, 0)

    table.to_csv(tmp_path / "data.csv", index=False)
    assert "unknown output format '.txt'" in error(tmp_path / "data.csv", tmp_path / "out.txt", cfg, 0)
    msg = error(tmp_path / "data.csv", out, cfg, 0)
    assert "has no text column 'text'" in msg and "its columns are: sentence, label" in msg

    table.to_pickle(tmp_path / "data.pkl")
    assert "allow_pickle=True" in error(tmp_path / "data.pkl", out, cfg, 0, text_column="sentence")
    result = augment_file(tmp_path / "data.pkl", out, cfg, 0, text_column="sentence", allow_pickle=True)
    assert result["rows_out"] == 2 and pd.read_csv(out)["label"].tolist() == [1, 1]


# ---------------------------------------------------------------------------------------------- training


@pytest.fixture
def recorded_augmentations(monkeypatch) -> list[dict]:
    """Every call of train._augmented (the real one), with the rows it got and the rows it returned."""
    from loraclf.training import inputs as train_mod

    calls = []
    real = train_mod._augmented

    def recording(ds, cfg, seed, say):
        out = real(ds, cfg, seed, say)
        calls.append({"seed": seed, "in": list(ds["text"]), "out": list(out["text"]), "labels": list(out["label"])})
        return out

    monkeypatch.setattr(train_mod, "_augmented", recording)
    return calls


def file_texts(path: Path) -> list[str]:
    """The texts of a data file as loraclf.data loads them (surrounding whitespace stripped)."""
    return [t.strip() for t in pd.read_csv(path)["text"]]


def test_training_augments_the_train_split_only(tiny_overrides, tiny_data, recorded_augmentations, capsys):
    from loraclf.config import load_config
    from loraclf.training import train

    cfg = load_config(None, tiny_overrides + ["augment.enabled=true", "augment.synonym_p=0.2", "train.seed=5"])
    result = train(cfg)
    log = capsys.readouterr().err
    train_texts = file_texts(tiny_data["train"])

    assert "augmentation: 240 -> 480 training rows" in log
    assert "480 train / 80 val / 80 test rows" in log
    [call] = recorded_augmentations  # mode once: one draw, before training
    assert call["seed"] == 5 and call["in"] == train_texts
    assert call["out"][:240] == train_texts
    assert sum(a != b for a, b in zip(call["out"][240:], train_texts)) >= 200  # copies really differ
    assert call["labels"][240:] == call["labels"][:240]

    # val and test are scored on their own rows, as they are in the files
    predictions = pd.read_csv(result.run_dir / "val_predictions.csv")
    assert predictions["text"].tolist() == file_texts(tiny_data["val"])
    assert result.metrics["val"]["n"] == 80 and result.metrics["test"]["n"] == 80
    assert result.metrics["global_step"] == 6


def test_per_epoch_draws_fresh_copies_every_epoch(tiny_overrides, tiny_data, tmp_path, recorded_augmentations, capsys):
    from loraclf.config import load_config
    from loraclf.training import train

    small = tmp_path / "train40.csv"
    pd.read_csv(tiny_data["train"]).groupby("label").head(10).to_csv(small, index=False)
    texts = file_texts(small)
    # 40 rows + 40 copies = 80 rows = 5 steps of 16 per epoch: 12 steps run epochs 0, 1 and part of 2
    cfg = load_config(None, tiny_overrides + [f"data.train={small}", "train.max_steps=12", "augment.enabled=true",
                                              "augment.synonym_p=0.2", "augment.mode=per_epoch"])
    result = train(cfg)
    log = capsys.readouterr().err

    assert "80 train / 80 val / 80 test rows; 12 steps (5/epoch)" in log
    assert log.count("augmentation: 40 -> 80 training rows") == 3
    assert [c["seed"] for c in recorded_augmentations] == [42, 43, 44]  # train.seed + epoch
    copies = [c["out"][40:] for c in recorded_augmentations]
    for call in recorded_augmentations:
        assert call["in"] == texts and call["out"][:40] == texts  # always from the originals, never copies of copies
    assert copies[0] != copies[1] and copies[1] != copies[2]
    assert sum(a != b for a, b in zip(copies[0], copies[1])) >= 20
    assert result.metrics["global_step"] == 12
    assert pd.read_csv(result.run_dir / "val_predictions.csv")["text"].tolist() == file_texts(tiny_data["val"])


def test_train_without_wordnet_fails_before_the_run_folder(tiny_overrides, tmp_path):
    empty = tmp_path / "no-wordnet"
    empty.mkdir()
    env = {**os.environ, augment.WORDNET_ENV: str(empty)}
    run = subprocess.run([sys.executable, "-m", "loraclf", "train", *tiny_overrides, "augment.enabled=true",
                          "augment.mode=per_epoch"], env=env, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith(f"loraclf train: error: no WordNet in {augment.WORDNET_ENV}={empty}")
    assert "python -m nltk.downloader wordnet" in lines[0]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------- CLI


def loraclf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loraclf", *args], capture_output=True, text=True)


def test_cli_augment_writes_rows_and_prints_pairs(ag_news_50, tmp_path):
    out = tmp_path / "aug.csv"
    run = loraclf("augment", "--input", str(ag_news_50), "--output", str(out), "--synonym-p", "0.1",
                  "--num-copies", "2", "--seed", "3", "--show", "2")
    assert run.returncode == 0, run.stderr
    original = pd.read_csv(ag_news_50)
    written = pd.read_csv(out)
    assert len(written) == 150 and written["text"][:50].tolist() == original["text"].tolist()
    assert written["label"].tolist() == original["label"].tolist() * 3
    lines = run.stdout.splitlines()
    assert lines[0] == f"- {original['text'][0]}" and lines[1] == f"+ {written['text'][50]}"
    assert lines[2] == f"- {original['text'][1]}" and lines[3] == f"+ {written['text'][51]}"
    assert lines[4] == f"50 rows in, 150 rows out -> {out}"
    assert len(lines) == 5


def test_cli_augment_bad_input_is_one_line(tmp_path, capsys):
    from loraclf import cli

    out = tmp_path / "aug.csv"
    run = loraclf("augment", "--input", str(tmp_path / "missing.csv"), "--output", str(out))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"loraclf augment: error: input file not found: {tmp_path / 'missing.csv'}"

    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["Stocks rallied on Monday."], "label": [1]}).to_csv(src, index=False)
    for args, expected in (
        (["--synonym-p", "1.5"], "augment.synonym_p"),
        (["--synonym-p", "0"], "all 0"),
        (["--num-copies", "0"], "augment.num_copies"),
        (["--text-column", "sentence"], "has no text column 'sentence'"),
    ):
        assert cli.main(["augment", "--input", str(src), "--output", str(out), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("loraclf augment: error: ") and expected in err, err
        assert not out.exists()
