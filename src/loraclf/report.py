"""Plots and the HTML report of one run, read only from run-folder files.

    write_report(RUN) -> RUN/report/{curves.png, <the type's figures>, report.html}

The figures follow the run's problem type (metrics.json "problem_type"; a run written before it existed is
single-label): single-label: confusion.png, and reliability.png when the run was calibrated; multi-label:
per_label.png (precision, recall, F1 and the decision threshold of each label); regression: predicted_vs_true.png
and residuals.png.

report.html is one self-contained page: images are base64 data URIs, there is no external CSS or JS, and all
text from the run (config values, label names, example texts) is HTML-escaped. Comparing runs is in compare.py.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import problem, runs
from .errors import RunError

WRONG_EXAMPLES = 20  # the most confidently wrong validation examples shown in the report
# the figures of each problem type, beside curves.png
PER_LABEL_PNG = "per_label.png"
PREDICTED_VS_TRUE_PNG = "predicted_vs_true.png"
RESIDUALS_PNG = "residuals.png"
RELIABILITY_PNG = "reliability.png"
NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1", "subset_accuracy": "subset accuracy",
         "hamming_loss": "Hamming loss", "mean_average_precision": "mean average precision", "loss": "loss",
         "ece": "ECE", "nll": "NLL", "rmse": "RMSE", "mae": "MAE", "pearson": "Pearson r", "spearman": "Spearman ρ",
         "r2": "R²"}
CALIBRATION_SCALARS = ("ece", "nll")  # single-label: in the calibration table, not drawn as curves
UNITLESS = ("pearson", "spearman", "r2")  # regression: drawn on their own axis, apart from the errors in target units
VAL_LOSS = {problem.SINGLE: "cross-entropy", problem.MULTI: "binary cross-entropy", problem.REGRESSION: "MSE"}
METRIC_COLOURS = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]


def metric_name(key: str) -> str:
    """A metric's name for people: macro_f1 -> macro-F1."""
    return NAMES.get(key, key)


def curve_metrics(problem_type: str) -> list[str]:
    """The validation metrics drawn against step: the type's scalars (main first) but the loss and calibration."""
    return [k for k in problem.SCALARS[problem_type] if k != "loss" and k not in CALIBRATION_SCALARS]


# ------------------------------------------------------------------------------------------ reading a run


@dataclass
class RunFiles:
    """What the report needs from a run folder; optional files are None/empty when absent."""

    path: Path
    config: dict
    metrics: dict
    params: dict | None = None
    history: list[dict] = field(default_factory=list)
    predictions: list[dict] | None = None  # rows of val_predictions.csv
    tracking: dict | None = None

    @property
    def train(self) -> list[dict]:
        return [r for r in self.history if r.get("type") == "train" and _numbers(r, "step", "loss")]

    @property
    def problem_type(self) -> str:
        model = self.config.get("model") if isinstance(self.config.get("model"), dict) else {}
        return self.metrics.get("problem_type") or model.get("problem_type") or problem.SINGLE

    @property
    def evals(self) -> list[dict]:
        main = problem.main_metric(self.problem_type)
        return [r for r in self.history if r.get("type") == "eval" and r.get("split", "val") == "val"
                and _numbers(r, "step", main)]


def _numbers(record: dict, *keys: str) -> bool:
    """True when every key holds a number; records written by another version or torn by hand are skipped."""
    return all(isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool) for k in keys)


