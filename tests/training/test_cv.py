"""k-fold cross-validation (loraclf.training.cv, `loraclf cv`, loraclf.cross_validate, `audit --from-cv`).

Fold assignment without a model: stratified (class counts per fold within 1), grouped (no group in two folds),
iteratively stratified multi-label (label counts per fold within 1 of an even share, where plain shuffled folds are
not), regression stratified on quantile bins. Then one cv on the tiny BERT, killed after its first fold and resumed
through the CLI: every training row gets exactly one out-of-fold prediction, the first fold is not trained again,
cv.json's mean and std are those of its per-fold metrics (which are the metrics of oof.csv's rows of each fold), the
API reuses all folds, and `audit --from-cv` takes the probabilities of oof.csv."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import loraclf
from loraclf.base.errors import ConfigError, DataError
from loraclf.cli import main
from loraclf.config import load_config, parse_override
from loraclf.task import MULTI, REGRESSION, SINGLE
from loraclf.training.cv import assign, check, folds as folds_mod, run as run_mod, run_cv

from conftest import CLASS_WORDS, need_module
from helpers_problem import PAIRS, problem_rows, type_overrides

K = 3


def per_fold_counts(held: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """fold x class (or label) counts of the held-out rows."""
    if y.ndim == 1:
        return np.array([np.bincount(y[h], minlength=y.max() + 1) for h in held])
    return np.array([y[h].sum(0) for h in held])


def covers_once(held: list[np.ndarray], n: int) -> bool:
    return np.array_equal(np.sort(np.concatenate(held)), np.arange(n))


# ------------------------------------------------------------------------------------------ fold assignment


def test_single_label_folds_are_stratified():
    y = np.random.default_rng(0).choice(4, size=203, p=[0.55, 0.25, 0.15, 0.05])
    held = assign(y, SINGLE, 5, seed=1)
    counts = per_fold_counts(held, y)
    assert covers_once(held, len(y)) and len(held) == 5
    assert (counts.max(0) - counts.min(0) <= 1).all(), counts


def test_grouped_folds_keep_each_group_in_one_fold():
    rng = np.random.default_rng(1)
    groups = [f"speaker{int(g)}" for g in rng.integers(0, 40, size=300)]
    y = rng.integers(0, 3, size=300)
    for problem_type, labels in ((SINGLE, y), (REGRESSION, rng.normal(size=300)),
                                 (MULTI, (rng.random((300, 4)) < 0.3).astype(int))):
        held = assign(labels, problem_type, 5, seed=0, groups=groups)
        assert covers_once(held, 300), problem_type
        fold_of = folds_mod.fold_of(held, 300)
        spans = {g: {int(fold_of[i]) for i in range(300) if groups[i] == g} for g in set(groups)}
        assert all(len(f) == 1 for f in spans.values()), (problem_type, spans)


def test_multi_label_folds_are_iteratively_stratified():
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(2)
    y = (rng.random((400, 6)) < np.array([0.5, 0.3, 0.1, 0.05, 0.03, 0.2])).astype(int)
    held = assign(y, MULTI, 5, seed=0)
    assert covers_once(held, len(y))
    share = y.sum(0) / 5
    spread = np.abs(per_fold_counts(held, y) - share).max()
    plain = [h for _, h in KFold(5, shuffle=True, random_state=0).split(y)]
    plain_spread = np.abs(per_fold_counts(plain, y) - share).max()
    assert spread <= 1, per_fold_counts(held, y)
    assert plain_spread > spread  # what iterative stratification buys over shuffled folds on the same rows


def test_regression_folds_are_stratified_on_target_bins():
    y = np.random.default_rng(3).lognormal(size=250)  # skewed: a plain shuffle can leave the tail to one fold
    bins = folds_mod.regression_bins(y, 5)
    assert len(np.unique(bins)) == folds_mod.MAX_BINS and np.bincount(bins).min() >= 5
    assert (np.diff(bins[np.argsort(y, kind="stable")]) >= 0).all()  # bins follow the target's order
    held = assign(y, REGRESSION, 5, seed=0)
    counts = per_fold_counts(held, bins)
    assert covers_once(held, len(y)) and (counts.max(0) - counts.min(0) <= 1).all(), counts


def test_check_refuses_what_cannot_be_folded():
    y = np.array([0] * 10 + [1] * 3)
    names = {0: "sports", 1: "world"}
    with pytest.raises(DataError, match="--folds 4 is more than the 3 training rows of class 'world'"):
        check(y, SINGLE, 4, names)
    with pytest.raises(ConfigError, match="at least 2"):
        check(y, SINGLE, 1, names)
    with pytest.raises(DataError, match="has one group \\('a'\\)"):
        check(y, SINGLE, 3, names, ["a"] * 13, "speaker")
    with pytest.raises(DataError, match="has 2 groups, fewer than --folds 3"):
        check(y, SINGLE, 3, names, ["a", "b"] * 6 + ["a"], "speaker")
    with pytest.raises(DataError, match="empty in 1 training rows \\(first at row 4\\)"):
        check(y, SINGLE, 3, names, [str(i) for i in range(4)] + [None] + [str(i) for i in range(8)], "speaker")
    check(y, SINGLE, 3, names, [str(i % 5) for i in range(13)], "speaker")  # enough of both: no error


# ------------------------------------------------------------------------------------------ a real cv, killed


def frame(n: int, seed: int) -> pd.DataFrame:
    """Texts of one class's words each, 4 classes, 2 rows per group (speaker)."""
    rng = random.Random(seed)
    return pd.DataFrame([{"text": " ".join(rng.choice(CLASS_WORDS[i % 4].split()[:8]) for _ in range(10)),
                          "label": i % 4, "speaker": f"s{i // 2}"} for i in range(n)])


