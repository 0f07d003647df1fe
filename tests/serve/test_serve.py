"""`loraclf serve`: the real server in a child process on a free loopback port, called over real HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import psutil
import numpy as np
import pandas as pd
import pytest

from loraclf.cli import main
from loraclf.config import load_config
from loraclf.publish.export import export_run
from loraclf.infer.engine import load_inference_model
from loraclf.training import train

from helpers_infer import Server, free_port, tiny_run_overrides

MAX_TEXTS = 8
MAX_CHARS = 300


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    root = tmp_path_factory.mktemp("serve_tiny")
    return Path(train(load_config(None, tiny_run_overrides(tiny_bert, tiny_data, root, "tiny")), quiet=True).run_dir)


@pytest.fixture(scope="module")
def texts(tiny_data) -> list[str]:
    return pd.read_csv(tiny_data["test"])["text"].tolist()


@pytest.fixture(scope="module")
def reference(tiny_run):
    """In-process predictions of the same run, to check what the server returns."""
    im = load_inference_model(tiny_run)
    return lambda batch: im.predict(batch)


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    # a long max wait makes batching of concurrent requests certain, not a matter of timing
    srv = Server(tiny_run, tmp_path_factory.mktemp("log") / "serve.log", "--max-batch-size", "64",
                 "--max-wait-ms", "250", "--max-texts", str(MAX_TEXTS), "--max-text-chars", str(MAX_CHARS))
    yield srv
    srv.stop()


def test_predict_returns_labels_and_probabilities_like_loraclf_predict(server, texts, reference):
    batch = [t[:MAX_CHARS] for t in texts[:5]]
    r = httpx.post(server.url + "/predict", json={"texts": batch}, timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    labels = httpx.get(server.url + "/labels").json()["labels"]
    assert labels == ["0", "1", "2", "3"]
    probs = np.array([[p["probabilities"][name] for name in labels] for p in preds])
    np.testing.assert_allclose(probs, reference(batch), atol=1e-5)
    for p, row in zip(preds, probs):
        assert p["label"] == labels[int(row.argmax())] == labels[p["label_id"]]
        assert p["score"] == pytest.approx(row.max())


def test_health_labels_and_openapi(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["source"] == "run" and h["num_labels"] == 4
    assert h["limits"]["max_texts"] == MAX_TEXTS and h["limits"]["max_text_chars"] == MAX_CHARS
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/predict", "/health", "/labels"} <= set(spec["paths"])
    req = spec["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
    assert req["minItems"] == 1 and req["maxItems"] == MAX_TEXTS and req["items"]["maxLength"] == MAX_CHARS


@pytest.mark.parametrize("body, status, words", [
    ({"texts": []}, 422, "texts is empty"),
    ({"texts": ["a"] * (MAX_TEXTS + 1)}, 413, f"too many texts in one request: {MAX_TEXTS + 1}, over the limit of {MAX_TEXTS}"),
    ({"texts": ["ok", "x" * (MAX_CHARS + 1)]}, 413, f"texts[1] is longer than {MAX_CHARS} characters"),
    ({"texts": "one text"}, 422, "texts must be a list of strings, got str"),
    ({"texts": ["fine", 7]}, 422, "texts[1] must be a string, got int"),
    ({"texts": [None]}, 422, "texts[0] must be a string, got null"),
    ({"text": ["hello"]}, 422, "text must be a string, got list"),
    ({"txt": "hello"}, 422, "unknown field 'txt'"),
    ({}, 422, 'a list of strings under "texts" (or one string under "text")'),
    ({"texts": ["a"], "text": "b"}, 422, 'give "texts" or "text", not both'),
    ({"text": "a", "text_pair": "b"}, 422, "reads single texts"),
    ({"texts": ["a"], "top_k": 2}, 422, "unknown field 'top_k'"),
    (["hello"], 422, 'JSON object like {"texts"'),
])
def test_bad_requests_get_4xx_with_one_clear_line(server, body, status, words):
    r = httpx.post(server.url + "/predict", json=body, timeout=30)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert words in detail


def test_malformed_json_and_oversized_bodies_are_4xx(server):
    r = httpx.post(server.url + "/predict", content=b'{"texts": ["unterminated', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    huge = json.dumps({"texts": ["x" * 100_000] * 40}).encode()
    r = httpx.post(server.url + "/predict", content=huge, timeout=30, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    assert httpx.get(server.url + "/health").status_code == 200  # still serving


def test_concurrent_clients_are_batched_together_and_get_their_own_answers(server, texts, reference):
    before = httpx.get(server.url + "/stats").json()
    groups = [[t[:MAX_CHARS] for t in texts[i * 3:i * 3 + 1 + i % 3]] for i in range(12)]

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict", json={"texts": g}) for g in groups))

    responses = asyncio.run(fire())
    after = httpx.get(server.url + "/stats").json()
    for g, r in zip(groups, responses):
        assert r.status_code == 200, r.text
        labels = list(r.json()["predictions"][0]["probabilities"])
        got = np.array([[p["probabilities"][n] for n in labels] for p in r.json()["predictions"]])
        np.testing.assert_allclose(got, reference(g), atol=1e-5)
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 12
    assert batches < requests  # some forward passes served several clients
    assert after["max_requests_in_a_batch"] >= 2


def test_sigterm_lets_the_in_flight_request_finish(tiny_run, tmp_path, texts, reference):
    export = Path(export_run(tiny_run, tmp_path / "export"))
    # the request sits 1.5 s in the batching queue: SIGTERM arrives while it is in flight
    srv = Server(export, tmp_path / "serve.log", "--max-wait-ms", "1500")
    assert httpx.get(srv.url + "/health").json()["source"] == "export"
    result = {}

    def call():
        result["r"] = httpx.post(srv.url + "/predict", json={"texts": texts[:2]}, timeout=60)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)
    srv.proc.send_signal(signal.SIGTERM)
    t.join(60)
    r = result["r"]
    assert r.status_code == 200, r.text
    # uvicorn re-raises the signal after its graceful shutdown; serve turns that into a clean exit
    assert srv.proc.wait(60) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log
    got = np.array([[p["probabilities"][n] for n in ("0", "1", "2", "3")] for p in r.json()["predictions"]])
    np.testing.assert_allclose(got, reference(texts[:2]), atol=1e-5)
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/health", timeout=2)


def test_serve_bad_input_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_run), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(tiny_run), "--port", str(free_port()), "--max-texts", "0"])
    assert exit_.value.code == 2 and "--max-texts" in capsys.readouterr().err
    assert main(["serve", str(tiny_run), "--port", str(free_port()), "--max-wait-ms", "-1"]) == 2
    assert "--max-wait-ms must be 0 or more" in capsys.readouterr().err


# ---------------------------------------------------------------- issue 21: body cap while reading, parser failures

BODY_CAP = MAX_TEXTS * (MAX_CHARS * 6 + 4) + 65_536  # ServeLimits.max_body_bytes of the server fixture


def _chunks(total: int, size: int = 1 << 20):
    yield b'{"texts": ["'
    sent = 12
    while sent < total:
        n = min(size, total - sent)
        yield b"x" * n
        sent += n


def test_chunked_body_without_content_length_is_capped_while_reading(server):
    rss = psutil.Process(server.proc.pid).memory_info().rss
    r = httpx.post(server.url + "/predict", content=_chunks(64 << 20), timeout=120,
                   headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == f"request body is over the limit of {BODY_CAP:,} bytes (set by --max-texts and --max-text-chars)"
    grown = psutil.Process(server.proc.pid).memory_info().rss - rss
    assert grown < 16 << 20, f"server memory grew by {grown / 2**20:.0f} MB reading a body it refuses"
    # one byte over the cap is refused as well; a chunked body under it is served
    r = httpx.post(server.url + "/predict", content=_chunks(BODY_CAP + 1, 4096), timeout=60)
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    ok = iter([b'{"texts": ', b'["a chunked', b' request"]}'])
    r = httpx.post(server.url + "/predict", content=ok, timeout=60, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("body, status, words", [
    (b'{"texts": ["caf\xe9"]}', 422, "the request body is not valid UTF-8 (byte 0xe9 at position 15)"),
    (b'{"texts": ["\xe2\x82"]}', 422, "the request body is not valid UTF-8 (byte 0xe2"),
    (b"[" * 30_000 + b"]" * 30_000, 422, "the request body nests too deeply to parse"),  # 100k: under the default cap, below
    (b'{"texts": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 422, "the request body nests too deeply to parse"),
    (b'{"texts": [' + b"9" * 5000 + b"]}", 422, "the request body is not valid JSON (Exceeds the limit"),
    (b'{"texts": ["ok", "\\ud800"]}', 422, "texts[1] is not valid Unicode (an unpaired surrogate"),
])
def test_parser_failures_get_one_line_not_fastapis_generic_400(server, body, status, words):
    r = httpx.post(server.url + "/predict", content=body, timeout=60, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail, detail
    assert "There was an error parsing the body" not in detail


def test_100k_deep_nesting_at_default_limits_then_sigterm_on_an_idle_server_exits_0(tiny_run, tmp_path):
    srv = Server(tiny_run, tmp_path / "idle.log")
    r = httpx.post(srv.url + "/predict", content=b"[" * 100_000 + b"]" * 100_000, timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("the request body nests too deeply to parse")
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(60) == 0
    assert "Traceback" not in (tmp_path / "idle.log").read_text()


def test_push_offline_is_one_line_exit_2_and_writes_nothing(tiny_run, tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")}
    staged = set(Path(tempfile.gettempdir()).glob("loraclf-push-*"))
    assert main(["push", str(tiny_run), "someone/loraclf-test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loraclf push: error: cannot push adapter to the Hugging Face Hub")
    assert main(["push", str(tiny_run), "no slash", "--what", "export"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loraclf push: error: 'no slash' is not a Hugging Face repo id")
    assert {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")} == before
    assert set(Path(tempfile.gettempdir()).glob("loraclf-push-*")) == staged
    assert not any(p for p in tmp_path.rglob("*") if p.is_file())


def test_serve_int8_predicts_in_the_batches_predict_uses(tiny_run, texts, monkeypatch):
    """`serve --precision int8` runs each pass in INT8_PREDICT_BATCH texts, as `predict --precision int8` does, and
    fp32 in the micro-batch size (issue 42: it used 32 for both)."""
    import loraclf.infer.forward as forward
    from loraclf.config import INT8_PREDICT_BATCH
    from loraclf.serve.app import load_models

    seen = []
    real = forward.token_batches
    monkeypatch.setattr(forward, "token_batches", lambda lengths, bs, cap: seen.append(bs) or real(lengths, bs, cap))
    for precision in ("int8", "fp32"):
        (served,) = load_models([tiny_run], batch_size=32, precision=precision, int8_engine="torch")
        served.predict(texts[:40])
    assert seen == [INT8_PREDICT_BATCH, 32] and INT8_PREDICT_BATCH != 32
