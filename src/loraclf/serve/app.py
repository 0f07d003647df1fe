"""The HTTP service: FastAPI + uvicorn, with dynamic micro-batching of concurrent requests.

One run or export: POST /predict {"texts": [...]} (or {"text": "..."}; a sentence-pair model also takes
"text_pairs" / "text_pair") -> one prediction per text, shaped by the model's problem type (single-label: label,
score, probabilities; multi-label: labels, probabilities, thresholds; regression: value); GET /health, /labels,
/stats. Several runs (adapters attached to one shared base, see adapters.py): POST /v1/models/{name}/predict,
GET /v1/models, which a single model answers too. OpenAPI at /openapi.json (and /docs), one response schema per
problem type. Requests wait at most max_wait_ms in a queue, one
queue per model, so that concurrent ones share one forward pass; a single worker thread runs every model, so the
event loop keeps accepting requests meanwhile and one adapter's pass never overlaps another's.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, which name classes built per
# app (their size limits come from the command line). fastapi and pydantic are imported where used: they are the
# optional `serve` extra, and serve() names the extra to install when they are missing.
import ipaddress
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Union

import numpy as np

from . import multi_adapter as adapters
from ..base import device, logs
from .. import task as problem, runs
from .microbatch import MicroBatcher
from .schemas import ServeLimits, add_guards, declared_size_guard, schemas
from ..base.version import __version__
from ..base.errors import LoraclfError, did_you_mean
from ..config import DataConfig
from ..infer import inputs as inputs_mod
from ..infer.engine import InferenceModel, load_inference_model
from ..infer.forward import predict_texts
from ..task import MULTI, REGRESSION

logger = logs.get(__name__)


@dataclass
class Served:
    """One model the service answers for: its name, label names, predict function ((texts, pairs) -> outputs), its
    decision (problem type, thresholds) and whether it reads sentence pairs."""

    name: str
    labels: list[str]
    source: str  # run, export, or adapter
    predict: Callable[..., np.ndarray]
    decision: problem.Decision = field(default_factory=problem.Decision)
    data: DataConfig = field(default_factory=DataConfig)  # how it reads inputs: the run's data keys
    # (texts, pairs, target, steps) -> one explanation dict per text (infer.explain), run on the model thread
    explain: Optional[Callable[..., list[dict]]] = None

    @property
    def problem_type(self) -> str:
        return self.decision.problem_type

    @property
    def pairs(self) -> bool:
        return inputs_mod.reads_pairs(self.data)


def _inputs(body, m: Served) -> tuple[list[str], Optional[list[str]]]:
    """The texts and second texts of a request, through the one input path (infer.inputs); a mismatch is a 422."""
    from fastapi import HTTPException

    try:
        return inputs_mod.from_request(body, m.data, m.name)
    except LoraclfError as e:
        raise HTTPException(422, str(e)) from None


def _respond(s: SimpleNamespace, m: Served, out: np.ndarray):
    """The response of m's problem type for its outputs."""
    Prediction, pt = s.prediction[m.problem_type], m.problem_type
    if pt == REGRESSION:
        preds = [Prediction(value=float(v)) for v in np.asarray(out).reshape(-1)]
    elif pt == MULTI:
        thresholds = dict(zip(m.labels, map(float, m.decision.thresholds or [0.5] * len(m.labels))))
        preds = [Prediction(labels=[m.labels[j] for j in np.flatnonzero(row)], thresholds=thresholds,
                            probabilities={m.labels[j]: float(p) for j, p in enumerate(probs)})
                 for row, probs in zip(problem.predictions(out, m.decision), out)]
    else:
        preds = [Prediction(label=m.labels[int(i)], label_id=int(i), score=float(probs[int(i)]),
                            probabilities={m.labels[j]: float(p) for j, p in enumerate(probs)})
                 for i, probs in zip(problem.predictions(out, m.decision), out)]
    return s.response[pt](predictions=preds, model=m.name)


