"""Every inference path knows the problem type, sentence pairs and long texts: real tiny runs of each type (rows made
here), predicted from files, evaluated, served over real loopback HTTP, exported and loaded by stock transformers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from loraclf import task as problem
from loraclf.api import Classifier
from loraclf.config import load_config
from loraclf.base.errors import DataError, ModelError
from loraclf.publish.export import export_run
from loraclf.infer.files import evaluate_file, predict_file
from loraclf.infer.engine import load_inference_model
from loraclf.training import train

from conftest import CLASS_WORDS, tiny_rows
from helpers_infer import Server
from helpers_infer import run_blocked

NAMES = ("World", "Sports", "Business", "Tech")
FLAGS = [f"is_{n.lower()}" for n in NAMES]
# run name -> overrides on top of the common ones (see _overrides)
RUNS = {
    "single": ["eval.calibration=temperature"],
    "binary": ["data.label_column=sports", "eval.tune_thresholds=f1"],
    "multi": ["model.problem_type=multi_label_classification", "data.label_column=tags", "data.label_delimiter=';'"],
    "multi_cols": ["model.problem_type=multi_label_classification", f"data.label_columns=[{','.join(FLAGS)}]"],
    "regression": ["model.problem_type=regression", "data.label_column=rating"],
    "pair": ["data.text_column=title", "data.text_pair_column=second"],
    "chunks": ["data.long_text=chunks", "data.max_length=16", "data.stride=4"],
}


def _frame(n: int, seed: int) -> pd.DataFrame:
    """n rows with a column for every problem type: label (4 classes), sports (binary), tags (label sets joined by
    ';'), is_<name> (the same sets as 0/1 columns), rating (a number), title + second (a sentence pair)."""
    rng = random.Random(seed)
    rows = []
    for r in tiny_rows(n, seed):
        tags = sorted({NAMES[r["label"]], NAMES[rng.randrange(4)]})
        rows.append({"text": r["text"], "label": r["label"], "sports": "yes" if r["label"] == 1 else "no",
                     "tags": ";".join(tags), **{f: int(name in tags) for f, name in zip(FLAGS, NAMES)},
                     "rating": r["label"] * 3.0 + rng.random(), "title": r["title"], "second": r["description"]})
    return pd.DataFrame(rows)


def _overrides(tiny_bert: Path, files: dict, root: Path, name: str) -> list[str]:
    return [f"model.name_or_path={tiny_bert}", f"data.train={files['train']}", f"data.validation={files['val']}",
            f"data.test={files['test']}", "data.max_length=32", "train.max_steps=4",
            "train.per_device_train_batch_size=16", "train.learning_rate=5e-3", "train.mixed_precision=fp32",
            "eval.eval_steps=4", "output.report=false", f"output.dir={root / 'runs'}", f"output.run_name={name}",
            f"data.cache_dir={root / 'cache'}"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("problem_files")
    out = {}
    for seed, (split, n) in enumerate((("train", 64), ("val", 24), ("test", 20))):
        out[split] = root / f"{split}.csv"
        _frame(n, 100 + seed).to_csv(out[split], index=False)
    return out


@pytest.fixture(scope="module")
def runs_(tmp_path_factory, tiny_bert, files) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("problem_runs")
    return {name: Path(train(load_config(None, _overrides(tiny_bert, files, root, name) + extra), quiet=True).run_dir)
            for name, extra in RUNS.items()}


@pytest.fixture(scope="module")
def full(runs_, files, tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Each run's `predict --format full` of the test file: the reference of the other paths."""
    out = tmp_path_factory.mktemp("problem_full")
    ref = {}
    for name, run in runs_.items():
        predict_file(run, files["test"], out / f"{name}.csv", fmt="full", quiet=True)
        ref[name] = pd.read_csv(out / f"{name}.csv", keep_default_na=False)
    return ref


