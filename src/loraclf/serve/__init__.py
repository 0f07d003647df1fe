"""TODO: serve"""

from .app import (  # noqa: F401
    logger,
    Served,
    create_app,
    load_models,
    serve,
)