def _info(s: SimpleNamespace, m: Served):
    return s.ModelInfo(name=m.name, labels=m.labels, source=m.source, problem_type=m.problem_type, text_pair=m.pairs)


def _add_v1(app, s: SimpleNamespace, models: dict[str, Served]) -> None:
    from fastapi import HTTPException, Request

    PredictRequest, Models = s.PredictRequest, s.Models  # FastAPI reads these
    # every problem type served is documented: a model's response is the schema of its type
    Response = Union[tuple(dict.fromkeys(s.response[m.problem_type] for m in models.values()))]

    @app.get("/v1/models", response_model=Models)
    async def list_models() -> Models:
        return Models(models=[_info(s, m) for m in models.values()])

    @app.post("/v1/models/{name}/predict", response_model=Response,
              responses={404: {"model": s.Problem}, 413: {"model": s.Problem}, 422: {"model": s.Problem}})
    async def model_predict(name: str, body: PredictRequest, request: Request):
        if name not in models:
            raise HTTPException(404, f"unknown model '{name}'{did_you_mean(name, models)}; served: "
                                     f"{', '.join(models)} (GET /v1/models)")
        texts, pairs = _inputs(body, models[name])
        out = await request.app.state.batchers[name].submit(texts, pairs)
        return _respond(s, models[name], out)


def _add_explain(app, s: SimpleNamespace, models: dict[str, Served]) -> None:
    """POST /v1/models/{name}/explain, and /v1/explain for a one-model service: word attributions per text."""
    import asyncio

    from fastapi import HTTPException, Request

    ExplainRequest, ExplainResponse = s.ExplainRequest, s.ExplainResponse  # FastAPI reads these
    errors = {404: {"model": s.Problem}, 413: {"model": s.Problem}, 422: {"model": s.Problem}}

    async def run(m: Served, body, request) -> dict:
        if m.explain is None:
            raise HTTPException(422, f"model {m.name} cannot be explained here")
        texts, pairs = _inputs(body, m)
        work = partial(m.explain, texts, pairs, body.target, body.steps)
        try:
            found = await asyncio.get_running_loop().run_in_executor(request.app.state.executor, work)
        except LoraclfError as e:
            raise HTTPException(422, str(e)) from None
        return {"explanations": found, "model": m.name}

    @app.post("/v1/models/{name}/explain", response_model=ExplainResponse, responses=errors)
    async def model_explain(name: str, body: ExplainRequest, request: Request):
        if name not in models:
            raise HTTPException(404, f"unknown model '{name}'{did_you_mean(name, models)}; served: "
                                     f"{', '.join(models)} (GET /v1/models)")
        return await run(models[name], body, request)

    @app.post("/v1/explain", response_model=ExplainResponse, responses=errors)
    async def explain(body: ExplainRequest, request: Request):
        if len(models) != 1:
            raise HTTPException(422, f"this service serves {len(models)} models; name one: "
                                     f"/v1/models/{{name}}/explain ({', '.join(models)})")
        return await run(next(iter(models.values())), body, request)


def _add_single(app, s: SimpleNamespace, m: Served, limits: ServeLimits) -> None:
    """Today's routes of a one-model service: /predict, /labels, /health, /stats."""
    from fastapi import Request

    PredictRequest, Labels, Health = s.PredictRequest, s.Labels, s.Health

    @app.post("/predict", response_model=s.response[m.problem_type],
              responses={413: {"model": s.Problem}, 422: {"model": s.Problem}})
    async def predict_endpoint(body: PredictRequest, request: Request):
        texts, pairs = _inputs(body, m)
        out = await request.app.state.batchers[m.name].submit(texts, pairs)
        return _respond(s, m, out)

    @app.get("/labels", response_model=Labels)
    async def labels_endpoint() -> Labels:
        return Labels(labels=m.labels, id2label=dict(enumerate(m.labels)))

    @app.get("/health", response_model=Health)
    async def health(request: Request) -> Health:
        return Health(status="ok", model=m.name, source=m.source, problem_type=m.problem_type,
                      num_labels=len(m.labels), limits=limits.public(),
                      batching=request.app.state.batchers[m.name].stats())

    @app.get("/stats")
    async def stats(request: Request) -> dict:
        return request.app.state.batchers[m.name].stats()