def _logits(run: Path, texts: list[str], pairs=None) -> np.ndarray:
    """The plain logits of a run's model on texts, tokenized here (truncated at the run's max_length)."""
    im = load_inference_model(run, "cpu")
    enc = im.tokenizer(texts, pairs, padding=True, truncation=True, max_length=im.max_length, return_tensors="pt")
    with torch.inference_mode():
        return im.model(**enc).logits.double().numpy()


def _decision(run: Path) -> dict:
    return json.loads((run / "decision.json").read_text())


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------------ predict files


def test_single_label_file_has_todays_columns_and_calibrated_probabilities(runs_, files, full, tmp_path):
    r = predict_file(runs_["single"], files["test"], tmp_path / "c.csv", quiet=True)
    assert list(pd.read_csv(tmp_path / "c.csv").columns) == ["ID", "Label"]
    df = full["single"]
    assert list(df.columns) == ["ID", "label", "label_id", "confidence", "prob_0", "prob_1", "prob_2", "prob_3"]
    t = _decision(runs_["single"])["temperature"]
    assert t != pytest.approx(1.0, abs=1e-3)  # a temperature was fitted: calibrated and raw probabilities differ
    z = _logits(runs_["single"], pd.read_csv(files["test"])["text"].tolist())
    probs = df.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs, _softmax(z / t), atol=1e-5)
    assert not np.allclose(probs, _softmax(z), atol=1e-3)
    assert r["problem_type"] == problem.SINGLE and sum(r["counts"].values()) == 20 == r["rows"]


def test_binary_prediction_uses_the_tuned_threshold(runs_, files, full, tmp_path):
    thresholds = _decision(runs_["binary"])["thresholds"]
    assert thresholds is not None and len(thresholds) == 1
    df = full["binary"]
    assert list(df.columns) == ["ID", "label", "label_id", "confidence", "prob_no", "prob_yes"]
    want = np.where(df["prob_yes"].to_numpy() >= thresholds[0], "yes", "no")
    assert df["label"].tolist() == want.tolist()
    np.testing.assert_allclose(df["confidence"], np.where(want == "yes", df["prob_yes"], df["prob_no"]))


@pytest.mark.parametrize("name, delimiter", [("multi", ";"), ("multi_cols", "|")])
def test_multi_label_files_list_the_labels_over_their_thresholds(runs_, files, full, tmp_path, name, delimiter):
    r = predict_file(runs_[name], files["test"], tmp_path / "c.csv", quiet=True)
    comp = pd.read_csv(tmp_path / "c.csv", keep_default_na=False)
    labels = NAMES if name == "multi" else FLAGS
    order = sorted(labels) if name == "multi" else list(labels)  # label sets: sorted names; columns: their order
    df = full[name]
    assert list(comp.columns) == ["ID", "Labels"]
    assert list(df.columns) == ["ID", "labels"] + [f"prob_{n}" for n in order]
    thresholds = np.array(_decision(runs_[name])["thresholds"])
    probs = df[[f"prob_{n}" for n in order]].to_numpy()
    z = _logits(runs_[name], pd.read_csv(files["test"])["text"].tolist())
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-z)), atol=1e-5)  # sigmoid per label
    want = [delimiter.join(n for n, on in zip(order, row) if on) for row in probs >= thresholds]
    assert comp["Labels"].tolist() == want == df["labels"].tolist()
    assert r["counts"] == {n: int(c) for n, c in zip(order, (probs >= thresholds).sum(0))}


def test_regression_files_hold_values_in_the_targets_units(runs_, files, full, tmp_path):
    r = predict_file(runs_["regression"], files["test"], tmp_path / "c.csv", quiet=True)
    comp = pd.read_csv(tmp_path / "c.csv")
    assert list(comp.columns) == ["ID", "Label"] and list(full["regression"].columns) == ["ID", "prediction"]
    d = _decision(runs_["regression"])
    assert d["target_std"] != pytest.approx(1.0) and d["target_mean"] != pytest.approx(0.0)  # standardised targets
    z = _logits(runs_["regression"], pd.read_csv(files["test"])["text"].tolist())[:, 0]
    np.testing.assert_allclose(comp["Label"], z * d["target_std"] + d["target_mean"], atol=1e-5)
    np.testing.assert_allclose(comp["Label"], full["regression"]["prediction"])
    assert set(r["summary"]) == {"mean", "std", "min", "max"} and "counts" not in r
    assert r["summary"]["mean"] == pytest.approx(comp["Label"].mean())
    assert r["summary"]["max"] == pytest.approx(comp["Label"].max())


