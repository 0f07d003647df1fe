"""After the last step: the best weights back, final metrics, and the artifacts (adapter, metrics, predictions, report)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ..publish import card
from ..runs import checkpoints as checkpoint
from ..base import device
from .. import task as problem, report, runs
from .. import model as model_mod
from ..infer.forward import predict_logits
from ..infer.metrics import compute_metrics
from . import calibrate as decide
from . import trackers as trackers_mod
from .setup import Setup, eval_loader
from .state import LoopState


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    params: dict
    history: list = field(default_factory=list)


def _summary(metrics: dict, problem_type: str) -> str:
    keys = problem.SCALARS[problem_type][:2]

    def part(split):
        m = metrics[split]
        return f"{split} " + ", ".join(f"{k.replace('_', ' ')} {m[k]:.4f}" for k in keys if m.get(k) is not None)

    s = f"best step {metrics['best_step']}: {part('val')}"
    if "test" in metrics:
        s += f"; {part('test')}"
    return s + f"; trained {metrics['train_runtime_s']:.0f} s"


def _joined(row, id2label: dict[int, str]) -> str:
    return "|".join(id2label[j] for j in np.flatnonzero(np.asarray(row) > 0.5))


def _write_val_predictions(run: Path, splits, out: np.ndarray, labels: np.ndarray, decision: problem.Decision) -> None:
    """One row per validation text: the true label(s) or value, the prediction, and its confidence or error."""
    import pandas as pd

    id2label, pt = splits.id2label, decision.problem_type
    df = pd.DataFrame({"text": splits.validation["text"]})
    if "text_pair" in splits.validation.column_names:
        df["text_pair"] = splits.validation["text_pair"]
    pred = problem.predictions(out, decision)
    if pt == problem.REGRESSION:
        df["label"], df["predicted"] = labels, np.round(out, 6)
        df["residual"] = np.round(out - labels, 6)
    elif pt == problem.MULTI:
        df["labels"] = [_joined(r, id2label) for r in labels]
        df["predicted"] = [_joined(r, id2label) for r in pred]
        for j in range(len(id2label)):
            df[f"prob_{id2label[j]}"] = out[:, j].round(6)
    else:
        df["label"] = [id2label[int(i)] for i in labels]
        df["predicted"] = [id2label[int(i)] for i in pred]
        df["confidence"] = out.max(-1).round(6)
    runs.atomic_write_text(run / runs.VAL_PREDICTIONS, df.to_csv(index=False))


def _run_facts(ctx: Setup, state: LoopState) -> dict:
    plan = ctx.plan
    return {
        "best_step": state.best_step, "best_metric": state.best_metric,
        "metric_for_best_model": problem.best_metric(ctx.cfg.model.problem_type, ctx.cfg.eval.metric_for_best_model),
        "global_step": state.step, "stopped_early": state.stopped_early,
        "train_runtime_s": round(state.train_time, 2), "wall_time_s": round(time.time() - ctx.started, 2),
        "train_samples_per_second": round(state.step * plan.effective_batch / max(state.train_time, 1e-9), 2),
        "effective_batch_size": plan.effective_batch, "num_processes": plan.num_processes, "precision": ctx.precision,
        "trainable_params": ctx.params["trainable"], "hardware": device.hardware(),
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }


def _logits(ctx: Setup, ds):
    return predict_logits(ctx.model, eval_loader(ctx, ds) if ds is not ctx.inputs.val_ds else ctx.val_loader,
                          ctx.accelerator, pooling=ctx.cfg.data.chunk_pooling)


def _final_metrics(ctx: Setup, state: LoopState) -> tuple[dict, np.ndarray, np.ndarray, problem.Decision]:
    """The decision rule fitted on validation (thresholds, temperature), then val and test metrics under it."""
    _, val_logits, val_labels = _logits(ctx, ctx.inputs.val_ds)
    decision = decide.fit(ctx.cfg, ctx.decision, val_logits, val_labels, ctx.splits.id2label)
    id2label = ctx.splits.id2label
    val_out = problem.outputs(val_logits, decision)
    metrics = {"problem_type": decision.problem_type,
               "val": compute_metrics(val_labels, val_out, id2label, decision=decision)}
    test = None
    if ctx.inputs.test_ds is not None:
        _, test_logits, test_labels = _logits(ctx, ctx.inputs.test_ds)
        metrics["test"] = compute_metrics(test_labels, problem.outputs(test_logits, decision), id2label,
                                          decision=decision)
        test = (test_logits, test_labels)
    if decision.temperature != 1.0 or ctx.cfg.eval.calibration != "none":
        metrics["calibration"] = decide.calibration_summary(decision, (val_logits, val_labels), test)
    metrics["decision"] = decision.to_json()
    metrics.update(_run_facts(ctx, state))
    if ctx.hooks.final_report is not None:
        metrics["adapter_report"] = ctx.hooks.final_report()
    return metrics, val_out, val_labels, decision


def finish(ctx: Setup, state: LoopState) -> TrainResult:
    """Restore the best checkpoint's weights, measure them, and write the run's artifacts."""
    run = ctx.run
    best = checkpoint.step_dir(run, state.best_step)
    if best is not None and best.is_dir():
        checkpoint.load_weights(best, ctx.unwrapped)
        ctx.hooks.finalize()  # e.g. AdaLoRA: apply its final rank mask to the restored weights
    metrics, val_out, val_labels, decision = _final_metrics(ctx, state)
    if ctx.main:
        # through the module, so a caller (a test) can wrap the one save step
        model_mod.save_adapter(ctx.unwrapped, ctx.tokenizer, run / runs.ADAPTER)
        _write_val_predictions(run, ctx.splits, val_out, val_labels, decision)
        runs.write_json(run / runs.DECISION, decision.to_json())
        runs.write_json(run / runs.METRICS, metrics)
        # the Hugging Face model card, from the files just written (opening them checks the finished run)
        card.write(runs.Run.open(run), run / runs.ADAPTER, "adapter")
        runs.prune_checkpoints(run, ctx.cfg.output.save_total_limit, best)
    trackers_mod.end(ctx.accelerator, ctx.trackers)
    ctx.accelerator.wait_for_everyone()
    ctx.say(_summary(metrics, decision.problem_type))
    if ctx.main and ctx.cfg.output.report:
        ctx.say(f"report: {report.write_report(run)}")
    ctx.say(f"outputs in {run}: adapter/ (PEFT), metrics.json, history.jsonl, val_predictions.csv")
    return TrainResult(run, metrics, ctx.params, runs.read_jsonl(run / runs.HISTORY))
