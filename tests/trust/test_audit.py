"""`loraclf audit` on the tiny BERT: planted duplicates (exact and near, within train and across splits) are found,
a planted label flip ranks first among the issues, a second audit reuses the finished folds, --write-clean leaves
the input alone, and `loraclf train` warns about validation/test rows that repeat training rows."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loraclf.config import load_config
from loraclf.data import warn_overlap
from loraclf.trust import run_audit
from loraclf.trust.duplicates import nearest

from conftest import CLASS_WORDS

FOLDS = 2
# a random tiny encoder's mean-pooled embeddings are all alike (cosine 0.95-0.98 between unrelated texts here);
# the planted near-duplicate measures 0.99
NEAR = 0.985


def frame(n: int, seed: int) -> pd.DataFrame:
    """Texts of 8 words of one class only, so that even the tiny model separates the classes in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = CLASS_WORDS[i % 4].split()[:8]
        rows.append({"text": " ".join(rng.choice(words) for _ in range(rng.randint(8, 14))), "label": i % 4})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """train/val/test with: train row 5 repeated (case and punctuation changed) as train row 50 and as val row 3;
    train row 7 near-repeated (one word appended) in test row 4; train row 11 with its label flipped."""
    root = tmp_path_factory.mktemp("planted")
    train, val, test = frame(96, 1), frame(24, 2), frame(24, 3)
    train.loc[50, ["text", "label"]] = [train.loc[5, "text"].upper() + " !!", train.loc[5, "label"]]
    val.loc[3, "text"] = "  " + train.loc[5, "text"].replace(" ", ",  ") + "."
    test.loc[4, "text"] = train.loc[7, "text"] + " " + train.loc[7, "text"].split()[0]
    train.loc[11, "label"] = (train.loc[11, "label"] + 2) % 4
    paths = {}
    for name, df in (("train", train), ("val", val), ("test", test)):
        paths[name] = root / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths


def overrides(model: Path, paths: dict, tmp: Path) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={paths['train']}", f"data.validation={paths['val']}",
            f"data.test={paths['test']}", "data.max_length=24", "train.max_steps=300", "train.few_shot=false",
            "train.per_device_train_batch_size=16", "train.learning_rate=3e-2", "train.mixed_precision=fp32",
            "eval.eval_steps=100", "output.report=false", f"output.dir={tmp / 'runs'}",
            f"data.cache_dir={tmp / 'cache'}",
            "train.num_threads=1"]