def test_pair_files_read_the_pair_column(runs_, files, full):
    test = pd.read_csv(files["test"])
    z = _logits(runs_["pair"], test["title"].tolist(), test["second"].tolist())
    np.testing.assert_allclose(full["pair"].filter(like="prob_").to_numpy(), _softmax(z), atol=1e-5)
    alone = _softmax(_logits(runs_["pair"], test["title"].tolist()))
    assert not np.allclose(alone, _softmax(z), atol=1e-4)  # the second text changed the prediction


# ------------------------------------------------------------------------------------------ long texts


def test_chunks_predict_one_row_per_document_in_input_order(runs_, tmp_path):
    run = runs_["chunks"]
    rng = random.Random(5)
    words = " ".join(CLASS_WORDS).split()
    texts = [" ".join(rng.choice(words) for _ in range(n)) for n in (60, 3, 25, 90, 8, 40)]
    pd.DataFrame({"ID": [f"d{i}" for i in range(6)], "text": texts}).to_csv(tmp_path / "docs.csv", index=False)
    predict_file(run, tmp_path / "docs.csv", tmp_path / "out.csv", fmt="full", quiet=True)
    df = pd.read_csv(tmp_path / "out.csv")
    assert df["ID"].tolist() == [f"d{i}" for i in range(6)]
    im = load_inference_model(run, "cpu")
    t = _decision(run)["temperature"]
    for text, got in zip(texts, df.filter(like="prob_").to_numpy()):
        enc = im.tokenizer([text], truncation=True, max_length=16, stride=4, return_overflowing_tokens=True,
                           padding=True, return_tensors="pt")
        enc.pop("overflow_to_sample_mapping")
        with torch.inference_mode():
            z = im.model(**enc).logits.double().numpy()
        np.testing.assert_allclose(got, _softmax(z.mean(0) / t), atol=1e-5)  # windows pooled by their mean
    assert len(im.tokenizer(texts[3])["input_ids"]) > 16 * 3  # the long ones really span several windows


def _peak_rss_mb() -> float:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]) / 1024


