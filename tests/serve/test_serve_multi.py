"""`loraclf serve RUN RUN ...`: several runs with different label sets as adapters on one shared base, over real
HTTP, under concurrency; each answer must equal that run's own `loraclf predict`."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from loraclf.serve import multi_adapter as adapters
from loraclf.cli import main
from loraclf.config import load_config
from loraclf.training import train

from conftest import tiny_rows
from helpers_infer import Server, free_port

# three runs, three label sets: 2 named classes, 3 integer classes, 4 named classes
LABEL_SETS = {"pair": ["sports", "world"], "trio": ["0", "1", "2"], "quad": ["business", "sports", "tech", "world"]}


def _rows(names: list[str], n: int, seed: int) -> pd.DataFrame:
    rows = [r for r in tiny_rows(n * 2, seed) if r["label"] < len(names)][:n]
    return pd.DataFrame({"text": [r["text"] for r in rows], "label": [names[r["label"]] for r in rows]})


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_bert) -> Path:
    root = tmp_path_factory.mktemp("multi")
    for seed, (name, names) in enumerate(LABEL_SETS.items()):
        files = {}
        for split, n in (("train", 36), ("val", 12), ("test", 12)):
            files[split] = root / f"{name}_{split}.csv"
            _rows(names, n, seed * 10 + len(files)).to_csv(files[split], index=False)
        cfg = load_config(None, [f"model.name_or_path={tiny_bert}", f"data.train={files['train']}",
                                 f"data.validation={files['val']}", f"data.test={files['test']}",
                                 "data.max_length=32", "train.max_steps=4", "train.per_device_train_batch_size=12",
                                 "train.learning_rate=5e-3", "train.mixed_precision=fp32", "output.report=false",
                                 f"output.dir={root / 'runs'}", f"output.run_name={name}",
                                 f"data.cache_dir={root / 'cache'}", f"train.seed={seed}"])
        train(cfg, quiet=True)
    return root / "runs"


@pytest.fixture(scope="module")
def texts(tiny_data) -> list[str]:
    return [t[:300] for t in pd.read_csv(tiny_data["test"])["text"].tolist()[:40]]


@pytest.fixture(scope="module")
def reference(runs_root, texts, tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Each run's own `loraclf predict --format full --precision fp32` on the texts."""
    out = tmp_path_factory.mktemp("ref")
    pd.DataFrame({"text": texts}).to_csv(out / "in.csv", index=False)
    ref = {}
    for name in LABEL_SETS:
        assert main(["predict", str(runs_root / name), "--input", str(out / "in.csv"), "--output",
                     str(out / f"{name}.csv"), "--format", "full", "--precision", "fp32", "--quiet"]) == 0
        ref[name] = pd.read_csv(out / f"{name}.csv", keep_default_na=False, dtype={"label": str})
    return ref


@pytest.fixture(scope="module")
def server(runs_root, tmp_path_factory):
    # a folder of runs; a long max wait makes batching of concurrent requests certain, not a matter of timing
    srv = Server(runs_root, tmp_path_factory.mktemp("log") / "serve.log", "--max-batch-size", "64",
                 "--max-wait-ms", "150", "--max-texts", "8", "--max-text-chars", "300")
    yield srv
    srv.stop()


def _check(name: str, idx: list[int], response, reference) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == name
    ref = reference[name].iloc[idx]
    labels = LABEL_SETS[name]
    got = np.array([[p["probabilities"][n] for n in labels] for p in body["predictions"]])
    assert got.shape == (len(idx), len(labels))  # this run's head, not another's
    np.testing.assert_allclose(got, ref[[f"prob_{n}" for n in labels]].to_numpy(), atol=1e-5)
    assert [p["label"] for p in body["predictions"]] == ref["label"].tolist()


def test_models_lists_every_run_with_its_labels(server):
    models = httpx.get(server.url + "/v1/models").json()["models"]
    assert {m["name"]: m["labels"] for m in models} == LABEL_SETS
    assert {m["source"] for m in models} == {"adapter"}
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/models", "/v1/models/{name}/predict"} <= set(spec["paths"])
    assert "/predict" not in spec["paths"]  # with several models a request must name one
    log = server.log.read_text()
    assert "3 adapter(s) on" in log  # one base model for the three runs


