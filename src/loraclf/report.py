"""Plots and the HTML report of one run, read only from run-folder files.

    write_report(RUN) -> RUN/report/{curves.png, confusion.png, report.html}

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

from . import runs
from .errors import RunError

WRONG_EXAMPLES = 20  # the most confidently wrong validation examples shown in the report


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
    def evals(self) -> list[dict]:
        return [r for r in self.history if r.get("type") == "eval" and r.get("split", "val") == "val"
                and _numbers(r, "step", "loss", "accuracy", "macro_f1")]


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


def _draw_curves(rf: RunFiles, ax_loss, ax_metric, ax_lr) -> None:
    train, evals = rf.train, rf.evals
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color="#1f77b4", lw=1.6, label="train loss")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["loss"] for r in evals], color="#d62728", lw=1.8, marker="o", ms=4,
                     label="validation loss")
        ax_metric.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], color="#2ca02c", lw=1.8, marker="o",
                       ms=4, label="validation accuracy")
        ax_metric.plot([r["step"] for r in evals], [r["macro_f1"] for r in evals], color="#9467bd", lw=1.8, marker="s",
                       ms=4, ls="--", label="validation macro-F1")
    if train and all(_numbers(r, "learning_rate") for r in train):
        ax_lr.plot([r["step"] for r in train], [r["learning_rate"] for r in train], color="#7f7f7f", lw=1.4,
                   label="learning rate")


def plot_curves(rf: RunFiles):
    """Three panels against step: train/val loss, val accuracy and macro-F1, learning rate. Returns the figure."""
    fig, (ax_loss, ax_metric, ax_lr) = pyplot().subplots(
        3, 1, figsize=(9, 9), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.6]}, layout="constrained")
    _draw_curves(rf, ax_loss, ax_metric, ax_lr)
    best = rf.metrics.get("best_step")
    for ax in (ax_loss, ax_metric, ax_lr):
        if best:
            ax.axvline(best, color="#bbbbbb", ls=":", lw=1, zorder=0)
        ax.grid(True, alpha=0.3)
    ax_loss.set_title(f"Training curves: {rf.path.name}" + (f" (best step {best} dotted)" if best else ""), fontsize=12)
    ax_loss.set_ylabel("cross-entropy loss")
    ax_metric.set_ylabel("validation score")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (ax_loss, ax_metric, ax_lr):
        if ax.get_lines():
            ax.legend(loc="best", fontsize=9, frameon=False)
        else:
            ax.text(0.5, 0.5, f"no records in {runs.HISTORY}", ha="center", va="center", transform=ax.transAxes,
                    color="#888")
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
    short = [lab if len(lab) <= 18 else lab[:17] + "…" for lab in labels]
    tilt = len(labels) > 3 and max(len(s) for s in short) > 5  # tilt long names so neighbours do not overlap
    _draw_heatmap(fig, axes[0], cm, "counts", "{:.0f}", max(float(cm.max()), 1.0), short, tilt)
    _draw_heatmap(fig, axes[1], norm, "normalised by true label", "{:.2f}", 1.0, short, tilt)
    fig.suptitle(title, fontsize=12)
    return fig


# ------------------------------------------------------------------------------------------ the HTML report


def progress_table(rf: RunFiles) -> list[dict]:
    """One row per validation evaluation: step, epoch, the latest logged train loss at or before it and the step it
    was logged at (train.logging_steps and eval.eval_steps need not line up), val loss/accuracy/F1."""
    rows = []
    train = rf.train
    for e in rf.evals:
        before = [t for t in train if t["step"] <= e["step"]]
        rows.append({"step": e["step"], "epoch": e.get("epoch"), "train_loss": before[-1]["loss"] if before else None,
                     "train_loss_step": before[-1]["step"] if before else None,
                     "val_loss": e.get("loss"), "accuracy": e.get("accuracy"), "macro_f1": e.get("macro_f1")})
    return rows


def _train_loss_cell(row: dict) -> str:
    if row["train_loss"] is None:
        return "No log"
    if row["train_loss_step"] == row["step"]:
        return _num(row["train_loss"])
    return f"{_num(row['train_loss'])} (step {_num(row['train_loss_step'])})"


def confidently_wrong(rf: RunFiles, n: int = WRONG_EXAMPLES) -> list[dict]:
    """The n wrong validation predictions with the highest confidence."""
    wrong = [r for r in (rf.predictions or []) if str(r.get("label")) != str(r.get("predicted"))]
    for r in wrong:
        try:
            r["confidence"] = float(r.get("confidence", "nan"))
        except ValueError:
            r["confidence"] = float("nan")
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


def _metrics_section(rf: RunFiles) -> list[str]:
    m = rf.metrics
    cards = [("val accuracy", m["val"].get("accuracy")), ("val macro-F1", m["val"].get("macro_f1"))]
    if isinstance(m.get("test"), dict):
        cards += [("test accuracy", m["test"].get("accuracy")), ("test macro-F1", m["test"].get("macro_f1"))]
    rows = [[f"<span>{split}</span>", _num(s.get("accuracy")), _num(s.get("macro_f1")), _num(s.get("loss")),
             _num(s.get("n"))] for split, s in ((k, m.get(k)) for k in ("val", "test")) if isinstance(s, dict)]
    return ["<h2 id=\"metrics\">Final metrics</h2><div class=\"cards\">"
            + "".join(f"<div class=\"card\"><b>{_num(v)}</b><span>{_e(k)}</span></div>" for k, v in cards) + "</div>",
            _table(["split", "accuracy", "macro-F1", "loss", "examples"], rows, "metrics"),
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
    rows = [[_num(r["step"]), _num(r["epoch"], 2), _train_loss_cell(r), _num(r["val_loss"]), _num(r["accuracy"]),
             _num(r["macro_f1"])] for r in prog]
    return parts + [_table(["step", "epoch", "training loss (last logged)", "validation loss", "accuracy", "macro-F1"],
                           rows, "progress"),
                    "<p>The training loss is the mean over the steps since the log line before it, as logged at or "
                    "before the evaluation step; where it was logged earlier, its step is shown.</p>"]


def _per_class_section(rf: RunFiles, confusion_png: bytes | None) -> list[str]:
    parts = []
    for split in ("val", "test"):
        s = rf.metrics.get(split)
        if not isinstance(s, dict) or not s.get("per_class"):
            continue
        title = "validation" if split == "val" else "test"
        parts.append(f"<h2 id=\"per-class-{split}\">Per-class precision, recall and F1 ({title})</h2>")
        parts.append(_table(['<span class="t">class</span>', "precision", "recall", "F1", "support"],
                            [[_e(c), _num(v.get("precision"), 3), _num(v.get("recall"), 3), _num(v.get("f1"), 3),
                              _num(v.get("support"))] for c, v in s["per_class"].items()], "per-class"))
    if confusion_png is not None:
        parts.append("<h2 id=\"confusion\">Confusion matrix (validation)</h2>" + _img(confusion_png, "confusion matrix"))
    return parts


def _wrong_section(rf: RunFiles) -> list[str]:
    head = f"<h2 id=\"wrong\">The {WRONG_EXAMPLES} most confidently wrong validation examples</h2>"
    if rf.predictions is None:
        return [head, f"<p>{runs.VAL_PREDICTIONS} is missing.</p>"]
    wrong = confidently_wrong(rf)
    if not wrong:
        return [head, "<p>No wrong validation predictions.</p>"]
    return [head, _table(["text", "true label", "predicted", "confidence"],
                         [[_e(r.get("text", "")), _e(r.get("label")), _e(r.get("predicted")), _num(r["confidence"], 3)]
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


def render_html(rf: RunFiles, curves_png: bytes, confusion_png: bytes | None) -> str:
    """The report page of one run as a string."""
    config = _e(yaml.safe_dump(rf.config, sort_keys=False, allow_unicode=True))
    parts = [*_head(rf), *_metrics_section(rf), *_curves_section(rf, curves_png),
             *_per_class_section(rf, confusion_png), *_wrong_section(rf), *_params_section(rf), *_runtime_section(rf),
             f"<h2 id=\"config\">Resolved config</h2><pre>{config}</pre>", "</body></html>\n"]
    return "\n".join(parts)


def write_report(run: str | Path) -> Path:
    """Write RUN/report/ (curves.png, confusion.png, report.html) from the run folder's files; returns report.html."""
    rf = load_run(run)
    target = rf.path / runs.REPORT
    if target.exists() and not target.is_dir():  # atomic_dir would set it aside as .report.old and keep it there
        raise RunError(f"{target} is a file where the report folder goes; move it away, then run `loraclf report` again")
    runs.check_output_dir(target, "the report folder")  # before any plot is drawn
    curves = png_bytes(plot_curves(rf))
    val = rf.metrics["val"]
    confusion = None
    if val.get("confusion_matrix") and val.get("labels"):
        confusion = png_bytes(plot_confusion(val["confusion_matrix"], [str(x) for x in val["labels"]],
                                             f"Validation confusion matrix: {rf.path.name}"))
    page = render_html(rf, curves, confusion)
    try:
        with runs.atomic_dir(target) as tmp:  # all three files or none
            tmp.chmod(0o755)  # mkdtemp makes it private; a report is meant to be shared
            (tmp / runs.CURVES_PNG).write_bytes(curves)
            if confusion is not None:
                (tmp / runs.CONFUSION_PNG).write_bytes(confusion)
            (tmp / runs.REPORT_HTML).write_text(page, encoding="utf-8")
    except OSError as e:
        raise RunError(f"cannot write {target}: {e.strerror or e}") from None
    return target / runs.REPORT_HTML
