"""`loraclf select` / `Classifier.select` (issue 40) on tiny real runs: the order each strategy picks rows in
(checked against probabilities computed here from the model's own logits), seeded random, the diverse strategy's
spread over clusters, exclusion of labelled and repeated texts, the pool's format kept, the API and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from loraclf import cli
from loraclf.api import Classifier
from loraclf.base.errors import ConfigError, DataError
from loraclf.cli.parser import SELECT_DEFAULT, SELECT_STRATEGIES
from loraclf.config import load_config
from loraclf.infer import strategies as strat
from loraclf.infer.engine import load_inference_model
from loraclf.infer.select import outputs_and_embeddings, select_file
from loraclf.task import SINGLE
from loraclf.training import train

from conftest import tiny_rows

RUNS = {
    "single": [],
    "multi": ["model.problem_type=multi_label_classification", "data.label_column=tags", "data.label_delimiter=';'"],
    "pair": ["data.text_column=title", "data.text_pair_column=description"],
    "regression": ["model.problem_type=regression"],
}
TAGS = ("World", "Sports", "Business", "Tech")


def _frame(n: int, seed: int) -> pd.DataFrame:
    df = pd.DataFrame(tiny_rows(n, seed))
    df["tags"] = [";".join(sorted({TAGS[label], TAGS[(label + i) % 4]})) for i, label in enumerate(df["label"])]
    return df


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("select_files")
    out = {}
    for seed, (split, n) in enumerate((("train", 48), ("val", 16), ("pool", 60))):
        out[split] = root / f"{split}.csv"
        _frame(n, 300 + seed).rename_axis("ID").reset_index().to_csv(out[split], index=False)
    return out


@pytest.fixture(scope="module")
def runs_(tmp_path_factory, tiny_bert, files) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("select_runs")
    common = [f"model.name_or_path={tiny_bert}", f"data.train={files['train']}", f"data.validation={files['val']}",
              "data.max_length=32", "train.max_steps=3", "train.per_device_train_batch_size=16",
              "train.learning_rate=5e-3", "train.mixed_precision=fp32", "output.report=false",
              f"output.dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}"]
    return {name: Path(train(load_config(None, common + [f"output.run_name={name}"] + extra), quiet=True).run_dir)
            for name, extra in RUNS.items()}


def _probs(run: Path, texts: list[str], pairs=None, multi: bool = False) -> np.ndarray:
    """Probabilities computed here: the run's model on texts tokenized here, softmax (or sigmoid) of its logits."""
    im = load_inference_model(run, "cpu")
    enc = im.tokenizer(texts, pairs, padding=True, truncation=True, max_length=im.max_length, return_tensors="pt")
    with torch.inference_mode():
        z = im.model(**enc).logits.double().numpy()
    if multi:
        return 1 / (1 + np.exp(-z))
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _pool(files) -> pd.DataFrame:
    return pd.read_csv(files["pool"])


def test_strategy_names_agree_with_the_cli():
    assert SELECT_STRATEGIES == strat.STRATEGIES and SELECT_DEFAULT == strat.DEFAULT_STRATEGY