def overrides(model: Path, train: Path, tmp: Path) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={train}", "data.max_length=24", "train.max_steps=40",
            "train.per_device_train_batch_size=16", "train.learning_rate=3e-2", "train.mixed_precision=fp32",
            "eval.eval_steps=20", f"output.dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}",
            "train.num_threads=1", "data.group_column=speaker", "data.validation_split=0.2"]


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def resumed(tiny_bert, tmp_path_factory):
    """A cv killed while training its second fold (through the API), then run again through the CLI."""
    tmp = tmp_path_factory.mktemp("cv")
    train = tmp / "train.csv"
    frame(60, 0).to_csv(train, index=False)
    over, out = overrides(tiny_bert, train, tmp), tmp / "cv"
    real, calls = run_mod.train_fold, []

    def dies_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed()
        return real(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(run_mod, "train_fold", dies_on_second)
    with pytest.raises(Killed):
        run_cv(load_config(None, over), out, folds=K, quiet=True)
    mp.undo()
    first = out / "fold-1" / run_mod.HELDOUT
    killed = {"files": sorted(p.name for p in out.iterdir()), "mtime": first.stat().st_mtime_ns}
    assert main(["cv", *over, "--folds", str(K), "--output", str(out), "--quiet", "--json"]) == 0
    return {"out": out, "over": over, "killed": killed, "train": train, "tmp": tmp}


def test_a_killed_cv_resumes_without_training_its_finished_fold(resumed):
    out, killed = resumed["out"], resumed["killed"]
    assert "fold-1" in killed["files"] and "cv.json" not in killed["files"]
    cv = json.loads((out / "cv.json").read_text())
    assert (cv["folds_reused"], cv["folds_trained"]) == (1, K - 1)
    assert (out / "fold-1" / run_mod.HELDOUT).stat().st_mtime_ns == killed["mtime"]
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "cv.json", "oof.csv", "report.html",
                                                *(f"fold-{i}" for i in range(1, K + 1))}
    for i in range(1, K + 1):  # each fold is a normal run folder
        assert (out / f"fold-{i}" / "adapter").is_dir() and (out / f"fold-{i}" / "metrics.json").is_file()