def _read_config(run: Path) -> dict:
    try:
        config = yaml.safe_load((run / runs.CONFIG).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        config = None
    if not isinstance(config, dict):
        raise RunError(f"{run}/{runs.CONFIG} is not a valid YAML mapping; the run folder is damaged")
    return config


def _read_predictions(run: Path) -> list[dict] | None:
    if not (run / runs.VAL_PREDICTIONS).is_file():
        return None
    try:
        with open(run / runs.VAL_PREDICTIONS, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error):
        raise RunError(f"{run}/{runs.VAL_PREDICTIONS} is not a readable UTF-8 CSV; the run folder is damaged") from None


def _read_optional_json(path: Path):
    """A side file that may be absent (None) but, when present, must hold a JSON object (else: named as damaged)."""
    return runs.read_json_object(path) if path.is_file() else None


def load_run(run: str | Path) -> RunFiles:
    """Read a finished run folder (config.yaml and metrics.json must exist)."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"run folder not found: {run} (give the folder that `loraclf train` printed)")
    if not (run / runs.CONFIG).is_file():
        raise RunError(f"{run} is not a loraclf run folder: {runs.CONFIG} is missing")
    if not (run / runs.METRICS).is_file():
        raise RunError(f"{run}/{runs.METRICS} is missing; the run did not finish, so there is nothing to report yet")
    config = _read_config(run)
    _read_optional_json(run / runs.ADAPT)  # self-training's record: checked here, shown from metrics.json
    metrics = runs.read_json(run / runs.METRICS)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("val"), dict):
        raise RunError(f"{run}/{runs.METRICS} has no 'val' metrics; the run folder is damaged")
    if metrics.get("problem_type", problem.SINGLE) not in problem.PROBLEM_TYPES:
        raise RunError(f"{run}/{runs.METRICS} names an unknown problem_type {metrics['problem_type']!r}; the run "
                       f"folder is damaged")
    return RunFiles(run, config, metrics, _read_optional_json(run / runs.PARAMS), runs.read_jsonl(run / runs.HISTORY),
                    _read_predictions(run), _read_optional_json(run / runs.TRACKING))


def sweep_trial_line(run: str | Path) -> str | None:
    """An HTML line for a run's report when the run is a trial of a sweep (it holds sweep_trial.json), else None."""
    path = Path(run) / runs.SWEEP_TRIAL
    if not path.is_file():
        return None
    info = runs.read_json_object(path, {"trial": int, "study": str})
    if not isinstance(info.get("params", {}), dict):
        raise runs.damaged(path, "'params' must be an object")
    params = ", ".join(f"{k}={_short(v)}" for k, v in info.get("params", {}).items())
    return (f"<p>Sweep trial {int(info['trial'])} of study <code>{html.escape(str(info['study']))}</code>: "
            f"{html.escape(params)}. All trials: "
            f"<code>{html.escape(str(Path(run).parent / runs.SWEEP_SUMMARY))}</code>.</p>")


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------ plots


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display); imported on first use, as matplotlib is slow to import."""
    import matplotlib

    matplotlib.use("Agg")  # must precede pyplot's first import
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    return buf.getvalue()


def _standardised(rf: RunFiles) -> bool:
    d = rf.metrics.get("decision") if isinstance(rf.metrics.get("decision"), dict) else {}
    return rf.problem_type == problem.REGRESSION and (d.get("target_std", 1.0), d.get("target_mean", 0.0)) != (1.0, 0.0)


def _draw_metric_curves(rf: RunFiles, ax) -> list:
    """The type's validation metrics against step (the main one solid); regression's unitless ones on a twin axis.
    Returns the axes drawn on."""
    axes, twin = [ax], None
    for i, key in enumerate(curve_metrics(rf.problem_type)):
        recs = [r for r in rf.evals if _numbers(r, key)]
        if not recs:
            continue
        target = ax
        if rf.problem_type == problem.REGRESSION and key in UNITLESS:
            if twin is None:
                twin = ax.twinx()
                twin.set_ylabel("correlation, R²")
                axes.append(twin)
            target = twin
        target.plot([r["step"] for r in recs], [r[key] for r in recs], color=METRIC_COLOURS[i % len(METRIC_COLOURS)],
                    lw=1.8, marker="o" if i == 0 else "s", ms=4, ls="-" if i == 0 else "--",
                    label=f"validation {metric_name(key)}")
    return axes


def _draw_curves(rf: RunFiles, ax_loss, ax_metric, ax_lr) -> list:
    train, evals = rf.train, [r for r in rf.evals if _numbers(r, "loss")]
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color="#1f77b4", lw=1.6,
                     label="train loss (standardised targets)" if _standardised(rf) else "train loss")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["loss"] for r in evals], color="#d62728", lw=1.8, marker="o", ms=4,
                     label="validation loss")
    metric_axes = _draw_metric_curves(rf, ax_metric)
    if train and all(_numbers(r, "learning_rate") for r in train):
        ax_lr.plot([r["step"] for r in train], [r["learning_rate"] for r in train], color="#7f7f7f", lw=1.4,
                   label="learning rate")
    return metric_axes


def _legend(ax, axes: list) -> None:
    handles = [ln for a in axes for ln in a.get_lines() if not ln.get_label().startswith("_")]
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=9, frameon=False)
    else:
        ax.text(0.5, 0.5, f"no records in {runs.HISTORY}", ha="center", va="center", transform=ax.transAxes,
                color="#888")


def plot_curves(rf: RunFiles):
    """Three panels against step: train/val loss, the type's validation metrics, learning rate. Returns the figure."""
    fig, (ax_loss, ax_metric, ax_lr) = pyplot().subplots(
        3, 1, figsize=(9, 9), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.6]}, layout="constrained")
    metric_axes = _draw_curves(rf, ax_loss, ax_metric, ax_lr)
    best = rf.metrics.get("best_step")
    for ax in (ax_loss, ax_metric, ax_lr):
        if best:
            ax.axvline(best, color="#bbbbbb", ls=":", lw=1, zorder=0)
        ax.grid(True, alpha=0.3)
    ax_loss.set_title(f"Training curves: {rf.path.name}" + (f" (best step {best} dotted)" if best else ""), fontsize=12)
    ax_loss.set_ylabel(f"loss (validation: {VAL_LOSS[rf.problem_type]})")
    ax_metric.set_ylabel("validation error (target units)" if rf.problem_type == problem.REGRESSION
                         else "validation score")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax, axes in ((ax_loss, [ax_loss]), (ax_metric, metric_axes), (ax_lr, [ax_lr])):
        _legend(ax, axes)
    return fig


