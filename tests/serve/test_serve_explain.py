"""POST /v1/explain and /v1/models/{name}/explain (issue 41) on a real `loraclf serve` over loopback HTTP: the
attributions of the Python API, for one model and for runs served as adapters on one base; one-line 422s."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

import loraclf
from conftest import need_module
from helpers_infer import Server, tiny_run_overrides
from loraclf.config import load_config
from loraclf.training import train

TEXT = "the striker scored twice as the league leaders won again"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    """A folder holding two tiny runs of one base (different seeds): served as adapters."""
    root = tmp_path_factory.mktemp("explain_serve")
    for name, seed in (("a", 1), ("b", 2)):
        train(load_config(None, tiny_run_overrides(tiny_bert, tiny_data, root, name) + [f"train.seed={seed}"]),
              quiet=True)
    return root / "runs"


def _same(served: dict, api: dict) -> None:
    assert served["target"] == str(api["target"]) and [w["word"] for w in served["words"]] == TEXT.split()
    np.testing.assert_allclose([w["score"] for w in served["words"]], [w["score"] for w in api["words"]],
                               rtol=1e-3, atol=1e-5)


def test_one_model_explains_as_the_api_does(two_runs, tmp_path):
    need_module("fastapi")
    run = two_runs / "a"
    srv = Server(run, tmp_path / "serve.log")
    try:
        r = httpx.post(srv.url + "/v1/explain", json={"text": TEXT, "steps": 8}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "a" and len(body["explanations"]) == 1
        api = loraclf.Classifier.from_run(run, device="cpu").explain(TEXT, steps=8, quiet=True)
        _same(body["explanations"][0], api)
        r = httpx.post(srv.url + "/v1/models/a/explain", json={"texts": [TEXT, "coach"], "steps": 8}, timeout=60)
        assert r.status_code == 200 and len(r.json()["explanations"]) == 2
        r = httpx.post(srv.url + "/v1/explain", json={"text": TEXT, "target": "Sportz"}, timeout=60)
        assert r.status_code == 422 and "unknown target label 'Sportz'" in r.json()["detail"]
        r = httpx.post(srv.url + "/v1/explain", json={"texts": [TEXT] * 17}, timeout=60)
        assert r.status_code == 413, r.text  # a request stays short: 16 texts at most, as an oversize
        assert "17, over the limit of 16 (the limit of an explain request)" in r.json()["detail"]
    finally:
        assert srv.stop() == 0


def test_runs_served_as_adapters_are_explained_by_name(two_runs, tmp_path):
    need_module("fastapi")
    srv = Server(two_runs, tmp_path / "serve.log")
    try:
        r = httpx.post(srv.url + "/v1/explain", json={"text": TEXT}, timeout=60)
        assert r.status_code == 422 and "name one: /v1/models/{name}/explain (a, b)" in r.json()["detail"]
        r = httpx.post(srv.url + "/v1/models/b/explain", json={"text": TEXT, "steps": 8}, timeout=60)
        assert r.status_code == 200, r.text
        api = loraclf.Classifier.from_run(two_runs / "b", device="cpu").explain(TEXT, steps=8, quiet=True)
        _same(r.json()["explanations"][0], api)
    finally:
        assert srv.stop() == 0


def test_an_int8_service_says_which_precision_explain_needs(two_runs, tmp_path):
    need_module("fastapi")
    run = tmp_path / "a"
    shutil.copytree(two_runs / "a", run)
    srv = Server(run, tmp_path / "serve.log", "--precision", "int8", "--int8-engine", "torch")
    try:
        r = httpx.post(srv.url + "/v1/explain", json={"text": TEXT}, timeout=60)
        assert r.status_code == 422 and "explain needs fp32 (or bf16) weights" in r.json()["detail"]
    finally:
        assert srv.stop() == 0
