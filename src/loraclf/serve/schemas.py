"""What a request to the service may hold and what each answer looks like: the size limits, the pydantic request
and per-problem-type response models (which OpenAPI shows), and the one-line messages for malformed bodies."""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, which name classes built per
# app (their size limits come from the command line). fastapi and pydantic are imported where used (the optional
# `serve` extra).
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Literal, Optional, Union

from ..base.errors import LoraclfError, first_line
from ..task import MULTI, REGRESSION, SINGLE


@dataclass
class ServeLimits:
    """What one request may hold, and how requests are batched together."""

    max_batch_size: int = 32  # texts per forward pass gathered from concurrent requests
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_texts: int = 256  # texts per request
    max_text_chars: int = 20_000  # characters per text
    pairs: bool = False  # a served model reads sentence pairs: a request may hold twice the texts

    @property
    def max_body_bytes(self) -> int:
        # worst case JSON: every character escaped as \uXXXX (6 bytes), plus quotes and commas
        return self.max_texts * (2 if self.pairs else 1) * (self.max_text_chars * 6 + 4) + 65_536

    def public(self) -> dict[str, float]:
        return {"max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait_ms, "max_texts": self.max_texts,
                "max_text_chars": self.max_text_chars}

    def check(self) -> None:
        problems = [f"--{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
                    for k in ("max_batch_size", "max_texts", "max_text_chars") if getattr(self, k) < 1]
        if self.max_wait_ms < 0:
            problems.append(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if problems:
            raise LoraclfError("; ".join(problems))


# ------------------------------------------------------------------------------------------ the app


LIST_FIELDS = ("texts", "text_pairs")
BODY_SHAPE = ('the body must be a JSON object with a list of strings under "texts" (or one string under "text"), '
              'e.g. {"texts": ["hello"]}')


def _where(loc: list[str]) -> str:
    if loc and loc[0] in LIST_FIELDS:
        return loc[0] + "".join(f"[{x}]" for x in loc[1:])
    return ".".join(loc) or "body"


def _message(err: dict, loc: list[str], limits: ServeLimits) -> tuple[str, bool]:
    """One problem of a body as a line, and whether it is an oversize (413)."""
    where, kind, ctx = _where(loc), err.get("type", ""), err.get("ctx") or {}
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({ctx.get('error', 'parse error')})", False
    if kind == "value_error":  # the request's own checks (PredictRequest.one_form)
        return str(ctx.get("error", err.get("msg", "invalid"))), False
    if kind in ("model_attributes_type", "dict_type") or where == "body":
        return 'the body must be a JSON object like {"texts": ["hello"]}', False
    if kind == "extra_forbidden":
        return (f"unknown field '{loc[-1]}'; the body takes \"texts\" or \"text\" (and \"text_pairs\" or "
                f"\"text_pair\" for a sentence-pair model)"), False
    if kind == "too_short" and where in LIST_FIELDS:
        return f"{where} is empty; send at least one text", False
    if kind == "too_long" and where in LIST_FIELDS:
        cap = ctx.get("max_length", limits.max_texts)
        why = "--max-texts" if cap == limits.max_texts else "the limit of an explain request"
        return (f"too many texts in one request: {ctx.get('actual_length', '?')}, over the limit of "
                f"{cap} ({why}); split the request"), True
    if kind == "string_too_long":
        return f"{where} is longer than {limits.max_text_chars:,} characters (--max-text-chars); shorten or split it", True
    if kind == "string_unicode":
        return f"{where} is not valid Unicode (an unpaired surrogate such as \\ud800); send UTF-8 text", False
    if kind in ("string_type", "list_type"):
        want = "a string" if kind == "string_type" else "a list of strings"
        got = type(err.get("input")).__name__ if err.get("input") is not None else "null"
        return f"{where} must be {want}, got {'object' if got == 'dict' else got}", False
    return f"{where}: {err.get('msg', 'invalid')}", False


def _messages(errors: list[dict], limits: ServeLimits) -> tuple[int, str]:
    """One clear line (and the status code) for pydantic's validation errors of a /predict body."""
    lines, status = [], 422
    for err in errors[:5]:
        line, oversize = _message(err, [str(x) for x in err.get("loc", ()) if x != "body"], limits)
        lines.append(line)
        status = 413 if oversize else status
    if len(errors) > 5:
        lines.append(f"and {len(errors) - 5} more problem(s)")
    return status, "; ".join(lines)


def _check_form(body):
    """texts (with text_pairs) or text (with text_pair): one of the two forms, pairs matching their texts."""
    if (body.texts is None) == (body.text is None):
        raise ValueError(BODY_SHAPE if body.texts is None else 'give "texts" or "text", not both')
    if body.text_pairs is not None and body.texts is None:
        raise ValueError('"text_pairs" goes with "texts"; with "text" send "text_pair"')
    if body.text_pair is not None and body.text is None:
        raise ValueError('"text_pair" goes with "text"; with "texts" send "text_pairs"')
    if body.text_pairs is not None and len(body.text_pairs) != len(body.texts):
        raise ValueError(f"text_pairs has {len(body.text_pairs)} texts for {len(body.texts)} texts; give one "
                         f"second text per text")
    return body


def _request_model(limits: ServeLimits):
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints, model_validator

    Text = Annotated[StrictStr, StringConstraints(max_length=limits.max_text_chars)]
    examples = [{"texts": ["Stocks rallied today."]}, {"text": "Stocks rallied today."},
                {"text": "A man plays a guitar.", "text_pair": "Someone makes music."}]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": examples})
        # defaults of None without Optional: the schema shows the limits of a list of strings, not "or null"
        texts: list[Text] = Field(None, min_length=1, max_length=limits.max_texts,
                                  description="Texts to predict, in order; each gets one prediction.")
        text_pairs: list[Text] = Field(None, min_length=1, max_length=limits.max_texts,
                                       description="Sentence-pair models: the second text of each of texts, in order.")
        text: Text = Field(None, description="One text, instead of texts: the response holds one prediction.")
        text_pair: Text = Field(None, description="Sentence-pair models: the second text of text.")

        @model_validator(mode="after")
        def one_form(self):
            return _check_form(self)

    return PredictRequest


EXPLAIN_MAX_TEXTS = 16  # attributions cost ~steps forward and backward passes per text: a request stays short
EXPLAIN_MAX_STEPS = 256


def _explain_models(limits: ServeLimits, PredictRequest) -> dict:
    from pydantic import BaseModel, Field, StrictStr, StringConstraints

    Text = Annotated[StrictStr, StringConstraints(max_length=limits.max_text_chars)]

    class ExplainRequest(PredictRequest):
        texts: list[Text] = Field(
            None, min_length=1, max_length=min(limits.max_texts, EXPLAIN_MAX_TEXTS),
            description=f"Texts to explain (at most {EXPLAIN_MAX_TEXTS} a request).")
        target: str = Field(None, description="The label to explain (default: each text's prediction).")
        steps: int = Field(32, ge=1, le=EXPLAIN_MAX_STEPS, description="Integrated Gradients steps.")

    class WordScore(BaseModel):
        word: str
        score: float = Field(description="Attribution: positive raises the target's output, negative lowers it.")

    class Explanation(BaseModel):
        target: str = Field(description="The label explained (regression: the target's name).")
        output: float = Field(description="The model's output for it: a probability, or the value.")
        prediction: Union[str, int, float, list[str]] = Field(description="What /predict gives for the text.")
        words: list[WordScore]
        pair_words: Optional[list[WordScore]] = Field(None, description="A pair model's second text.")
        delta: float = Field(description="Integrated Gradients' completeness gap.")

    class ExplainResponse(BaseModel):
        explanations: list[Explanation]
        model: str

    return {"ExplainRequest": ExplainRequest, "ExplainResponse": ExplainResponse}


def _response_models() -> SimpleNamespace:
    """One response model per problem type: what a prediction holds differs."""
    from pydantic import BaseModel, Field

    class SingleLabelPrediction(BaseModel):
        label: str = Field(description="The predicted class: the most probable, or by the run's tuned binary threshold.")
        label_id: int = Field(description="Its index in the model's labels.")
        score: float = Field(description="Its probability (calibrated when the run fitted a temperature).")
        probabilities: dict[str, float] = Field(description="Probability of every class, by name.")

    class MultiLabelPrediction(BaseModel):
        labels: list[str] = Field(description="Every label whose probability reaches its threshold (may be empty).")
        probabilities: dict[str, float] = Field(description="Probability of each label on its own (sigmoid), by name.")
        thresholds: dict[str, float] = Field(description="The threshold of each label (tuned on validation, else 0.5).")

    class RegressionPrediction(BaseModel):
        value: float = Field(description="The predicted number, in the units of the training targets.")

    class SingleLabelResponse(BaseModel):
        predictions: list[SingleLabelPrediction]
        model: str
        problem_type: Literal["single_label_classification"] = SINGLE

    class MultiLabelResponse(BaseModel):
        predictions: list[MultiLabelPrediction]
        model: str
        problem_type: Literal["multi_label_classification"] = MULTI

    class RegressionResponse(BaseModel):
        predictions: list[RegressionPrediction]
        model: str
        problem_type: Literal["regression"] = REGRESSION

    return SimpleNamespace(
        response={SINGLE: SingleLabelResponse, MULTI: MultiLabelResponse, REGRESSION: RegressionResponse},
        prediction={SINGLE: SingleLabelPrediction, MULTI: MultiLabelPrediction, REGRESSION: RegressionPrediction})


def schemas(limits: ServeLimits) -> SimpleNamespace:
    """The request and response models; the request's size limits come from limits."""
    from pydantic import BaseModel, Field

    class Labels(BaseModel):
        labels: list[str]
        id2label: dict[int, str]

    class ModelInfo(BaseModel):
        name: str = Field(description="The name requests use: the run (or export) folder name.")
        labels: list[str]
        source: str = Field(description="run, export, or adapter (a run attached to a shared base)")
        problem_type: str = Field(description="single_label_classification, multi_label_classification or regression")
        text_pair: bool = Field(description="Whether the model reads sentence pairs (requests send text_pair(s)).")

    class Models(BaseModel):
        models: list[ModelInfo]

    class Health(BaseModel):
        status: str
        model: str
        source: str
        problem_type: str
        num_labels: int
        limits: dict[str, float]
        batching: dict

    class Problem(BaseModel):
        detail: str

    out = _response_models()
    PredictRequest = _request_model(limits)
    out.__dict__.update(_explain_models(limits, PredictRequest))
    out.__dict__.update(PredictRequest=PredictRequest, Labels=Labels, ModelInfo=ModelInfo, Models=Models,
                        Health=Health, Problem=Problem)
    return out


def parse_failure(body: bytes) -> str:
    """One line for a body that FastAPI could not parse (it says only "There was an error parsing the body")."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return (f"the request body is not valid UTF-8 (byte 0x{body[e.start]:02x} at position {e.start}); "
                f"send JSON encoded as UTF-8")
    try:
        json.loads(body)
    except RecursionError:
        return 'the request body nests too deeply to parse; send {"texts": ["..."]}'
    except ValueError as e:
        return f"the request body is not valid JSON ({first_line(e)[:200]})"
    return "the request body could not be parsed as JSON"


def declared_size_guard(app, limits: ServeLimits):
    """The ASGI app in front of app: a Content-Length over the body cap gets the one-line 413 before any byte is read.

    FastAPI's max_body_size caps bodies while reading them, but answers a declared oversize with a plain-text
    "Content Too Large" that replaces any handler's response; this answers it first.
    """
    async def guarded(scope, receive, send):
        size = dict(scope.get("headers") or ()).get(b"content-length", b"") if scope["type"] == "http" else b""
        if not (size.isdigit() and int(size) > limits.max_body_bytes):
            return await app(scope, receive, send)
        body = json.dumps({"detail": f"request body of {int(size):,} bytes is over the limit of "
                                     f"{limits.max_body_bytes:,} bytes (set by --max-texts and --max-text-chars)"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body.encode()})

    return guarded


def add_guards(app, limits: ServeLimits) -> None:
    """One clear line for a malformed body, and for one over the body cap (FastAPI's max_body_size, which counts
    the bytes while it reads them, with or without a Content-Length)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        status, detail = _messages(list(exc.errors()), limits)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException):
        if exc.status_code == 413:
            return JSONResponse({"detail": f"request body is over the limit of {limits.max_body_bytes:,} bytes "
                                           f"(set by --max-texts and --max-text-chars)"}, status_code=413)
        if exc.status_code == 400:  # FastAPI's parser met what json.loads raises other than JSONDecodeError
            try:
                body = await request.body()  # the route's Request: its body is cached
            except RuntimeError:
                body = b""
            return JSONResponse({"detail": parse_failure(body)}, status_code=422)
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