def _draw_heatmap(fig, ax, data, title: str, fmt: str, top: float, short: list[str], tilt: bool) -> None:
    k = len(short)
    im = ax.imshow(data, cmap="Blues", vmin=0, vmax=top)
    ax.set_title(title, fontsize=11)
    ax.set_xticks(range(k), short, rotation=35 if tilt else 0, ha="right" if tilt else "center", fontsize=9)
    ax.set_yticks(range(k), short, fontsize=9)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    if k <= 20:  # beyond that the numbers no longer fit their cells
        for i in range(k):
            for j in range(k):
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if data[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)


def plot_confusion(matrix: list[list[int]], labels: list[str], title: str = "Validation confusion matrix"):
    """Raw counts and the row-normalised matrix (each row sums to 1: recall on the diagonal), side by side."""
    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = max(4.2, 0.55 * len(labels) + 2.5)
    fig, axes = pyplot().subplots(1, 2, figsize=(2 * side + 1, side + 0.6), layout="constrained")
    short = _short_names(labels)
    tilt = len(labels) > 3 and max(len(s) for s in short) > 5  # tilt long names so neighbours do not overlap
    _draw_heatmap(fig, axes[0], cm, "counts", "{:.0f}", max(float(cm.max()), 1.0), short, tilt)
    _draw_heatmap(fig, axes[1], norm, "normalised by true label", "{:.2f}", 1.0, short, tilt)
    fig.suptitle(title, fontsize=12)
    return fig


def _short_names(labels: list[str]) -> list[str]:
    return [lab if len(lab) <= 18 else lab[:17] + "…" for lab in labels]


def plot_per_label(per_label: dict, title: str = "Validation per-label scores"):
    """Multi-label: precision, recall and F1 of each label as grouped bars; below, each label's decision threshold."""
    names = list(per_label)
    x = np.arange(len(names))
    fig, (ax, ax_t) = pyplot().subplots(2, 1, figsize=(max(6.0, 0.9 * len(names) + 2.5), 6.5), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1.4]}, layout="constrained")
    for i, (key, colour) in enumerate((("precision", "#1f77b4"), ("recall", "#ff7f0e"), ("f1", "#2ca02c"))):
        ax.bar(x + (i - 1) * 0.27, [float(per_label[n].get(key) or 0.0) for n in names], 0.27, color=colour,
               label="F1" if key == "f1" else key)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("validation score")
    ax.legend(loc="best", fontsize=9, frameon=False, ncol=3)
    ax.set_title(title, fontsize=12)
    ax_t.bar(x, [float(per_label[n].get("threshold") or 0.5) for n in names], 0.5, color="#7f7f7f",
             label="decision threshold")
    ax_t.axhline(0.5, color="#bbbbbb", ls=":", lw=1)
    ax_t.set_ylim(0, 1)
    ax_t.set_ylabel("threshold")
    tilt = len(names) > 3 and max(len(n) for n in names) > 5
    ax_t.set_xticks(x, _short_names(names), rotation=35 if tilt else 0, ha="right" if tilt else "center", fontsize=9)
    for a in (ax, ax_t):
        a.grid(True, axis="y", alpha=0.3)
    return fig


