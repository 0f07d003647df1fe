"""Training, on Accelerate: one run from a config to a complete run folder, and self-training over rounds of runs.

Reads top to bottom: setup -> fit -> finish. It may import model, data, infer (evaluation and prediction), publish
(the model card), report, runs, config, task and base; only the faces (cli, api) and sweep import it, and
inference, serving, artifacts and reports never do.

    setup.py          run folder path, Accelerate, data, budget and model, optimizer, step plan, resume
    inputs.py         augmented rows, tokenized splits, each epoch's loader
    loss.py           the loss of each problem type, with its weights and the regression target scaling
    trackers.py       TensorBoard / MLflow through Accelerate
    state.py          the loop's resumable state, signals
    loop.py           the loop: steps, logging, evaluation, early stop, checkpoints, signals
    speed/            speed levers of the step: prefix.py (train.prefix_cache), dropout.py (train.fast_dropout)
    calibrate.py      after the last step: temperature and decision thresholds, fitted on validation
    finish.py         best weights back, final metrics, artifacts, report
    self_train.py     self-training (data.unlabeled): teacher -> pseudo-labels -> student, round by round
    pseudo_labels.py  pseudo-labels and their confidence per problem type, their selection, the student's train set
    cv/               k-fold training (the one k-fold loop): fold assignment, folds as runs, out-of-fold predictions,
                      the `cv` verb (cv.json, oof.csv, report.html); `audit` runs its folds on it
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
