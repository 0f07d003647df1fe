"""The HTTP service: FastAPI + uvicorn, with dynamic micro-batching of concurrent requests.

POST /predict {"texts": [...]} -> labels and probabilities; GET /health, /labels, /stats; OpenAPI at /openapi.json
(and /docs). Requests wait at most max_wait_ms in a queue so that concurrent ones share one forward pass; a
single worker runs the model in a thread, so the event loop keeps accepting requests meanwhile.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, which name classes built per
# app (their size limits come from the command line). fastapi and pydantic are imported where used: they are the
# optional `serve` extra, and serve() names the extra to install when they are missing.
import asyncio
import ipaddress
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Callable, Optional

import numpy as np

from . import device, logs
from .version import __version__
from .errors import LoraclfError
from .predict import load_inference_model

logger = logs.get(__name__)


@dataclass
class ServeLimits:
    """What one request may hold, and how requests are batched together."""

    max_batch_size: int = 32  # texts per forward pass gathered from concurrent requests
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_texts: int = 256  # texts per request
    max_text_chars: int = 20_000  # characters per text

    @property
    def max_body_bytes(self) -> int:
        # worst case JSON: every character escaped as \uXXXX (6 bytes), plus quotes and commas
        return self.max_texts * (self.max_text_chars * 6 + 4) + 65_536

    def check(self) -> None:
        problems = [f"--{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
                    for k in ("max_batch_size", "max_texts", "max_text_chars") if getattr(self, k) < 1]
        if self.max_wait_ms < 0:
            problems.append(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if problems:
            raise LoraclfError("; ".join(problems))


class MicroBatcher:
    """Gathers texts of concurrent requests into batches of up to max_batch_size, waiting at most max_wait_ms."""

    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_batch_size: int, max_wait_ms: float):
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraclf-model")
        self.task: Optional[asyncio.Task] = None
        self.carry = None  # a request taken from the queue that did not fit into the previous batch
        self.requests = 0
        self.texts = 0
        self.batches = 0
        self.requests_per_batch: Counter = Counter()
        self.texts_per_batch: Counter = Counter()
        self.busy_s = 0.0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> np.ndarray:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, fut))
        return await fut

    async def _gather(self) -> list:
        """The next batch: the first waiting request plus any that arrive within max_wait, up to max_batch_size."""
        loop = asyncio.get_running_loop()
        first, self.carry = (self.carry, None) if self.carry is not None else (await self.queue.get(), None)
        items, n = [first], len(first[0])
        deadline = loop.time() + self.max_wait
        while n < self.max_batch_size:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if n + len(nxt[0]) > self.max_batch_size:
                self.carry = nxt  # does not fit: it heads the next batch (a request larger than a batch runs alone)
                break
            items.append(nxt)
            n += len(nxt[0])
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            items = [(t, f) for t, f in items if not f.done()]  # clients that went away
            if not items:
                continue
            texts = [t for group, _ in items for t in group]
            start = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.executor, self.predict, texts)
            except Exception as e:  # a model failure fails these requests, not the service
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.busy_s += time.perf_counter() - start
            self.batches += 1
            self.requests += len(items)
            self.texts += len(texts)
            self.requests_per_batch[len(items)] += 1
            self.texts_per_batch[len(texts)] += 1
            offset = 0
            for group, fut in items:
                if not fut.done():
                    fut.set_result(probs[offset:offset + len(group)])
                offset += len(group)

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "texts": self.texts,
            "batches": self.batches,
            "max_requests_in_a_batch": max(self.requests_per_batch, default=0),
            "requests_per_batch": {str(k): v for k, v in sorted(self.requests_per_batch.items())},
            "texts_per_batch": {str(k): v for k, v in sorted(self.texts_per_batch.items())},
            "model_busy_s": round(self.busy_s, 4),
            "queued": self.queue.qsize() + (self.carry is not None),
        }


# ------------------------------------------------------------------------------------------ the app


def _messages(errors: list[dict], limits: ServeLimits) -> tuple[int, str]:
    """One clear line (and the status code) for pydantic's validation errors of a /predict body."""
    lines, status = [], 422
    for err in errors[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = "texts" + "".join(f"[{x}]" for x in loc[1:]) if loc and loc[0] == "texts" else ".".join(loc) or "body"
        kind = err.get("type", "")
        if kind == "json_invalid":
            lines.append(f"the request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
        elif kind == "missing" and where == "texts":
            lines.append('the body must be a JSON object with a list of strings under "texts", e.g. {"texts": ["hello"]}')
        elif kind in ("model_attributes_type", "dict_type") or where == "body":
            lines.append('the body must be a JSON object like {"texts": ["hello"]}')
        elif kind == "extra_forbidden":
            lines.append(f"unknown field '{loc[-1]}'; the body takes only \"texts\"")
        elif kind == "too_short" and where == "texts":
            lines.append("texts is empty; send at least one text")
        elif kind == "too_long" and where == "texts":
            status = 413
            lines.append(f"too many texts in one request: {err.get('ctx', {}).get('actual_length', '?')}, "
                         f"over the limit of {limits.max_texts} (--max-texts); split the request")
        elif kind == "string_too_long":
            status = 413
            lines.append(f"{where} is longer than {limits.max_text_chars:,} characters (--max-text-chars); "
                         f"shorten or split it")
        elif kind in ("string_type", "list_type"):
            want = "a string" if kind == "string_type" else "a list of strings"
            got = type(err.get("input")).__name__ if err.get("input") is not None else "null"
            lines.append(f"{where} must be {want}, got {'object' if got == 'dict' else got}")
        else:
            lines.append(f"{where}: {err.get('msg', 'invalid')}")
    if len(errors) > 5:
        lines.append(f"and {len(errors) - 5} more problem(s)")
    return status, "; ".join(lines)


def _schemas(limits: ServeLimits) -> SimpleNamespace:
    """The request and response models; the request's size limits come from limits."""
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints

    Text = Annotated[StrictStr, StringConstraints(max_length=limits.max_text_chars)]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["Stocks rallied today."]}]})
        texts: list[Text] = Field(min_length=1, max_length=limits.max_texts,
                                  description="Texts to classify, in order; each gets one prediction.")

    class Prediction(BaseModel):
        label: str = Field(description="The most probable class name.")
        label_id: int = Field(description="Its index in /labels.")
        score: float = Field(description="Its probability.")
        probabilities: dict[str, float] = Field(description="Probability of every class, by name.")

    class PredictResponse(BaseModel):
        predictions: list[Prediction]
        model: str

    class Labels(BaseModel):
        labels: list[str]
        id2label: dict[int, str]

    class Health(BaseModel):
        status: str
        model: str
        source: str
        num_labels: int
        limits: dict[str, float]
        batching: dict

    class Problem(BaseModel):
        detail: str

    return SimpleNamespace(PredictRequest=PredictRequest, Prediction=Prediction, PredictResponse=PredictResponse,
                           Labels=Labels, Health=Health, Problem=Problem)