def plot_predicted_vs_true(y: np.ndarray, pred: np.ndarray, title: str = "Validation: predicted vs true"):
    """Regression: one dot per validation row, with the y = x line a perfect model would sit on."""
    fig, ax = pyplot().subplots(figsize=(6.5, 6.2), layout="constrained")
    ax.scatter(y, pred, s=14, alpha=0.6, color="#1f77b4", label="validation rows")
    both = np.concatenate([y, pred]) if len(y) else np.array([0.0, 1.0])
    lo, hi = float(both.min()), float(both.max())
    ax.plot([lo, hi], [lo, hi], color="#d62728", ls="--", lw=1.4, label="y = x")
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    ax.set_title(title, fontsize=12)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9, frameon=False)
    return fig


def plot_residuals(residuals: np.ndarray, title: str = "Validation residuals (predicted - true)"):
    """Regression: the histogram of the residuals, with zero marked."""
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2), layout="constrained")
    ax.hist(residuals, bins=max(5, min(40, int(np.sqrt(max(len(residuals), 1))) * 2)), color="#9467bd", alpha=0.85)
    ax.axvline(0.0, color="#d62728", ls="--", lw=1.4)
    ax.set_xlabel("residual (predicted - true)")
    ax.set_ylabel("validation rows")
    ax.set_title(title, fontsize=12)
    ax.grid(True, alpha=0.3)
    return fig