def _add_multi_info(app, limits: ServeLimits) -> None:
    from fastapi import Request

    @app.get("/health")
    async def health(request: Request) -> dict:
        batchers = request.app.state.batchers
        return {"status": "ok", "models": list(batchers), "limits": limits.public(),
                "batching": {name: b.stats() for name, b in batchers.items()}}

    @app.get("/stats")
    async def stats(request: Request) -> dict:
        return {name: b.stats() for name, b in request.app.state.batchers.items()}


def _about(models: list[Served]) -> str:
    if len(models) > 1:
        return (f"{len(models)} models: {', '.join(m.name for m in models)}. Name one in "
                f"/v1/models/{{name}}/predict.")
    m = models[0]
    pairs = " Requests send sentence pairs (text_pair)." if m.pairs else ""
    if m.problem_type == REGRESSION:
        return f"Model {m.name}: regression, predicting {m.labels[0]}.{pairs}"
    kind = "labels, any number per text" if m.problem_type == MULTI else "classes"
    return f"Model {m.name}: {len(m.labels)} {kind} ({', '.join(m.labels[:20])}).{pairs}"


def create_app(models: list[Served], limits: ServeLimits):
    """The FastAPI app around models; one model also gets today's /predict, /labels, /health and /stats."""
    from fastapi import FastAPI

    limits.check()
    by_name = {m.name: m for m in models}

    @asynccontextmanager
    async def lifespan(app):
        # one worker thread for all models: a forward pass runs alone, so an adapter is never switched under it
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraclf-model")
        app.state.executor = executor  # explain runs here too, never beside another model pass
        app.state.batchers = {m.name: MicroBatcher(m.predict, limits.max_batch_size, limits.max_wait_ms, executor)
                              for m in models}
        for b in app.state.batchers.values():
            b.start()
        yield
        # uvicorn runs this only after in-flight requests have been answered
        for b in app.state.batchers.values():
            await b.stop()
        executor.shutdown(wait=True)

    app = FastAPI(title="loraclf text classifier", version=__version__, lifespan=lifespan,
                  description=_about(models), max_body_size=limits.max_body_bytes)
    s = schemas(limits)
    add_guards(app, limits)
    if len(models) == 1:
        _add_single(app, s, models[0], limits)
    else:
        _add_multi_info(app, limits)
    _add_v1(app, s, by_name)
    _add_explain(app, s, by_name)
    return app


