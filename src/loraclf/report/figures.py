"""The report's figures (matplotlib, headless), one function per figure; compare.py draws with the same helpers."""

from __future__ import annotations

import io

import numpy as np

from .. import task as problem, runs
from .files import METRIC_COLOURS, UNITLESS, VAL_LOSS, RunFiles, curve_metrics, metric_name, numbers


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


def standardised(rf: RunFiles) -> bool:
    d = rf.metrics.get("decision") if isinstance(rf.metrics.get("decision"), dict) else {}
    return rf.problem_type == problem.REGRESSION and (d.get("target_std", 1.0), d.get("target_mean", 0.0)) != (1.0, 0.0)


def _draw_metric_curves(rf: RunFiles, ax) -> list:
    """The type's validation metrics against step (the main one solid); regression's unitless ones on a twin axis.
    Returns the axes drawn on."""
    axes, twin = [ax], None
    for i, key in enumerate(curve_metrics(rf.problem_type)):
        recs = [r for r in rf.evals if numbers(r, key)]
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


_LOSS_NAMES = {"cross_entropy": "cross-entropy", "focal": "focal", "bce": "binary cross-entropy", "mse": "MSE",
               "huber": "Huber"}


def _section(rf: RunFiles, name: str) -> dict:
    value = rf.config.get(name)
    return value if isinstance(value, dict) else {}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def train_loss_terms(rf: RunFiles) -> list[str]:
    """What the logged training loss is, from the run's config: the loss and everything that weighs or adds to it."""
    pt, t = rf.problem_type, _section(rf, "train")
    name = problem.loss_name(pt, t.get("loss") if t.get("loss") in problem.LOSSES[pt] else None)
    terms = [_LOSS_NAMES.get(name, name)]
    if name == "focal" and _positive(t.get("focal_gamma")):
        terms[0] += f" γ={t['focal_gamma']:g}"
    weights = t.get("class_weights")
    if weights not in (None, "none", {}):
        terms.append("positive weights" if pt == problem.MULTI else "class weights")
    if pt == problem.SINGLE and _positive(t.get("label_smoothing")):
        terms.append(f"label smoothing {t['label_smoothing']:g}")
    if standardised(rf):
        terms.append("standardised targets")
    adapter = _section(rf, "adapter")
    if adapter.get("method") == "adalora" and _positive(adapter.get("adalora_orth_reg_weight")):
        terms.append("AdaLoRA orthogonality penalty added")
    if _section(rf, "adapt").get("weighting") in ("confidence", "soft"):
        terms.append(f"{_section(rf, 'adapt')['weighting']}-weighted pseudo-labels")
    return terms


def loss_labels(rf: RunFiles) -> tuple[str, str, bool]:
    """(the train curve's label, the validation curve's label, whether both are one quantity that may share an axis).

    Validation loss is the plain loss of the problem type (unweighted NLL, BCE, or MSE in target units); the training
    loss is whatever train_loss_terms says. Only when the training loss is that same plain loss are the two comparable;
    otherwise each curve names what it is and the validation loss gets its own axis."""
    val = VAL_LOSS[rf.problem_type] + (", target units" if rf.problem_type == problem.REGRESSION else "")
    terms = train_loss_terms(rf)
    if terms == [VAL_LOSS[rf.problem_type]]:
        return "train loss", "validation loss", True
    return f"train loss ({', '.join(terms)})", f"validation loss ({val})", False


def _draw_losses(rf: RunFiles, ax_loss) -> list:
    """The train and validation loss against step; on two y-axes when they are not the same quantity. Returns the
    axes drawn on."""
    train, evals = rf.train, [r for r in rf.evals if numbers(r, "loss")]
    train_label, val_label, same = loss_labels(rf)
    ax_val, axes = ax_loss, [ax_loss]
    if not same and train and evals:
        ax_val = ax_loss.twinx()
        axes.append(ax_val)
        ax_loss.set_ylabel("train loss", color="#1f77b4")  # the legend says what each one is
        ax_val.set_ylabel("validation loss", color="#d62728")
    else:
        ax_loss.set_ylabel(f"loss (validation: {VAL_LOSS[rf.problem_type]})" if same else "loss")
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color="#1f77b4", lw=1.6,
                     label=train_label)
    if evals:
        ax_val.plot([r["step"] for r in evals], [r["loss"] for r in evals], color="#d62728", lw=1.8, marker="o", ms=4,
                    label=val_label)
    return axes


def _draw_curves(rf: RunFiles, ax_loss, ax_metric, ax_lr) -> tuple[list, list]:
    loss_axes = _draw_losses(rf, ax_loss)
    metric_axes = _draw_metric_curves(rf, ax_metric)
    train = rf.train
    if train and all(numbers(r, "learning_rate") for r in train):
        ax_lr.plot([r["step"] for r in train], [r["learning_rate"] for r in train], color="#7f7f7f", lw=1.4,
                   label="learning rate")
    return loss_axes, metric_axes


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
    loss_axes, metric_axes = _draw_curves(rf, ax_loss, ax_metric, ax_lr)
    best = rf.metrics.get("best_step")
    for ax in (ax_loss, ax_metric, ax_lr):
        if best:
            ax.axvline(best, color="#bbbbbb", ls=":", lw=1, zorder=0)
        ax.grid(True, alpha=0.3)
    ax_loss.set_title(f"Training curves: {rf.path.name}" + (f" (best step {best} dotted)" if best else ""), fontsize=12)
    ax_metric.set_ylabel("validation error (target units)" if rf.problem_type == problem.REGRESSION
                         else "validation score")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax, axes in ((ax_loss, loss_axes), (ax_metric, metric_axes), (ax_lr, [ax_lr])):
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