def plot_reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = problem.ECE_BINS,
                     title: str = "Reliability diagram (validation, after calibration)"):
    """Single-label: accuracy against mean confidence per equal-width confidence bin, and the rows per bin."""
    from sklearn.calibration import calibration_curve

    fig, (ax, ax_n) = pyplot().subplots(2, 1, figsize=(6.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]},
                                        layout="constrained")
    accuracy, mean_conf = calibration_curve(correct.astype(int), confidence, n_bins=bins, strategy="uniform")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", ls="--", lw=1.2, label="perfectly calibrated")
    ax.plot(mean_conf, accuracy, color="#2ca02c", marker="o", ms=5, lw=1.8, label="accuracy per confidence bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=12)
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    ax_n.hist(confidence, bins=np.linspace(0, 1, bins + 1), color="#1f77b4", alpha=0.85)
    ax_n.set_xlabel("confidence (probability of the predicted class)")
    ax_n.set_ylabel("rows")
    for a in (ax, ax_n):
        a.grid(True, alpha=0.3)
    return fig


# ------------------------------------------------------------------------------------------ the HTML report


def progress_table(rf: RunFiles) -> list[dict]:
    """One row per validation evaluation: step, epoch, the latest logged train loss at or before it and the step it
    was logged at (train.logging_steps and eval.eval_steps need not line up), val loss and the type's metrics."""
    rows = []
    train = rf.train
    keys = curve_metrics(rf.problem_type)
    for e in rf.evals:
        before = [t for t in train if t["step"] <= e["step"]]
        rows.append({"step": e["step"], "epoch": e.get("epoch"), "train_loss": before[-1]["loss"] if before else None,
                     "train_loss_step": before[-1]["step"] if before else None,
                     "val_loss": e.get("loss"), **{k: e.get(k) for k in keys}})
    return rows


def _train_loss_cell(row: dict) -> str:
    if row["train_loss"] is None:
        return "No log"
    if row["train_loss_step"] == row["step"]:
        return _num(row["train_loss"])
    return f"{_num(row['train_loss'])} (step {_num(row['train_loss_step'])})"


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _names(cell) -> set[str]:
    return {n for n in str(cell or "").split("|") if n}


def _most_label_errors(rows: list[dict], n: int) -> list[dict]:
    """Multi-label: the rows whose predicted set differs from the true set in the most labels; ties by how far the
    label probabilities are from the truth."""
    out = []
    for r in rows:
        true, pred = _names(r.get("labels")), _names(r.get("predicted"))
        if true == pred:
            continue
        probs = {k[len("prob_"):]: _float(v) for k, v in r.items() if k.startswith("prob_")}
        far = sum(abs(p - (name in true)) for name, p in probs.items() if not math.isnan(p))
        out.append({**r, "errors": len(true ^ pred), "distance": far})
    out.sort(key=lambda r: (-r["errors"], -r["distance"]))
    return out[:n]


def _largest_residuals(rows: list[dict], n: int) -> list[dict]:
    out = [{**r, "residual": _float(r.get("predicted")) - _float(r.get("label"))} for r in rows]
    out = [r for r in out if not math.isnan(r["residual"])]
    out.sort(key=lambda r: -abs(r["residual"]))
    return out[:n]


def confidently_wrong(rf: RunFiles, n: int = WRONG_EXAMPLES) -> list[dict]:
    """The n worst validation predictions: single-label, the wrong ones with the highest confidence; multi-label,
    the most label errors; regression, the largest residuals."""
    if rf.problem_type == problem.MULTI:
        return _most_label_errors(rf.predictions or [], n)
    if rf.problem_type == problem.REGRESSION:
        return _largest_residuals(rf.predictions or [], n)
    wrong = [r for r in (rf.predictions or []) if str(r.get("label")) != str(r.get("predicted"))]
    for r in wrong:
        r["confidence"] = _float(r.get("confidence", "nan"))
    wrong.sort(key=lambda r: -r["confidence"] if not math.isnan(r["confidence"]) else math.inf)
    return wrong[:n]


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        return f"{x:.{digits}f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return _e(x)


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """header and cells must already be HTML (escaped)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1180px;margin:24px auto;padding:0 20px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 9px;text-align:right;vertical-align:top}
th{background:#f3f5f8}td.t,th.t{text-align:left}
table.ex td:first-child{text-align:left;max-width:640px}
table.per-class td:first-child,table.params td:first-child,table.hw td,table.ex td,
table.per-class th:first-child,table.params th:first-child,table.hw th,table.ex th{text-align:left}
table.ex td:last-child,table.ex th:last-child{text-align:right}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:22px}.card span{color:#666;font-size:12px}
img{max-width:100%;border:1px solid #eee}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px;max-height:520px}
"""


def _head(rf: RunFiles) -> list[str]:
    name = rf.path.name
    return [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>loraclf report: {_e(name)}</title><style>{_CSS}</style></head><body>",
            f"<h1>loraclf report: {_e(name)}</h1>",
            f"<p class=\"sub\">{_e(rf.path.resolve())} · finished {_e(rf.metrics.get('finished_at', '?'))}</p>"]


def _splits(m: dict) -> list[tuple[str, dict]]:
    return [(k, m[k]) for k in ("val", "test") if isinstance(m.get(k), dict)]


def _decision_line(rf: RunFiles) -> str:
    d = rf.metrics.get("decision") if isinstance(rf.metrics.get("decision"), dict) else {}
    facts = [f"problem type <code>{_e(rf.problem_type)}</code>"]
    if d.get("temperature", 1.0) != 1.0:
        facts.append(f"temperature {_num(d['temperature'])}")
    if d.get("thresholds") and rf.problem_type == problem.SINGLE:
        facts.append(f"decision threshold {_num(d['thresholds'][0], 3)} "
                     f"({_e(d.get('threshold_metric'))} on validation)")
    if rf.problem_type == problem.MULTI and d.get("threshold_metric"):
        facts.append(f"per-label thresholds tuned for {_e(d['threshold_metric'])} on validation")
    if _standardised(rf):
        facts.append(f"trained on standardised targets (mean {_num(d.get('target_mean'))}, "
                     f"std {_num(d.get('target_std'))}); metrics are in the target's own units")
    return "<p>" + "; ".join(facts) + ".</p>"


def _metrics_section(rf: RunFiles) -> list[str]:
    m, keys = rf.metrics, problem.SCALARS[rf.problem_type]
    cards = [(f"{split} {metric_name(k)}", s.get(k)) for split, s in _splits(m) for k in keys[:2]]
    rows = [[f"<span>{split}</span>", *(_num(s.get(k)) for k in keys), _num(s.get("n"))] for split, s in _splits(m)]
    return ["<h2 id=\"metrics\">Final metrics</h2><div class=\"cards\">"
            + "".join(f"<div class=\"card\"><b>{_num(v)}</b><span>{_e(k)}</span></div>" for k, v in cards) + "</div>",
            _table(["split", *(_e(metric_name(k)) for k in keys), "examples"], rows, "metrics"),
            _decision_line(rf),
            f"<p>Weights from step {_num(m.get('best_step'))} of {_num(m.get('global_step'))}, chosen by "
            f"validation {_e(m.get('metric_for_best_model', '?'))}"
            + (" (stopped early)" if m.get("stopped_early") else "") + ".</p>",
            sweep_trial_line(rf.path) or ""]


def _curves_section(rf: RunFiles, curves_png: bytes) -> list[str]:
    parts = ["<h2 id=\"curves\">Training curves</h2>" + _img(curves_png, "training curves"),
             "<h2 id=\"progress\">Training progress</h2>"]
    prog = progress_table(rf)
    if not prog:
        return parts + [f"<p>{runs.HISTORY} has no evaluation records.</p>"]
    keys = curve_metrics(rf.problem_type)
    rows = [[_num(r["step"]), _num(r["epoch"], 2), _train_loss_cell(r), _num(r["val_loss"]),
             *(_num(r[k]) for k in keys)] for r in prog]
    return parts + [_table(["step", "epoch", "training loss (last logged)", "validation loss",
                            *(_e(metric_name(k)) for k in keys)], rows, "progress"),
                    "<p>The training loss is the mean over the steps since the log line before it, as logged at or "
                    "before the evaluation step; where it was logged earlier, its step is shown.</p>"]


def _score_tables(rf: RunFiles, key: str, what: str) -> list[str]:
    """Per-class (single-label) or per-label (multi-label, with its threshold) precision/recall/F1 tables."""
    parts = []
    for split, s in _splits(rf.metrics):
        if not s.get(key):
            continue
        title = "validation" if split == "val" else "test"
        extra = ["threshold"] if key == "per_label" else []
        parts.append(f"<h2 id=\"{key.replace('_', '-')}-{split}\">Per-{what} precision, recall and F1 ({title})</h2>")
        parts.append(_table([f'<span class="t">{what}</span>', "precision", "recall", "F1", "support", *extra],
                            [[_e(c), _num(v.get("precision"), 3), _num(v.get("recall"), 3), _num(v.get("f1"), 3),
                              _num(v.get("support")), *(_num(v.get(x), 3) for x in extra)]
                             for c, v in s[key].items()], "per-class"))
    return parts


def _calibration_section(rf: RunFiles, reliability_png: bytes | None) -> list[str]:
    cal = rf.metrics.get("calibration")
    if not isinstance(cal, dict):
        return []
    rows = [[f"<span>{split}</span>", _num(c.get("ece_before")), _num(c.get("ece_after")), _num(c.get("nll_before")),
             _num(c.get("nll_after"))] for split, c in _splits(cal)]
    parts = ["<h2 id=\"calibration\">Calibration</h2>",
             f"<p>Temperature T = {_num(cal.get('temperature'))}, fitted on validation by NLL: the logits are "
             f"divided by T before the softmax. ECE over {_num(cal.get('bins'))} equal-width confidence bins.</p>",
             _table(["split", "ECE before", "ECE after", "NLL before", "NLL after"], rows, "calibration")]
    if reliability_png is None:
        return parts + [f"<p>{runs.VAL_PREDICTIONS} is missing, so there is no reliability diagram.</p>"]
    return parts + ["<h2 id=\"reliability\">Reliability diagram (validation, after calibration)</h2>"
                    + _img(reliability_png, "reliability diagram")]


def _outcome_sections(rf: RunFiles, figs: dict[str, bytes]) -> list[str]:
    """What the predictions look like, per problem type: the figures beside curves.png and their tables."""
    if rf.problem_type == problem.MULTI:
        parts = _score_tables(rf, "per_label", "label")
        if PER_LABEL_PNG in figs:
            parts.append("<h2 id=\"per-label-bars\">Per-label precision, recall, F1 and thresholds (validation)</h2>"
                         + _img(figs[PER_LABEL_PNG], "per-label bars"))
        return parts
    if rf.problem_type == problem.REGRESSION:
        if PREDICTED_VS_TRUE_PNG not in figs:
            return [f"<p>{runs.VAL_PREDICTIONS} is missing, so there is no predicted-vs-true plot.</p>"]
        return ["<h2 id=\"predicted-vs-true\">Predicted vs true (validation)</h2>"
                + _img(figs[PREDICTED_VS_TRUE_PNG], "predicted vs true"),
                "<h2 id=\"residuals\">Residuals (validation)</h2>" + _img(figs[RESIDUALS_PNG], "residual histogram")]
    parts = _score_tables(rf, "per_class", "class")
    if runs.CONFUSION_PNG in figs:
        parts.append("<h2 id=\"confusion\">Confusion matrix (validation)</h2>"
                     + _img(figs[runs.CONFUSION_PNG], "confusion matrix"))
    return parts + _calibration_section(rf, figs.get(RELIABILITY_PNG))


def _text_cell(r: dict) -> str:
    pair = r.get("text_pair")
    return _e(r.get("text", "")) + (f"<br><i>pair:</i> {_e(pair)}" if pair else "")


def _wrong_section(rf: RunFiles) -> list[str]:
    pt = rf.problem_type
    what = {problem.SINGLE: "most confidently wrong validation examples",
            problem.MULTI: "validation examples with the most label errors",
            problem.REGRESSION: "validation examples with the largest residuals"}[pt]
    head = f"<h2 id=\"wrong\">The {WRONG_EXAMPLES} {what}</h2>"
    if rf.predictions is None:
        return [head, f"<p>{runs.VAL_PREDICTIONS} is missing.</p>"]
    wrong = confidently_wrong(rf)
    if not wrong:
        return [head, "<p>No wrong validation predictions.</p>"]
    if pt == problem.MULTI:
        return [head, _table(["text", "true labels", "predicted", "label errors"],
                             [[_text_cell(r), _e(r.get("labels")), _e(r.get("predicted")), _num(r["errors"])]
                              for r in wrong], "ex")]
    if pt == problem.REGRESSION:
        return [head, _table(["text", "true value", "predicted", "residual"],
                             [[_text_cell(r), _e(r.get("label")), _e(r.get("predicted")), _num(r["residual"], 3)]
                              for r in wrong], "ex")]
    return [head, _table(["text", "true label", "predicted", "confidence"],
                         [[_text_cell(r), _e(r.get("label")), _e(r.get("predicted")), _num(r["confidence"], 3)]
                          for r in wrong], "ex")]


def _params_section(rf: RunFiles) -> list[str]:
    parts = ["<h2 id=\"params\">Trainable parameters</h2>"]
    p = rf.params
    if not p:
        return parts + [f"<p>{runs.PARAMS} is missing.</p>"]
    parts.append(f"<p>{_num(p.get('trainable'))} trainable of {_num(p.get('total'))} "
                 f"({_num(p.get('percent'))}%): adapter {_num(p.get('adapter'))}, head {_num(p.get('head'))}, "
                 f"other {_num(p.get('other'))}.</p>")
    groups = p.get("groups") or {}
    if groups:
        parts.append(_table(['<span class="t">parameter group</span>', "parameters"],
                            [[_e(g), _num(n)] for g, n in groups.items()], "params"))
    return parts


def _runtime_section(rf: RunFiles) -> list[str]:
    m = rf.metrics
    hw = m.get("hardware") if isinstance(m.get("hardware"), dict) else {}
    facts = [("training time (s)", m.get("train_runtime_s")), ("wall time (s)", m.get("wall_time_s")),
             ("training samples/s", m.get("train_samples_per_second")),
             ("effective batch size", m.get("effective_batch_size")),
             ("processes", m.get("num_processes")), ("precision", m.get("precision"))]
    facts += [(k, v) for k, v in hw.items()]
    for tracker, info in (rf.tracking or {}).items():
        facts += [(f"{tracker} {k}", v) for k, v in (info or {}).items()]
    return ["<h2 id=\"runtime\">Run time and hardware</h2>",
            _table(['<span class="t">item</span>', '<span class="t">value</span>'],
                   [[_e(k), _num(v, 2) if isinstance(v, float) else _e(v)] for k, v in facts if v is not None], "hw")]


def _column(rows: list[dict] | None, key: str) -> np.ndarray:
    return np.array([_float(r.get(key)) for r in (rows or [])], dtype=np.float64)


def _type_figures(rf: RunFiles) -> dict[str, bytes]:
    """The figures of the run's problem type, by file name (empty where the files they need are missing)."""
    val, name, pt = rf.metrics["val"], rf.path.name, rf.problem_type
    if pt == problem.MULTI:
        per_label = val.get("per_label")
        if not isinstance(per_label, dict) or not per_label:
            return {}
        return {PER_LABEL_PNG: png_bytes(plot_per_label(per_label, f"Validation per-label scores: {name}"))}
    if pt == problem.REGRESSION:
        y, pred = _column(rf.predictions, "label"), _column(rf.predictions, "predicted")
        ok = ~(np.isnan(y) | np.isnan(pred))
        if not ok.any():
            return {}
        return {PREDICTED_VS_TRUE_PNG: png_bytes(plot_predicted_vs_true(y[ok], pred[ok], f"Predicted vs true: {name}")),
                RESIDUALS_PNG: png_bytes(plot_residuals(pred[ok] - y[ok], f"Residuals (predicted - true): {name}"))}
    figs = {}
    if val.get("confusion_matrix") and val.get("labels"):
        figs[runs.CONFUSION_PNG] = png_bytes(plot_confusion(val["confusion_matrix"], [str(x) for x in val["labels"]],
                                                   f"Validation confusion matrix: {name}"))
    if isinstance(rf.metrics.get("calibration"), dict) and rf.predictions:
        conf = _column(rf.predictions, "confidence")
        correct = np.array([str(r.get("label")) == str(r.get("predicted")) for r in rf.predictions])
        ok = ~np.isnan(conf)
        if ok.any():
            figs[RELIABILITY_PNG] = png_bytes(plot_reliability(conf[ok], correct[ok]))
    return figs


def figures(rf: RunFiles) -> dict[str, bytes]:
    """Every figure of the report as PNG bytes, by file name: curves.png first, then the type's figures."""
    return {runs.CURVES_PNG: png_bytes(plot_curves(rf)), **_type_figures(rf)}


def render_html(rf: RunFiles, figs: dict[str, bytes]) -> str:
    """The report page of one run as a string (figs: from figures())."""
    config = _e(yaml.safe_dump(rf.config, sort_keys=False, allow_unicode=True))
    parts = [*_head(rf), *_metrics_section(rf), *_curves_section(rf, figs[runs.CURVES_PNG]),
             *_outcome_sections(rf, figs), *_wrong_section(rf), *_params_section(rf), *_runtime_section(rf),
             f"<h2 id=\"config\">Resolved config</h2><pre>{config}</pre>", "</body></html>\n"]
    return "\n".join(parts)


def write_report(run: str | Path) -> Path:
    """Write RUN/report/ (curves.png, the problem type's figures, report.html) from the run folder's files; returns
    report.html."""
    rf = load_run(run)
    target = rf.path / runs.REPORT
    if target.exists() and not target.is_dir():  # atomic_dir would set it aside as .report.old and keep it there
        raise RunError(f"{target} is a file where the report folder goes; move it away, then run `loraclf report` again")
    runs.check_output_dir(target, "the report folder")  # before any plot is drawn
    figs = figures(rf)
    page = render_html(rf, figs)
    try:
        with runs.atomic_dir(target) as tmp:  # every file or none
            tmp.chmod(0o755)  # mkdtemp makes it private; a report is meant to be shared
            for name, png in figs.items():
                (tmp / name).write_bytes(png)
            (tmp / runs.REPORT_HTML).write_text(page, encoding="utf-8")
    except OSError as e:
        raise RunError(f"cannot write {target}: {e.strerror or e}") from None
    return target / runs.REPORT_HTML