def test_mixed_concurrent_stream_gets_each_runs_own_predictions(server, texts, reference):
    rng = random.Random(0)
    calls = []
    for i in range(36):
        name = list(LABEL_SETS)[i % 3]
        start = rng.randrange(len(texts) - 4)
        calls.append((name, list(range(start, start + rng.randint(1, 4)))))
    rng.shuffle(calls)
    before = httpx.get(server.url + "/stats").json()

    async def fire():
        gate = asyncio.Semaphore(12)  # bounded concurrency

        async def one(client, name, idx):
            async with gate:
                return await client.post(f"/v1/models/{name}/predict", json={"texts": [texts[i] for i in idx]})

        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(one(client, name, idx) for name, idx in calls))

    responses = asyncio.run(fire())
    for (name, idx), r in zip(calls, responses):
        _check(name, idx, r, reference)
    after = httpx.get(server.url + "/stats").json()
    assert sum(after[n]["requests"] - before[n]["requests"] for n in LABEL_SETS) == 36
    assert max(after[n]["max_requests_in_a_batch"] for n in LABEL_SETS) >= 2  # batched, per adapter
    assert all(after[n]["batches"] - before[n]["batches"] < 12 for n in LABEL_SETS)


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/models/qaud/predict", {"texts": ["a"]}, 404, "unknown model 'qaud' (did you mean 'quad'?); served: pair, quad, trio"),
    ("/v1/models/nope/predict", {"texts": ["a"]}, 404, "unknown model 'nope'"),
    ("/v1/models/pair/predict", {"texts": []}, 422, "texts is empty"),
    ("/v1/models/trio/predict", {"texts": ["a"] * 9}, 413, "too many texts in one request: 9, over the limit of 8"),
    ("/v1/models/quad/predict", {"texts": ["fine", 7]}, 422, "texts[1] must be a string, got int"),
    ("/v1/models/quad/predict", {"texts": ["a"], "top_k": 2}, 422, "unknown field 'top_k'"),
    ("/v1/models/quad/predict", ["hello"], 422, 'JSON object like {"texts"'),
    ("/predict", {"texts": ["a"]}, 404, "Not Found"),
])
def test_bad_requests_get_4xx_with_one_line(server, path, body, status, words):
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail


def test_a_single_run_keeps_todays_routes_and_answers_v1(runs_root, texts, reference, tmp_path):
    srv = Server(runs_root / "trio", tmp_path / "one.log")
    try:
        r = httpx.post(srv.url + "/predict", json={"texts": texts[:3]}, timeout=30)
        _check("trio", [0, 1, 2], r, reference)
        _check("trio", [0, 1, 2], httpx.post(srv.url + "/v1/models/trio/predict", json={"texts": texts[:3]},
                                             timeout=30), reference)
        assert httpx.get(srv.url + "/labels").json()["labels"] == LABEL_SETS["trio"]
        assert httpx.get(srv.url + "/v1/models").json()["models"][0]["name"] == "trio"
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0  # a graceful stop is a clean exit


def test_runs_given_one_by_one_and_duplicate_names(runs_root, tmp_path, capsys):
    found = adapters.collect_runs([runs_root / "quad", runs_root / "pair"])
    assert [p.name for p in found] == ["quad", "pair"]
    twin = tmp_path / "elsewhere" / "pair"
    twin.mkdir(parents=True)
    (twin / "config.yaml").write_text("{}")
    assert main(["serve", str(runs_root / "pair"), str(twin), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two runs are named 'pair'" in err[0] and "rename one" in err[0]
    assert main(["serve", str(tmp_path / "elsewhere" / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_adapters_on_one_base_predict_like_each_run(runs_root, texts, reference):
    """In process: the three heads (2, 3 and 4 outputs) sit on one base model, each active in turn."""
    from loraclf.infer.forward import predict_texts

    aset = adapters.load_adapters([runs_root / n for n in LABEL_SETS], device="cpu")
    assert aset.bases == 1 and len({id(a.model) for a in aset.adapters.values()}) == 1
    for name in ["quad", "pair", "trio", "pair"]:
        with aset.use(name) as a:
            probs = predict_texts(a.model, a.tokenizer, texts[:6], 8, a.max_length)
        ref = reference[name].iloc[:6]
        np.testing.assert_allclose(probs, ref[[f"prob_{n}" for n in LABEL_SETS[name]]].to_numpy(), atol=1e-5)


def test_runs_of_another_method_and_an_export_are_served_beside_the_adapters(runs_root, texts, reference, tmp_path):
    """An IA3 run needs its own copy of the base (PEFT keeps one method per model); an export is served as it is."""
    from loraclf.publish.export import export_run
    from loraclf.serve import load_models

    cfg = load_config(runs_root / "pair" / "config.yaml", ["adapter.method=ia3", f"output.dir={tmp_path}",
                                                            "output.run_name=pair-ia3"])
    ia3 = Path(train(cfg, quiet=True).run_dir)
    export = Path(export_run(runs_root / "quad", tmp_path / "quad-export"))
    aset = adapters.load_adapters([runs_root / "pair", ia3, runs_root / "trio"], device="cpu")
    assert aset.bases == 2 and aset.adapters["pair"].model is aset.adapters["trio"].model
    models = load_models(adapters.collect_runs([runs_root / "pair", ia3, export]), batch_size=8)
    assert [(m.name, m.source) for m in models] == [("pair", "adapter"), ("pair-ia3", "adapter"),
                                                   ("quad-export", "export")]
    for m, name in ((models[0], "pair"), (models[2], "quad")):
        want = reference[name].iloc[:5][[f"prob_{n}" for n in LABEL_SETS[name]]].to_numpy()
        np.testing.assert_allclose(m.predict(texts[:5]), want, atol=1e-5)
    assert m.labels == LABEL_SETS["quad"] and models[1].labels == LABEL_SETS["pair"]
    from loraclf.infer.engine import load_inference_model

    np.testing.assert_allclose(models[1].predict(texts[:5]), load_inference_model(ia3).predict(texts[:5]), atol=1e-5)