def _reset_peak_rss_mb() -> float:
    """Reset this process's peak RSS to its current RSS (Linux clear_refs 5) and return it: without the reset, a
    pytest process that peaked higher in an earlier test would hide any growth here."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _peak_rss_mb()


def test_a_100k_token_document_predicts_in_bounded_memory(runs_):
    im = load_inference_model(runs_["chunks"], "cpu")
    words = [w for w in " ".join(CLASS_WORDS).split() if len(im.tokenizer.tokenize(w)) == 1]
    text = " ".join(random.Random(0).choice(words) for _ in range(100_000))
    seen = []
    hook = im.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape), with_kwargs=True)
    before = _reset_peak_rss_mb()
    try:
        out = im.predict([text, "a short one"], batch_size=32)
    finally:
        hook.remove()
    grown_mb = _peak_rss_mb() - before
    assert out.shape == (2, 4)
    windows = sum(s[0] for s in seen)
    assert windows >= 100_000 // (16 - 2)  # every window ran (16 tokens with [CLS] and [SEP], 4 shared)
    assert max(s[0] * s[1] for s in seen) <= 32 * 16  # each forward pass stays within the token budget
    assert grown_mb < 300, f"peak RSS grew by {grown_mb:.0f} MB"
    np.testing.assert_allclose(out[1], im.predict(["a short one"])[0], atol=1e-6)


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_gives_each_types_metrics_on_its_labels(runs_, files, full):
    test = pd.read_csv(files["test"], keep_default_na=False)
    m = evaluate_file(runs_["regression"], files["test"], quiet=True)
    err = full["regression"]["prediction"].to_numpy() - test["rating"].to_numpy()
    assert m["rmse"] == pytest.approx(float(np.sqrt(np.mean(err ** 2))), abs=1e-5)
    assert set(problem.SCALARS[problem.REGRESSION]) <= set(m) and m["n"] == 20 and m["file"] == str(files["test"])
    for name in ("multi", "multi_cols"):  # label sets from 'a;b' cells, and from the file's 0/1 columns
        m = evaluate_file(runs_[name], files["test"], quiet=True)
        assert set(problem.SCALARS[problem.MULTI]) <= set(m)
        truth = test[FLAGS].to_numpy().astype(bool)
        labels = sorted(NAMES) if name == "multi" else FLAGS
        pred = np.array([[n in cell.split(";" if name == "multi" else "|") for n in labels]
                         for cell in full[name]["labels"]])
        if name == "multi":
            truth = truth[:, [NAMES.index(n) for n in labels]]
        tp = (pred & truth).sum()
        assert m["micro_f1"] == pytest.approx(2 * tp / (pred.sum() + truth.sum()), abs=1e-6)
    m = evaluate_file(runs_["pair"], files["test"], quiet=True)
    assert m["accuracy"] == pytest.approx((full["pair"]["label_id"] == test["label"]).mean())


# ------------------------------------------------------------------------------------------ the Python API


def test_classifier_predicts_per_type(runs_, files, full):
    test = pd.read_csv(files["test"], keep_default_na=False)
    texts = test["text"].tolist()
    reg = Classifier.from_run(runs_["regression"])
    values = reg.predict(texts, quiet=True)
    assert all(isinstance(v, float) for v in values)
    np.testing.assert_allclose(values, full["regression"]["prediction"], atol=1e-6)
    assert isinstance(reg.predict(texts[0]), float) and reg.labels == ["rating"]
    with pytest.raises(ModelError) as e:
        reg.predict_proba(texts)
    assert str(e.value) == ("predict_proba gives class probabilities, but this model is a regression "
                            "(model.problem_type=regression); use predict for its values")
    multi = Classifier.from_run(runs_["multi"])
    assert multi.predict(texts, quiet=True) == [c.split(";") if c else [] for c in full["multi"]["labels"]]
    np.testing.assert_allclose(multi.predict_proba(texts), full["multi"].filter(like="prob_").to_numpy(), atol=1e-6)
    m = multi.evaluate(test, quiet=True)
    assert m["micro_f1"] == pytest.approx(evaluate_file(runs_["multi"], files["test"], quiet=True)["micro_f1"])


def test_classifier_takes_pairs_as_lists_or_a_dataframe(runs_, files, full):
    test = pd.read_csv(files["test"])
    clf = Classifier.from_run(runs_["pair"])
    want = full["pair"]["label"].astype(int).tolist()  # integer labels: predict gives the class ids
    assert clf.predict(test["title"].tolist(), text_pair=test["second"].tolist(), quiet=True) == want
    assert clf.predict(test, quiet=True) == want  # a DataFrame: its title and second columns
    assert clf.predict(test["title"][0], test["second"][0]) == want[0]
    np.testing.assert_allclose(clf.predict_proba(test), full["pair"].filter(like="prob_").to_numpy(), atol=1e-6)
    assert clf.evaluate(test, quiet=True)["accuracy"] == pytest.approx((np.array(want) == test["label"]).mean())
    with pytest.raises(DataError) as e:
        clf.predict(test["title"].tolist())
    assert str(e.value) == ("this model reads sentence pairs (data.text_pair_column='second'); give text_pair, one "
                            "second text per text")
    with pytest.raises(DataError) as e:
        clf.predict(["a", "b"], text_pair=["c"])
    assert str(e.value) == "text_pair has 1 texts for 2 texts; give one second text per text"
    with pytest.raises(DataError) as e:
        Classifier.from_run(runs_["single"]).predict(["a"], text_pair=["b"])
    assert "reads single texts" in str(e.value)


# ------------------------------------------------------------------------------------------ serve


@pytest.fixture(scope="module")
def server(runs_, tmp_path_factory):
    """Every run of this module as adapters on one base, behind /v1/models/{name}/predict."""
    srv = Server(runs_["single"].parent, tmp_path_factory.mktemp("problem_log") / "serve.log", "--max-wait-ms", "1")
    yield srv
    srv.stop()


def _post(server, name: str, body: dict):
    return httpx.post(f"{server.url}/v1/models/{name}/predict", json=body, timeout=60)


def test_served_answers_follow_each_models_type(server, runs_, files, full):
    test = pd.read_csv(files["test"], keep_default_na=False)
    texts = test["text"].tolist()[:4]
    single = _post(server, "single", {"texts": texts}).json()
    assert single["problem_type"] == problem.SINGLE
    got = np.array([[p["probabilities"][str(i)] for i in range(4)] for p in single["predictions"]])
    np.testing.assert_allclose(got, full["single"].filter(like="prob_").to_numpy()[:4], atol=1e-5)  # calibrated
    assert [p["label"] for p in single["predictions"]] == full["single"]["label"].astype(str).tolist()[:4]
    multi = _post(server, "multi", {"texts": texts}).json()
    thresholds = dict(zip(sorted(NAMES), _decision(runs_["multi"])["thresholds"]))
    for p, cell, row in zip(multi["predictions"], full["multi"]["labels"], full["multi"].to_dict("records")):
        assert set(p) == {"labels", "probabilities", "thresholds"}
        assert p["labels"] == (cell.split(";") if cell else []) and p["thresholds"] == pytest.approx(thresholds)
        assert p["probabilities"] == pytest.approx({n: row[f"prob_{n}"] for n in NAMES}, abs=1e-5)
    reg = _post(server, "regression", {"text": texts[0]}).json()
    assert reg["problem_type"] == problem.REGRESSION and list(reg["predictions"][0]) == ["value"]
    assert reg["predictions"][0]["value"] == pytest.approx(full["regression"]["prediction"][0], abs=1e-5)
    models = {m["name"]: m for m in httpx.get(server.url + "/v1/models").json()["models"]}
    assert models["pair"]["text_pair"] and not models["single"]["text_pair"]
    assert models["multi_cols"]["problem_type"] == problem.MULTI


def test_served_pair_model_needs_text_pair(server, files, full):
    test = pd.read_csv(files["test"])
    r = _post(server, "pair", {"texts": test["title"].tolist()[:3], "text_pairs": test["second"].tolist()[:3]})
    got = np.array([[p["probabilities"][str(i)] for i in range(4)] for p in r.json()["predictions"]])
    np.testing.assert_allclose(got, full["pair"].filter(like="prob_").to_numpy()[:3], atol=1e-5)
    one = _post(server, "pair", {"text": test["title"][0], "text_pair": test["second"][0]}).json()
    assert one["predictions"][0]["probabilities"] == pytest.approx(r.json()["predictions"][0]["probabilities"], abs=1e-6)
    for body, words in (({"texts": ["a"]}, 'model pair reads sentence pairs: send "text_pair" with "text"'),
                        ({"texts": ["a", "b"], "text_pairs": ["c"]}, "text_pairs has 1 texts for 2 texts"),
                        ({"text": "a", "text_pairs": ["b"]}, '"text_pairs" goes with "texts"')):
        r = _post(server, "pair", body)
        assert r.status_code == 422 and "\n" not in r.json()["detail"] and words in r.json()["detail"], r.text
    r = _post(server, "single", {"text": "a", "text_pair": "b"})
    assert r.status_code == 422 and "model single reads single texts" in r.json()["detail"]


def test_openapi_documents_each_types_response(server, runs_, tmp_path):
    spec = httpx.get(server.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"SingleLabelResponse", "MultiLabelResponse", "RegressionResponse"} <= set(schemas)
    assert set(schemas["MultiLabelPrediction"]["properties"]) == {"labels", "probabilities", "thresholds"}
    assert set(schemas["RegressionPrediction"]["properties"]) == {"value"}
    ok = spec["paths"]["/v1/models/{name}/predict"]["post"]["responses"]["200"]["content"]["application/json"]
    refs = {s["$ref"].rsplit("/", 1)[-1] for s in ok["schema"]["anyOf"]}
    assert refs == {"SingleLabelResponse", "MultiLabelResponse", "RegressionResponse"}
    assert {"text", "text_pair", "texts", "text_pairs"} <= set(schemas["PredictRequest"]["properties"])
    one = Server(runs_["regression"], tmp_path / "one.log")  # one model: /predict documents its own type
    try:
        spec = httpx.get(one.url + "/openapi.json").json()
        ok = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith("/RegressionResponse")
        r = httpx.post(one.url + "/predict", json={"texts": ["a", "b"]}, timeout=60).json()
        assert [set(p) for p in r["predictions"]] == [{"value"}, {"value"}]
    finally:
        one.stop()


# ------------------------------------------------------------------------------------------ export


def test_exports_give_loraclf_outputs_in_a_stock_pipeline(runs_, files, full, tmp_path):
    """single (temperature folded), multi-label (sigmoid, thresholds kept), regression (scaling folded), pairs."""
    folders = {}
    for name in ("single", "multi", "regression", "pair"):
        folders[name] = Path(export_run(runs_[name], tmp_path / name, onnx=name in ("multi", "regression")))
    cfg = {n: json.loads((f / "config.json").read_text()) for n, f in folders.items()}
    assert {n: c["problem_type"] for n, c in cfg.items()} == {
        "single": problem.SINGLE, "multi": problem.MULTI, "regression": problem.REGRESSION, "pair": problem.SINGLE}
    assert cfg["multi"]["loraclf_thresholds"] == _decision(runs_["multi"])["thresholds"]
    out = run_blocked(f"""
        import json
        import pandas as pd
        from transformers import pipeline
        test = pd.read_csv({str(files['test'])!r})
        folders = {json.dumps({n: str(f) for n, f in folders.items()})}
        want = {{"single": "softmax", "multi": "sigmoid", "regression": "none", "pair": "softmax"}}
        res = {{}}
        for name, folder in folders.items():
            clf = pipeline("text-classification", model=folder, device="cpu")
            inputs = ([{{"text": a, "text_pair": b}} for a, b in zip(test["title"], test["second"])] if name == "pair"
                      else test["text"].tolist())
            got = [clf(x, top_k=None, truncation=True) for x in inputs]
            forced = [clf(x, top_k=None, truncation=True, function_to_apply=want[name]) for x in inputs]
            assert got == forced, name  # the default function is the one the type needs
            res[name] = [{{d["label"]: d["score"] for d in r}} for r in got]
        print(json.dumps(res))
    """)
    pipe = json.loads(out.strip().splitlines()[-1])
    for name in ("single", "multi", "pair"):
        names = [c[len("prob_"):] for c in full[name].columns if c.startswith("prob_")]
        got = np.array([[r[n] for n in names] for r in pipe[name]])
        np.testing.assert_allclose(got, full[name][[f"prob_{n}" for n in names]].to_numpy(), atol=1e-5)
    # regression: one output named after the target column, its value in the targets' units
    np.testing.assert_allclose([r["rating"] for r in pipe["regression"]], full["regression"]["prediction"], atol=1e-5)
    for name in ("single", "multi", "regression", "pair"):  # loraclf predicts from the export as from the run
        predict_file(folders[name], files["test"], tmp_path / f"{name}.csv", fmt="full", quiet=True)
        ours, ref = pd.read_csv(tmp_path / f"{name}.csv", keep_default_na=False), full[name]
        assert list(ours.columns) == list(ref.columns)
        values = [c for c in ref.columns if c.startswith("prob_") or c == "prediction"]
        np.testing.assert_allclose(ours[values].to_numpy(float), ref[values].to_numpy(float), atol=1e-5)
        if name != "regression":
            assert ours.iloc[:, 1].tolist() == ref.iloc[:, 1].tolist()  # the same labels, thresholds included
