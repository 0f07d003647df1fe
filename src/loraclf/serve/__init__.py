"""The HTTP service: `app` (FastAPI + uvicorn: routes, one response schema per problem type, the loader of what
is served), `schemas` (request and response models, size limits), `microbatch` (concurrent requests share one
forward pass) and `multi_adapter` (several runs as adapters on one shared base). Request bodies become texts
through loraclf.infer.inputs, the path predict and the Python API use. It may import loraclf.infer and everything
below it; never training or sweep."""

from .app import (  # noqa: F401
    logger,
    Served,
    create_app,
    load_models,
    serve,
)
