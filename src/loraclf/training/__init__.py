"""Training, on Accelerate. Reads top to bottom: setup -> fit -> finish.

    setup.py     run folder path, Accelerate, data, budget and model, optimizer, step plan, resume
    inputs.py    augmented rows, tokenized splits, each epoch's loader
    loop.py      the loop: steps, logging, evaluation, early stop, checkpoints, signals
    prefix.py    train.prefix_cache: the frozen layers below the lowest adapter, once per training row
    dropout.py   train.fast_dropout: cheaper dropout masks for the training steps
    finish.py    best weights back, final metrics, artifacts, report
    trackers.py  TensorBoard / MLflow through Accelerate
    state.py     the loop's resumable state, signals
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ..base import logs
from ..config import Config
from ..base.errors import LoraclfError
from .finish import TrainResult, finish
from .loop import fit
from .setup import build_optimizer, default_run_name, eval_loader, prepare, restore, set_seed, setup, start_trackers
from .state import Interrupted

__all__ = ["train", "prepare", "TrainResult", "Interrupted", "default_run_name", "build_optimizer", "set_seed"]


def train(cfg: Config, resume: Optional[str | Path] = None, quiet: bool = False, splits=None,
          run_dir: Optional[Path] = None, on_eval: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """Fine-tune as configured and write a complete run folder. Returns its path and final metrics.

    resume: a run folder to continue from its newest complete checkpoint.
    on_eval: called after every evaluation with (step, metrics); raising optuna.TrialPruned there stops the run.
    """
    with logs.quiet(quiet):
        with logs.held(LoraclfError):  # a start refused on bad input prints its one error line and nothing before it
            ctx = setup(cfg, resume, splits, run_dir)
            state = restore(ctx)
            start_trackers(ctx)
        ctx.val_loader = eval_loader(ctx, ctx.inputs.val_ds)
        fit(ctx, state, on_eval, quiet)
        return finish(ctx, state)