def test_entropy_and_margin_pick_the_least_sure_rows_first(runs_, files, tmp_path):
    pool = _pool(files)
    p = _probs(runs_["single"], pool["text"].tolist())
    entropy = -(p * np.log(p)).sum(1)
    top2 = np.sort(p, 1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    for strategy, want, scores in (("entropy", np.argsort(-entropy, kind="stable")[:8], entropy),
                                   ("margin", np.argsort(gap, kind="stable")[:8], gap)):
        out = tmp_path / f"{strategy}.csv"
        r = select_file(runs_["single"], files["pool"], out, 8, strategy)
        got = pd.read_csv(out)
        assert r["selected"] == 8 and got["select_rank"].tolist() == list(range(1, 9))
        assert got["ID"].tolist() == pool["ID"].iloc[want].tolist(), strategy
        np.testing.assert_allclose(got["select_score"], scores[want], rtol=1e-4, atol=1e-6)
        assert set(got["select_strategy"]) == {strategy}


def test_the_select_pass_gives_predicts_probabilities(runs_, files):
    im = load_inference_model(runs_["single"], "cpu")
    texts = _pool(files)["text"].tolist()
    probs, emb = outputs_and_embeddings(im, texts, None)
    np.testing.assert_allclose(probs, im.predict(texts), rtol=1e-4, atol=1e-6)
    assert emb.shape == (len(texts), im.model.config.hidden_size)


def test_multi_label_uncertainty_is_the_mean_binary_entropy(runs_, files, tmp_path):
    pool = _pool(files)
    p = _probs(runs_["multi"], pool["text"].tolist(), multi=True)
    h = -(p * np.log(p) + (1 - p) * np.log(1 - p)).mean(1)
    out = tmp_path / "multi.csv"
    select_file(runs_["multi"], files["pool"], out, 5, "entropy")
    got = pd.read_csv(out, keep_default_na=False)
    assert got["ID"].tolist() == pool["ID"].iloc[np.argsort(-h, kind="stable")[:5]].tolist()
    assert all(isinstance(v, str) for v in got["select_prediction"])  # label sets joined as predict joins them


def test_random_is_seeded_and_reproducible(runs_, files):
    clf = Classifier.from_run(runs_["single"], "cpu")
    pool = _pool(files)
    a, b = (clf.select(pool, 10, "random", seed=3, quiet=True) for _ in range(2))
    c = clf.select(pool, 10, "random", seed=4, quiet=True)
    assert a["ID"].tolist() == b["ID"].tolist()
    assert a["ID"].tolist() != c["ID"].tolist()
    assert a["ID"].is_unique and "select_prediction" not in a  # random needs no model pass


def test_diverse_takes_one_row_per_cluster_where_entropy_takes_one_cluster():
    rng = np.random.default_rng(0)
    n = strat.PREFILTER  # 4 clusters of n rows: all 4n rows pass the prefilter of k=4
    emb = np.concatenate([c + rng.normal(0, 0.1, (n, 8)) for c in np.eye(8)[:4] * 10])  # tight, far apart
    unsure = np.linspace(0.30, 0.40, 4 * n)  # top class probability: row 0 the least sure ...
    unsure[n:] += 0.3  # ... and every row of cluster 0 less sure than any other row
    probs = np.stack([unsure, *(np.tile((1 - unsure) / 3, (3, 1)))], axis=1)
    order_h, _ = strat.pick_entropy(probs, 4, SINGLE)
    assert list(order_h) == [0, 1, 2, 3]  # all from cluster 0
    order_d, scores = strat.pick_diverse(probs, emb, 4, SINGLE, seed=0)
    assert sorted(order_d // n) == [0, 1, 2, 3]  # one per cluster ...
    assert list(order_d) == [0, n, 2 * n, 3 * n]  # ... each cluster's least sure row, the least sure first
    assert list(scores) == sorted(scores, reverse=True)


def test_labelled_texts_repeats_and_empty_rows_are_left_out(runs_, files, tmp_path):
    pool = _pool(files).head(20)
    trained = pd.read_csv(files["train"])["text"].head(3).tolist()
    extra = pd.DataFrame({"ID": [900, 901, 902, 903, 904], "text": ["  " + trained[0] + " ", trained[1], trained[2],
                                                                    pool["text"][4], ""]})
    path = tmp_path / "pool.jsonl"
    pd.concat([pool, extra], ignore_index=True).to_json(path, orient="records", lines=True)
    r = select_file(runs_["single"], path, tmp_path / "out.jsonl", 20, "entropy")
    assert r["excluded"] == {"labelled": 3, "duplicate": 1, "empty": 1} and r["candidates"] == 20
    got = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert set(got["ID"]) == set(pool["ID"])
    with pytest.raises(DataError, match=r"--k 21 is more than the 20 rows .* \(25 rows, 3 labelled, 1 duplicate, 1 "
                                        r"empty left out\)"):
        select_file(runs_["single"], path, tmp_path / "out2.jsonl", 21, "entropy")
    assert not (tmp_path / "out2.jsonl").exists()
    r = select_file(runs_["single"], path, tmp_path / "all.jsonl", 23, "entropy", exclude_labelled=False)
    assert r["excluded"]["labelled"] == 0
    renamed = tmp_path / "renamed.csv"  # the pool's own text column: the run's training file keeps its own
    pd.read_json(path, lines=True).rename(columns={"text": "body"}).to_csv(renamed, index=False)
    r = select_file(runs_["single"], renamed, tmp_path / "renamed_out.csv", 5, "entropy", text_column="body")
    assert r["excluded"] == {"labelled": 3, "duplicate": 1, "empty": 1}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_the_output_keeps_the_pools_format_and_columns(runs_, files, tmp_path, suffix):
    pool = _pool(files)
    pool["source"] = [f"feed-{i % 3}" for i in range(len(pool))]
    path = tmp_path / f"pool{suffix}"
    read = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}[suffix]
    {".csv": lambda: pool.to_csv(path, index=False), ".jsonl": lambda: pool.to_json(path, orient="records", lines=True),
     ".parquet": lambda: pool.to_parquet(path, index=False)}[suffix]()
    select_file(runs_["single"], path, tmp_path / f"out{suffix}", 6, "margin")
    got = read(tmp_path / f"out{suffix}")
    assert list(got.columns) == list(pool.columns) + ["select_rank", "select_score", "select_strategy",
                                                      "select_prediction"]
    back = pool.set_index("ID").loc[got["ID"]].reset_index()
    pd.testing.assert_frame_equal(got[list(pool.columns)], back[list(pool.columns)], check_dtype=False)
    with pytest.raises(DataError, match="must be a"):
        select_file(runs_["single"], path, tmp_path / "out.txt", 6, "margin")


def test_pairs_read_the_pair_column_and_regression_takes_random_only(runs_, files, tmp_path):
    out = tmp_path / "pairs.csv"
    select_file(runs_["pair"], files["pool"], out, 4, "diverse")
    got = pd.read_csv(out)
    assert len(got) == 4 and got["ID"].is_unique
    clf = Classifier.from_run(runs_["pair"], "cpu")
    pool = _pool(files)
    listed = clf.select(pool["title"].tolist(), 4, "entropy", text_pair=pool["description"].tolist(), quiet=True)
    framed = clf.select(pool, 4, "entropy", quiet=True)
    assert listed["text"].tolist() == framed["title"].tolist()
    reg = Classifier.from_run(runs_["regression"], "cpu")
    with pytest.raises(ConfigError, match="regression .* use --strategy random"):
        reg.select(pool, 4, "entropy", quiet=True)
    assert len(reg.select(pool, 4, "random", quiet=True)) == 4


def test_api_and_cli_choose_the_same_rows(runs_, files, tmp_path, capsys):
    out = tmp_path / "cli.csv"
    code = cli.main(["select", str(runs_["single"]), "--pool", str(files["pool"]), "--k", "5", "--output", str(out),
                     "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and f"wrote 5 rows to label ({SELECT_DEFAULT})" in printed and "60 pool rows" in printed
    api = Classifier.from_run(runs_["single"], "cpu").select(_pool(files), 5, quiet=True)
    assert pd.read_csv(out)["ID"].tolist() == api["ID"].tolist()
    assert json.loads(api.to_json(orient="records"))[0]["select_rank"] == 1
    clf = Classifier.from_run(runs_["single"], "cpu")
    with pytest.raises(DataError, match="the pool has no rows"):
        clf.select([], 1, quiet=True)
    with pytest.raises(ConfigError, match="unknown --strategy 'entropie' \\(did you mean 'entropy'\\?\\)"):
        clf.select(["a text"], 1, "entropie", quiet=True)