def _check_bind(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise LoraclfError(f"cannot resolve --host {host}; use an address such as 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise LoraclfError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None
    try:
        loopback = ipaddress.ip_address(addr[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        logger.warning(f"serve: warning: listening on {host}, reachable from other machines; the service has no "
                       f"authentication")


def _model_predict(im: InferenceModel, batch_size: Optional[int], precision: str, texts: list[str],
                   pairs: Optional[list[str]] = None) -> np.ndarray:
    return im.predict(texts, batch_size, precision, pairs=pairs)


def _model_explain(im: InferenceModel, precision: str, texts: list[str], pairs: Optional[list[str]],
                   target: Optional[str], steps: int) -> list[dict]:
    from ..infer import explain as explain_mod

    return explain_mod.to_dicts(explain_mod.explain_texts(im, texts, pairs, target, steps, precision))


def _adapter_explain(aset: adapters.AdapterSet, name: str, precision: str, texts: list[str],
                     pairs: Optional[list[str]], target: Optional[str], steps: int) -> list[dict]:
    with aset.use(name) as a:
        im = InferenceModel(a.model, a.tokenizer, a.id2label, a.max_length, a.run.label_map.int_labels, a.data,
                            "adapter", a.decision, a.run)
        return _model_explain(im, precision, texts, pairs, target, steps)


def _adapter_predict(aset: adapters.AdapterSet, name: str, batch_size: int, precision: str, texts: list[str],
                     pairs: Optional[list[str]] = None) -> np.ndarray:
    with aset.use(name) as a:
        return predict_texts(a.model, a.tokenizer, texts, batch_size, a.max_length, precision, pairs=pairs,
                             data=a.data, decision=a.decision)


def load_models(found: list[Path], batch_size: int = 32, precision: str = "fp32",
                int8_engine: str = "auto") -> list[Served]:
    """What to serve (from adapters.collect_runs): one run or export as today (its adapter merged), or several runs
    as adapters on shared bases; exports among several models are served as they are. int8_engine: whose int8
    --precision int8 runs (loraclf.infer.int8)."""
    served, attach = [], []
    # int8 predicts in its own batches (config.INT8_PREDICT_BATCH), as `loraclf predict --precision int8` does
    per_pass = None if device.resolve_inference(precision) == device.INT8 else batch_size
    for p in found:
        folder = runs.open_model_folder(p)
        if len(found) > 1 and isinstance(folder, runs.Run):
            attach.append(folder)
            continue
        im = load_inference_model(folder, int8_engine=int8_engine)
        served.append(Served(p.resolve().name, im.labels, im.source, partial(_model_predict, im, per_pass, precision),
                             im.decision, im.data, partial(_model_explain, im, precision)))
    if attach and precision == device.INT8:
        raise LoraclfError("--precision int8 serves one run or export at a time, not several runs as adapters on "
                           "one base (an int8 base cannot switch adapters); serve them at fp32, or export each run")
    if attach:
        aset = adapters.load_adapters(attach)
        served += [Served(name, [a.id2label[i] for i in range(len(a.id2label))], "adapter",
                          partial(_adapter_predict, aset, name, batch_size, precision), a.decision, a.data,
                          partial(_adapter_explain, aset, name, precision))
                   for name, a in aset.adapters.items()]
    order = {Path(p).resolve().name: i for i, p in enumerate(found)}
    return sorted(served, key=lambda m: order[m.name])


def _graceful_exit(signum, frame):
    raise SystemExit(0)


def _run_uvicorn(app, host: str, port: int, graceful_timeout_s: float) -> None:
    import uvicorn

    # uvicorn re-raises a caught SIGTERM after its graceful shutdown, which ends the process "killed" (exit 143);
    # the re-raised signal reaches the handler that was there before uvicorn's: this one makes it exit 0
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _graceful_exit) if main_thread else None
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_timeout_s,
                    access_log=False)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def serve(model: str | Path | list[str | Path], host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 32,
          max_wait_ms: float = 5.0, max_texts: int = 256, max_text_chars: int = 20_000, precision: str = "fp32",
          graceful_timeout_s: float = 30.0, int8_engine: str = "auto") -> None:
    """Serve a run, an export, several runs or a folder of runs over HTTP until SIGINT/SIGTERM (SIGTERM: exit 0)."""
    try:
        import fastapi  # noqa: F401  (the optional `serve` extra)
        import uvicorn  # noqa: F401
    except ImportError:
        raise LoraclfError("serve needs fastapi and uvicorn: pip install 'loraclf[serve]'") from None
    limits = ServeLimits(max_batch_size, max_wait_ms, max_texts, max_text_chars)
    limits.check()
    device.resolve_inference(precision, "--precision")
    if not 0 < port < 65536:
        raise LoraclfError(f"--port must be between 1 and 65535, got {port}")
    found = adapters.collect_runs([model] if isinstance(model, (str, Path)) else list(model))
    _check_bind(host, port)
    models = load_models(found, max(limits.max_batch_size, 1), precision, int8_engine)
    limits.pairs = any(m.pairs for m in models)
    for m in models:
        m.predict(["warm up"], ["warm up"] if m.pairs else None)  # first call allocates: not the first client's
    _run_uvicorn(declared_size_guard(create_app(models, limits), limits), host, port, graceful_timeout_s)
