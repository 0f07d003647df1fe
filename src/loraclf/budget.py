"""Trainable-parameter budget: accounting and enforcement (to be completed under issue 3)."""

from __future__ import annotations

from .config import Config
from .errors import BudgetError


def enforce(cfg: Config, num_labels: int, log=print) -> Config:
    """Return cfg with adapter.r resolved; the exact count is checked again on the built model."""
    if cfg.adapter.r == "auto":
        raise BudgetError("adapter.r=auto is not implemented yet; give an integer rank")
    return cfg
