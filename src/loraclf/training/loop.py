"""The training loop: epochs of batches -> optimizer steps, with logging, evaluation, early stop and checkpoints.

history.jsonl records written here:
    {"type": "train", "step", "epoch", "loss", "learning_rate", "samples_per_second", "time"}
    {"type": "eval", "split": "val", "step", "epoch", <the problem type's scalars (problem.SCALARS)>, "time"}
`time` is seconds of training since the run started (excluding evaluation only in samples_per_second).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..runs import checkpoints as checkpoint
from ..base import logs
from .. import task as problem, runs
from ..base.errors import DataError
from ..infer.forward import predict_probs
from ..infer.metrics import compute_metrics, scalars
from . import inputs as inputs_mod
from . import trackers as trackers_mod
from .loss import loss_of
from .speed.prefix import ROW
from .setup import Setup
from .state import Interrupted, LoopState, StopSignals

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Stop(Exception):
    pass


@dataclass
class _Window:
    """The samples/s window between two log lines, and the tick that times training (evaluation excluded)."""

    samples: int = 0
    start: float = field(default_factory=time.time)
    tick: float = field(default_factory=time.time)
    loss: Optional[torch.Tensor] = None  # the batches' losses since the last fold, summed on the device
    batches: int = 0

    def add_loss(self, loss: torch.Tensor) -> None:
        value = loss.detach().float()
        self.loss = value if self.loss is None else self.loss + value
        self.batches += 1

    def fold(self, state: LoopState) -> None:
        """Move the device sum into the loop state (one host synchronisation): before a log line or a checkpoint."""
        if self.loss is not None:
            state.window_loss += float(self.loss.item())
            state.window_n += self.batches
        self.loss, self.batches = None, 0


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                disable=not logs.show_progress(not disable), leave=False)


def evaluate_val(ctx: Setup, state: LoopState, step: int, epoch: float) -> dict:
    """Validation metrics at this step, appended to the history and the trackers."""
    _, out, labels = predict_probs(ctx.model, ctx.val_loader, ctx.accelerator, decision=ctx.decision,
                                   pooling=ctx.cfg.data.chunk_pooling)
    m = compute_metrics(labels, out, ctx.splits.id2label, decision=ctx.decision)
    values = scalars(m, ctx.decision.problem_type)
    rec = {"type": "eval", "split": "val", "step": step, "epoch": round(epoch, 4), **values,
           "time": round(state.train_time, 3)}
    if ctx.main:
        runs.append_jsonl(ctx.run / runs.HISTORY, rec)
        if ctx.trackers:
            ctx.accelerator.log({f"eval/{k}": v for k, v in values.items() if v is not None}, step=step)
    shown = " | ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in values.items() if v is not None)
    ctx.say(f"eval step {step}: val {shown}")
    ctx.model.train()
    return m


def save(ctx: Setup, state: LoopState) -> None:
    """A checkpoint of this step (every process waits), then retention: the newest N plus the best."""
    acc = ctx.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        checkpoint.save_checkpoint(ctx.run, state.step, ctx.unwrapped, ctx.optimizer, ctx.scheduler, state.to_json())
        runs.prune_checkpoints(ctx.run, ctx.cfg.output.save_total_limit, checkpoint.step_dir(ctx.run, state.best_step))
    acc.wait_for_everyone()


def _forward_backward(ctx: Setup, state: LoopState, batch: dict) -> torch.Tensor:
    acc, cfg = ctx.accelerator, ctx.cfg
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    with acc.accumulate(ctx.model):
        with acc.autocast(), (ctx.dropout.active() if ctx.dropout else contextlib.nullcontext()):
            if ctx.prefix is not None:  # train.prefix_cache: the encoder starts at its first adapted layer
                logits = ctx.prefix.logits(ctx.model, inputs, batch[ROW])
            else:
                logits = ctx.model(**inputs).logits
        loss = loss_of(logits, batch, ctx.loss)
        if ctx.hooks.regularizer is not None:  # e.g. AdaLoRA's orthogonality penalty
            loss = loss + ctx.hooks.regularizer()
        acc.backward(loss)
        if acc.sync_gradients and cfg.train.max_grad_norm:
            acc.clip_grad_norm_(ctx.model.parameters(), cfg.train.max_grad_norm)
        ctx.optimizer.step()
        if optimizer_stepped(acc):
            ctx.scheduler.step()
            ctx.hooks.after_step(state.step + 1)  # e.g. AdaLoRA's update_and_allocate: reads the gradients
        ctx.optimizer.zero_grad(set_to_none=True)
    return loss


def optimizer_stepped(acc) -> bool:
    """Whether the optimizer really changed the weights in this batch: not an accumulation batch, and not a step
    fp16's GradScaler skipped for an overflow. Only then do the learning-rate schedule and the adapter's hooks
    advance (an overflow's gradients are inf, which AdaLoRA's importance scores must not read)."""
    return acc.sync_gradients and not acc.optimizer_step_was_skipped


def _log_train(ctx: Setup, state: LoopState, win: _Window, at_epoch: float) -> None:
    acc = ctx.accelerator
    win.fold(state)
    elapsed = max(time.time() - win.start, 1e-9)
    local = torch.tensor(state.window_loss / max(state.window_n, 1), device=acc.device)
    window_mean = acc.reduce(local, reduction="mean").item()  # every process's batches
    rec = {"type": "train", "step": state.step, "epoch": round(at_epoch, 4), "loss": window_mean,
           "learning_rate": ctx.scheduler.get_last_lr()[0], "samples_per_second": win.samples / elapsed,
           "time": round(state.train_time, 3)}
    if ctx.main:
        runs.append_jsonl(ctx.run / runs.HISTORY, rec)
        if ctx.trackers:
            acc.log({"train/loss": rec["loss"], "train/learning_rate": rec["learning_rate"],
                     "train/samples_per_second": rec["samples_per_second"]}, step=state.step)
    ctx.say(f"step {state.step}/{ctx.plan.total_steps} | epoch {rec['epoch']:.2f} | loss {rec['loss']:.4f} | "
            f"lr {rec['learning_rate']:.3e} | {rec['samples_per_second']:.1f} samples/s")
    state.window_loss, state.window_n = 0.0, 0
    win.samples, win.start = 0, time.time()


def _evaluate_and_judge(ctx: Setup, state: LoopState, at_epoch: float, on_eval) -> None:
    """Evaluate, keep the best step, count evaluations without improvement towards early stopping."""
    cfg = ctx.cfg
    name = problem.best_metric(cfg.model.problem_type, cfg.eval.metric_for_best_model)
    m = evaluate_val(ctx, state, state.step, at_epoch)
    value, best = m[name], state.best_metric
    # a metric that is undefined here (Pearson of constant predictions) improves on nothing, but the first
    # evaluation is the best so far whatever it is
    if state.best_step is None or (value is not None and (
            best is None or (value < best if problem.lower_is_better(name) else value > best))):
        state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
    else:
        state.bad_evals += 1
        if cfg.eval.early_stopping_patience and state.bad_evals >= cfg.eval.early_stopping_patience:
            state.stopped_early = True
            ctx.say(f"early stopping at step {state.step}: no {name} improvement in {state.bad_evals} evaluations")
    if on_eval is not None:
        on_eval(state.step, m)


def _after_step(ctx: Setup, state: LoopState, stop: StopSignals, win: _Window, progress, at_epoch: float,
                on_eval) -> bool:
    """Bookkeeping after one optimizer step; True when the run is done (last step or early stop)."""
    plan, step = ctx.plan, state.step
    stop.agree(ctx.accelerator)
    now = time.time()
    state.train_time += now - win.tick
    win.tick = now
    progress.update(1)
    if step % ctx.cfg.train.logging_steps == 0 or step == plan.total_steps:
        _log_train(ctx, state, win, at_epoch)
    is_eval = step % plan.eval_every == 0 or step == plan.total_steps
    if is_eval:
        _evaluate_and_judge(ctx, state, at_epoch, on_eval)
        win.tick = time.time()  # evaluation time is not training time
    if step % plan.save_every == 0 or is_eval or step == plan.total_steps or state.stopped_early or stop.signal:
        win.fold(state)  # the checkpoint keeps the running loss, so a resumed log line equals the original
        save(ctx, state)
    if stop.signal:
        raise _Stop()
    return step >= plan.total_steps or state.stopped_early


def _run_epoch(ctx: Setup, state: LoopState, stop: StopSignals, win: _Window, progress, on_eval) -> bool:
    """One pass over the training data (from where a resumed run stopped); True when the run is done."""
    plan = ctx.plan
    epoch = inputs_mod.epoch_loader(ctx.cfg, ctx.inputs, ctx.splits, ctx.tokenizer, ctx.accelerator, state.epoch,
                                    state.samples_in_epoch, ctx.say, ctx.device)
    state.batches_in_epoch, n_batches = epoch.skipped, epoch.n_batches
    samples_at_start = state.samples_in_epoch
    for batch in epoch.loader:
        loss = _forward_backward(ctx, state, batch)
        state.batches_in_epoch += 1
        if n_batches is None:  # a stream is resumed by rows, which stay exact if the global batch changes
            state.samples_in_epoch += plan.rows_per_batch
        else:
            state.samples_in_epoch = epoch.rows_done(state.batches_in_epoch, plan.num_processes, plan.rows_per_batch)
        # summed on the device: reading it (.item()) every batch would make the host wait for the GPU each step
        win.add_loss(loss)
        win.samples += batch["input_ids"].shape[0] * plan.num_processes
        if not ctx.accelerator.sync_gradients:
            continue
        state.step += 1
        at_epoch = state.epoch + state.batches_in_epoch / n_batches if n_batches else state.epoch
        if _after_step(ctx, state, stop, win, progress, at_epoch, on_eval):
            return True
    if state.samples_in_epoch == samples_at_start == 0:  # an empty pass would repeat forever
        raise DataError(f"the training data gave no batch of {plan.rows_per_batch} rows (per-device batch x "
                        f"processes); give more rows or lower train.per_device_train_batch_size")
    state.epoch += 1
    state.batches_in_epoch = 0
    state.samples_in_epoch = 0
    return False


def _bad_stream_row(err: DataError, ctx: Setup) -> DataError:
    """The error for a bad row met mid-stream. Before the first checkpoint there is nothing to resume, so a new run's
    folder is removed; after it the folder stays, to be resumed once the data is fixed."""
    import shutil

    run = ctx.run
    if ctx.fresh and not runs.checkpoint_dirs(run):
        if ctx.main:
            shutil.rmtree(run, ignore_errors=True)
            if run.parent.resolve() != Path.cwd().resolve():
                with contextlib.suppress(OSError):  # output.dir too, when this run made it: rmdir only if empty
                    run.parent.rmdir()
        return DataError(f"{err}; no run folder was kept")
    return DataError(f"{err}; {run} keeps its checkpoints: fix the data, then `loraclf train --resume {run}`")


def fit(ctx: Setup, state: LoopState, on_eval: Optional[Callable[[int, dict], None]], quiet: bool) -> None:
    """Train until the last step, an early stop, or a signal (which saves a checkpoint and raises Interrupted)."""
    progress = _progress(ctx.plan.total_steps, state.step, quiet or not ctx.main)
    ctx.model.train()
    win = _Window()
    with StopSignals() as stop:
        try:
            while state.step < ctx.plan.total_steps and not state.stopped_early:
                if _run_epoch(ctx, state, stop, win, progress, on_eval):
                    break
        except _Stop:
            progress.close()
            ctx.say(f"{_signal_name(stop.signal)} received: saved checkpoint step-{state.step} in {ctx.run}; continue "
                    f"with `loraclf train --resume {ctx.run}`")
            trackers_mod.end(ctx.accelerator, ctx.trackers)
            raise Interrupted(stop.signal) from None
        except DataError as e:
            progress.close()
            trackers_mod.end(ctx.accelerator, ctx.trackers)
            if ctx.cfg.data.streaming:  # a bad row met mid-stream
                raise _bad_stream_row(e, ctx) from None
            raise
        except BaseException:  # e.g. optuna.TrialPruned from on_eval: close trackers so the next run can start its own
            progress.close()
            trackers_mod.end(ctx.accelerator, ctx.trackers)
            raise
    progress.close()


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name
