"""After the last step: the best weights back, final metrics, and the artifacts (adapter, metrics, predictions, report)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .. import card, checkpoint, device, report, runs
from .. import model as model_mod
from ..evaluate import compute_metrics, predict_probs
from . import trackers as trackers_mod
from .setup import Setup, eval_loader
from .state import LoopState


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    params: dict
    history: list = field(default_factory=list)


def _summary(metrics: dict) -> str:
    s = f"best step {metrics['best_step']}: val accuracy {metrics['val']['accuracy']:.4f}, macro-F1 {metrics['val']['macro_f1']:.4f}"
    if "test" in metrics:
        s += f"; test accuracy {metrics['test']['accuracy']:.4f}, macro-F1 {metrics['test']['macro_f1']:.4f}"
    return s + f"; trained {metrics['train_runtime_s']:.0f} s"


def _write_val_predictions(run: Path, splits, probs: np.ndarray, labels: np.ndarray) -> None:
    import pandas as pd

    id2label = splits.id2label
    pred = probs.argmax(-1)
    df = pd.DataFrame({
        "text": splits.validation["text"],
        "label": [id2label[int(i)] for i in labels],
        "predicted": [id2label[int(i)] for i in pred],
        "confidence": probs.max(-1).round(6),
    })
    runs.atomic_write_text(run / runs.VAL_PREDICTIONS, df.to_csv(index=False))


def _final_metrics(ctx: Setup, state: LoopState) -> tuple[dict, np.ndarray, np.ndarray]:
    _, val_probs, val_labels = predict_probs(ctx.model, ctx.val_loader, ctx.accelerator)
    metrics = {"val": compute_metrics(val_labels, val_probs, ctx.splits.id2label)}
    if ctx.inputs.test_ds is not None:
        _, test_probs, test_labels = predict_probs(ctx.model, eval_loader(ctx, ctx.inputs.test_ds), ctx.accelerator)
        metrics["test"] = compute_metrics(test_labels, test_probs, ctx.splits.id2label)
    plan = ctx.plan
    metrics.update({
        "best_step": state.best_step, "best_metric": state.best_metric,
        "metric_for_best_model": ctx.cfg.eval.metric_for_best_model,
        "global_step": state.step, "stopped_early": state.stopped_early,
        "train_runtime_s": round(state.train_time, 2), "wall_time_s": round(time.time() - ctx.started, 2),
        "train_samples_per_second": round(state.step * plan.effective_batch / max(state.train_time, 1e-9), 2),
        "effective_batch_size": plan.effective_batch, "num_processes": plan.num_processes, "precision": ctx.precision,
        "trainable_params": ctx.params["trainable"], "hardware": device.hardware(),
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    })
    if ctx.hooks.final_report is not None:
        metrics["adapter_report"] = ctx.hooks.final_report()
    return metrics, val_probs, val_labels


def finish(ctx: Setup, state: LoopState) -> TrainResult:
    """Restore the best checkpoint's weights, measure them, and write the run's artifacts."""
    run = ctx.run
    best = checkpoint.step_dir(run, state.best_step)
    if best is not None and best.is_dir():
        checkpoint.load_weights(best, ctx.unwrapped)
        ctx.hooks.finalize()  # e.g. AdaLoRA: apply its final rank mask to the restored weights
    metrics, val_probs, val_labels = _final_metrics(ctx, state)
    if ctx.main:
        # through the module, so a caller (a test) can wrap the one save step
        model_mod.save_adapter(ctx.unwrapped, ctx.tokenizer, run / runs.ADAPTER)
        _write_val_predictions(run, ctx.splits, val_probs, val_labels)
        runs.write_json(run / runs.METRICS, metrics)
        card.write(run, run / runs.ADAPTER, "adapter")  # the Hugging Face model card, from the files just written
        runs.prune_checkpoints(run, ctx.cfg.output.save_total_limit, best)
    trackers_mod.end(ctx.accelerator, ctx.trackers)
    ctx.accelerator.wait_for_everyone()
    ctx.say(_summary(metrics))
    if ctx.main and ctx.cfg.output.report:
        ctx.say(f"report: {report.write_report(run)}")
    ctx.say(f"outputs in {run}: adapter/ (PEFT), metrics.json, history.jsonl, val_predictions.csv")
    return TrainResult(run, metrics, ctx.params, runs.read_jsonl(run / runs.HISTORY))