def _add_guards(app, limits: ServeLimits) -> None:
    """An oversized body is refused before it is read; a malformed one gets one clear line."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            return JSONResponse({"detail": f"request body of {int(size):,} bytes is over the limit of "
                                           f"{limits.max_body_bytes:,} bytes"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        status, detail = _messages(list(exc.errors()), limits)
        return JSONResponse({"detail": detail}, status_code=status)


def _add_predict(app, s: SimpleNamespace, labels: list[str], model_name: str) -> None:
    from fastapi import Request

    PredictRequest, PredictResponse = s.PredictRequest, s.PredictResponse  # FastAPI reads these annotations

    @app.post("/predict", response_model=PredictResponse,
              responses={413: {"model": s.Problem}, 422: {"model": s.Problem}})
    async def predict_endpoint(body: PredictRequest, request: Request) -> PredictResponse:
        probs = await request.app.state.batcher.submit(body.texts)
        out = []
        for row in probs:
            i = int(row.argmax())
            out.append(s.Prediction(label=labels[i], label_id=i, score=float(row[i]),
                                    probabilities={labels[j]: float(p) for j, p in enumerate(row)}))
        return PredictResponse(predictions=out, model=model_name)


def _add_info(app, s: SimpleNamespace, labels: list[str], limits: ServeLimits, model_name: str, source: str) -> None:
    from fastapi import Request

    Labels, Health = s.Labels, s.Health  # FastAPI reads these annotations

    @app.get("/labels", response_model=Labels)
    async def labels_endpoint() -> Labels:
        return Labels(labels=labels, id2label=dict(enumerate(labels)))

    @app.get("/health", response_model=Health)
    async def health(request: Request) -> Health:
        return Health(status="ok", model=model_name, source=source, num_labels=len(labels),
                      limits={"max_batch_size": limits.max_batch_size, "max_wait_ms": limits.max_wait_ms,
                              "max_texts": limits.max_texts, "max_text_chars": limits.max_text_chars},
                      batching=request.app.state.batcher.stats())

    @app.get("/stats")
    async def stats(request: Request) -> dict:
        return request.app.state.batcher.stats()


def create_app(predict: Callable[[list[str]], np.ndarray], id2label: dict[int, str], limits: ServeLimits,
               model_name: str = "model", source: str = "run"):
    """The FastAPI app around a predict function (texts -> probabilities, one row per text)."""
    from fastapi import FastAPI

    limits.check()
    labels = [id2label[i] for i in range(len(id2label))]

    @asynccontextmanager
    async def lifespan(app):
        batcher = MicroBatcher(predict, limits.max_batch_size, limits.max_wait_ms)
        batcher.start()
        app.state.batcher = batcher
        yield
        # uvicorn runs this only after in-flight requests have been answered
        await batcher.stop()

    app = FastAPI(title="loraclf text classifier", version=__version__, lifespan=lifespan,
                  description=f"Model {model_name}: {len(labels)} classes ({', '.join(labels[:20])}).")
    schemas = _schemas(limits)
    _add_guards(app, limits)
    _add_predict(app, schemas, labels, model_name)
    _add_info(app, schemas, labels, limits, model_name, source)
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


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 32,
          max_wait_ms: float = 5.0, max_texts: int = 256, max_text_chars: int = 20_000, precision: str = "fp32",
          graceful_timeout_s: float = 30.0) -> None:
    """Load a run folder or an exported model folder and serve it over HTTP until SIGINT/SIGTERM."""
    try:
        import uvicorn
    except ImportError:
        raise LoraclfError("serve needs fastapi and uvicorn: pip install 'loraclf[serve]'") from None
    limits = ServeLimits(max_batch_size, max_wait_ms, max_texts, max_text_chars)
    limits.check()
    device.resolve(precision, "--precision")
    if not 0 < port < 65536:
        raise LoraclfError(f"--port must be between 1 and 65535, got {port}")
    _check_bind(host, port)
    im = load_inference_model(model)

    def predict(texts: list[str]) -> np.ndarray:
        return im.predict(texts, batch_size=max(limits.max_batch_size, 1), precision=precision)

    predict(["warm up"])  # first call allocates; keep that out of the first client's latency
    app = create_app(predict, im.id2label, limits, model_name=Path(model).resolve().name, source=im.source)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_timeout_s,
                access_log=False)