def test_every_training_row_gets_one_out_of_fold_prediction(resumed):
    out = resumed["out"]
    oof = pd.read_csv(out / "oof.csv")
    given = pd.read_csv(resumed["train"])
    assert list(oof["row"]) == list(range(len(given))) and list(oof["text"]) == list(given["text"])
    assert list(oof["label"]) == list(given["label"])
    assert sorted(oof["fold"].unique()) == list(range(1, K + 1))
    probs = oof[[f"p_{c}" for c in range(4)]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (probs.argmax(1) == oof["predicted"].to_numpy()).all()
    spans = oof.groupby("speaker")["fold"].nunique()
    assert (spans == 1).all()  # data.group_column: no speaker in two folds
    for i in range(1, K + 1):  # a fold's held-out rows are the rows it did not train on
        saved = np.load(out / f"fold-{i}" / run_mod.HELDOUT)
        assert list(saved["rows"]) == list(oof.index[oof["fold"] == i])


def test_cv_json_mean_and_std_are_those_of_the_folds(resumed):
    out = resumed["out"]
    cv = json.loads((out / "cv.json").read_text())
    oof = pd.read_csv(out / "oof.csv")
    acc = [float((oof.loc[oof["fold"] == i, "predicted"] == oof.loc[oof["fold"] == i, "label"]).mean())
           for i in range(1, K + 1)]
    assert [f["accuracy"] for f in cv["per_fold"]] == pytest.approx(acc)
    assert [f["held_out_rows"] for f in cv["per_fold"]] == [int((oof["fold"] == i).sum()) for i in range(1, K + 1)]
    for key in ("accuracy", "macro_f1", "loss"):
        xs = [f[key] for f in cv["per_fold"]]
        assert cv["mean"][key] == pytest.approx(np.mean(xs)) and cv["std"][key] == pytest.approx(np.std(xs, ddof=1))
    page = (out / "report.html").read_text()
    assert page.count("<td class=\"t\">fold ") == K and "mean ± std" in page
    assert f"{cv['mean']['accuracy']:.4f} ± {cv['std']['accuracy']:.4f}" in page


def test_the_api_reuses_every_finished_fold(resumed, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(run_mod, "train_fold", no_training)
    tree = {".".join(path): value for path, value in map(parse_override, resumed["over"])}
    r = loraclf.cross_validate(None, folds=K, output=resumed["out"], quiet=True, **tree)
    before = json.loads((resumed["out"] / "cv.json").read_text())
    assert r.summary["folds_reused"] == K and r.mean == pytest.approx(before["mean"])
    with pytest.raises(ConfigError, match="holds a cv run of another config or --folds"):
        loraclf.cross_validate(None, folds=K + 1, output=resumed["out"], quiet=True, **tree)
    original = resumed["train"].read_bytes()
    frame(60, 2).to_csv(resumed["train"], index=False)  # the same file, other texts: the folds are stale
    try:
        with pytest.raises(DataError, match="holds a cv run of other training rows"):
            loraclf.cross_validate(None, folds=K, output=resumed["out"], quiet=True, **tree)
    finally:
        resumed["train"].write_bytes(original)


def test_audit_takes_the_probabilities_of_a_cv_run(resumed, monkeypatch):
    need_module("cleanlab")
    from loraclf.trust import run_audit

    def no_training(*args, **kwargs):
        raise AssertionError("audit --from-cv trained a fold")

    monkeypatch.setattr(run_mod, "train_fold", no_training)
    tmp = resumed["tmp"]
    cfg = load_config(None, resumed["over"])
    r = run_audit(cfg, tmp / "audit", near_threshold=None, quiet=True, from_cv=resumed["out"])
    assert r.summary["label_issues"]["from_cv"] == str(resumed["out"]) and r.summary["label_issues"]["folds"] == K
    assert not (tmp / "audit" / "folds").exists()
    other = tmp / "other.csv"
    frame(60, 1).to_csv(other, index=False)  # other texts, same labels and size
    with pytest.raises(DataError, match="was cross-validated on other training rows"):
        run_audit(load_config(None, [*resumed["over"], f"data.train={other}"]), tmp / "audit2", near_threshold=None,
                  quiet=True, from_cv=resumed["out"])
    assert not (tmp / "audit2").exists()


@pytest.mark.parametrize("kind", [MULTI, REGRESSION, PAIRS])
def test_every_problem_type_gets_its_out_of_fold_columns(kind, tiny_bert, tmp_path):
    train = tmp_path / "train.csv"
    problem_rows(24, 0).to_csv(train, index=False)
    over = [f"model.name_or_path={tiny_bert}", f"data.train={train}", "data.max_length=24", "train.max_steps=4",
            "train.mixed_precision=fp32", f"data.cache_dir={tmp_path / 'cache'}", "train.num_threads=1",
            "data.validation_split=0.25", *type_overrides(kind)]
    r = run_cv(load_config(None, over), tmp_path / "cv", folds=2, quiet=True)
    oof = pd.read_csv(tmp_path / "cv" / "oof.csv", keep_default_na=False)
    assert list(oof["row"]) == list(range(24)) and sorted(set(oof["fold"])) == [1, 2]
    probs = [c for c in oof.columns if c.startswith("p_")]
    if kind == REGRESSION:
        assert not probs and np.isfinite(oof["predicted"].astype(float)).all()
        assert list(oof["label"]) == pytest.approx(list(problem_rows(24, 0)["score"]))
    elif kind == MULTI:
        assert len(probs) == 4 and set(oof["label"]) == set(problem_rows(24, 0)["labels"])
    else:
        assert "text_pair" in oof.columns and len(probs) == 2
    assert set(r.mean) == {k for k in r.summary["per_fold"][0] if k not in ("fold", "folder", "held_out_rows")
                           and r.summary["per_fold"][0][k] is not None}