@pytest.fixture(scope="module")
def audited(tiny_bert, planted, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    cfg = load_config(None, overrides(tiny_bert, planted, tmp))
    clean = tmp / "clean.csv"
    result = run_audit(cfg, tmp / "out", folds=FOLDS, near_threshold=NEAR, write_clean=clean, quiet=True)
    return result, cfg, tmp, clean


def test_planted_duplicates_are_found_within_and_across_splits(audited):
    dups = audited[0].duplicates
    found = {(r.kind, r.scope, r.row, r.duplicate_of_row) for r in dups.itertuples()}
    assert ("exact", "within train", 50, 5) in found
    assert ("exact", "train-validation", 3, 5) in found
    near = dups[(dups["scope"] == "train-test") & (dups["row"] == 4)]
    assert list(near["duplicate_of_row"]) == [7] and near["similarity"].iloc[0] >= NEAR


def test_a_planted_label_flip_ranks_first(audited):
    issues = audited[0].issues
    assert len(issues) >= 1
    first = issues.iloc[0]
    assert first["row"] == 11, issues.head()
    assert first["suggested_label"] != first["given_label"]


def test_files_summary_and_clean_file(audited, planted):
    result, cfg, tmp, clean = audited
    out = result.output
    assert {p.name for p in out.iterdir()} == {"issues.csv", "duplicates.csv", "summary.json", "audit.html", "folds"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["train"]["rows"] == 96
    assert summary["splits"]["train"]["class_balance"]["1"]["rows"] == 26  # + row 11 (flipped), row 50 (copy of 5)
    assert summary["duplicates"]["within train"]["exact"] == 1
    assert "<table>" in (out / "audit.html").read_text()
    written = pd.read_csv(clean)
    dups = result.duplicates
    dropped = set(dups.loc[dups["split"] == "train", "row"]) | set(result.issues["row"]) | \
        set(dups.loc[(dups["split"] != "train") & (dups["duplicate_of_split"] == "train"), "duplicate_of_row"])
    assert {50, 5, 7, 11} <= dropped  # a repeat, two rows repeated by validation/test (leaks), the flip
    original = pd.read_csv(planted["train"])
    assert list(written["text"]) == [t for i, t in enumerate(original["text"]) if i not in dropped]
    assert len(original) == 96  # the original is untouched


def test_a_second_audit_reuses_the_finished_folds(audited, monkeypatch):
    result, cfg, tmp, _ = audited
    import loraclf.training.cv.run as run_mod  # the one k-fold loop, which the audit's folds run on

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(run_mod, "train_fold", no_training)
    relabelled = tmp / "relabelled.csv"
    again = run_audit(cfg, result.output, folds=FOLDS, near_threshold=None, write_clean=relabelled, relabel=True,
                      quiet=True)
    assert again.summary["label_issues"]["folds_reused"] == FOLDS
    assert list(again.issues["row"]) == list(result.issues["row"])
    assert set(again.duplicates["kind"]) == {"exact"}
    written = pd.read_csv(relabelled)  # exact repeats dropped (rows 50 and 5), the flip given its label back
    assert len(written) == 94 and written.loc[10, "label"] == 3  # row 11, one row (5) earlier


def test_train_warns_about_rows_that_repeat_training_rows(planted, tmp_path, caplog):
    from loraclf.data import load_splits

    cfg = load_config(None, [f"data.train={planted['train']}", f"data.validation={planted['val']}",
                             f"data.test={planted['test']}"])
    splits = load_splits(cfg.data, log=lambda m: None)
    with caplog.at_level(logging.WARNING, logger="loraclf"):
        counts = warn_overlap(splits)
    assert counts == {"validation": 1, "test": 0}  # the near-duplicate in test is not exact
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "1 of 24 validation rows repeat training rows" in lines[0]


def test_nearest_is_blocked_and_looks_only_backwards_within_a_split():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[30] = x[4]
    best, score = nearest(x, x, same=True, block_floats=64)  # blocks of one row
    whole, _ = nearest(x, x, same=True)
    assert best[30] == 4 and score[30] == pytest.approx(1.0) and best[0] == -1
    assert np.array_equal(best, whole)


def test_the_summary_names_the_probability_sources_and_the_filter(audited):
    li = audited[0].summary["label_issues"]
    assert li["filter_by"] == "both"
    assert li["probabilities"]["sources"] == ["folds", "embeddings", "tfidf"]
    assert set(li["probabilities"]["agreement_with_given_labels"]) == {"folds", "embeddings", "tfidf", "mean"}


def test_embeddings_and_tfidf_alone_train_no_fold_and_still_rank_the_flip_first(audited, monkeypatch):
    result, cfg, tmp, _ = audited
    import loraclf.training.cv.run as run_mod

    def no_training(*args, **kwargs):
        raise AssertionError("label_probs without folds trained a fold")

    monkeypatch.setattr(run_mod, "train_fold", no_training)
    out = tmp / "no_folds"
    again = run_audit(cfg, out, folds=FOLDS, near_threshold=None, quiet=True, label_probs="tfidf,embeddings",
                      filter_by="prune_by_noise_rate")
    li = again.summary["label_issues"]
    assert li["probabilities"]["sources"] == ["embeddings", "tfidf"] and li["filter_by"] == "prune_by_noise_rate"
    assert not (out / "folds").exists()
    assert again.issues.iloc[0]["row"] == 11, again.issues.head()
