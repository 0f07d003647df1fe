"""Plots, the HTML report of one run, and the comparison of several, read only from run-folder files.

    write_report(RUN)            -> RUN/report/{curves.png, confusion.png, report.html}
    compare_runs([RUN, ...], DIR) -> DIR/{curves.png, compare.md, compare.csv}

report.html is one self-contained page: images are base64 data URIs, there is no external CSS or JS, and all
text from the run (config values, label names, example texts) is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import runs
from .errors import RunError

WRONG_EXAMPLES = 20  # the most confidently wrong validation examples shown in the report
# one colour per run in comparisons (matplotlib's tab10, cycled)
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


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


def load_run(run: str | Path) -> RunFiles:
    """Read a finished run folder (config.yaml and metrics.json must exist)."""
    import yaml

    run = Path(run)
    if not run.is_dir():
        raise RunError(f"run folder not found: {run} (give the folder that `loraclf train` printed)")
    if not (run / runs.CONFIG).is_file():
        raise RunError(f"{run} is not a loraclf run folder: {runs.CONFIG} is missing")
    if not (run / runs.METRICS).is_file():
        raise RunError(f"{run}/{runs.METRICS} is missing; the run did not finish, so there is nothing to report yet")
    try:
        config = yaml.safe_load((run / runs.CONFIG).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        config = None
    if not isinstance(config, dict):
        raise RunError(f"{run}/{runs.CONFIG} is not a valid YAML mapping; the run folder is damaged")
    metrics = runs.read_json(run / runs.METRICS)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("val"), dict):
        raise RunError(f"{run}/{runs.METRICS} has no 'val' metrics; the run folder is damaged")
    params = runs.read_json(run / runs.PARAMS) if (run / runs.PARAMS).is_file() else None
    tracking = runs.read_json(run / "tracking.json") if (run / "tracking.json").is_file() else None
    predictions = None
    if (run / runs.VAL_PREDICTIONS).is_file():
        try:
            with open(run / runs.VAL_PREDICTIONS, newline="", encoding="utf-8") as f:
                predictions = list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error):
            raise RunError(f"{run}/{runs.VAL_PREDICTIONS} is not a readable UTF-8 CSV; the run folder is damaged") from None
    return RunFiles(run, config, metrics, params, runs.read_jsonl(run / runs.HISTORY), predictions, tracking)


# ------------------------------------------------------------------------------------------ plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's first import
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rf: RunFiles):
    """Three panels against step: train/val loss, val accuracy and macro-F1, learning rate. Returns the figure."""
    plt = _plt()
    fig, (ax_loss, ax_metric, ax_lr) = plt.subplots(
        3, 1, figsize=(9, 9), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.6]}, layout="constrained")
    train, evals = rf.train, rf.evals
    name = rf.path.name
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
    best = rf.metrics.get("best_step")
    for ax in (ax_loss, ax_metric, ax_lr):
        if best:
            ax.axvline(best, color="#bbbbbb", ls=":", lw=1, zorder=0)
        ax.grid(True, alpha=0.3)
    ax_loss.set_title(f"Training curves: {name}" + (f" (best step {best} dotted)" if best else ""), fontsize=12)
    ax_loss.set_ylabel("cross-entropy loss")
    ax_metric.set_ylabel("validation score")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (ax_loss, ax_metric, ax_lr):
        if ax.get_lines():
            ax.legend(loc="best", fontsize=9, frameon=False)
        else:
            ax.text(0.5, 0.5, "no records in history.jsonl", ha="center", va="center", transform=ax.transAxes, color="#888")
    return fig


def plot_confusion(matrix: list[list[int]], labels: list[str], title: str = "Validation confusion matrix"):
    """Raw counts and the row-normalised matrix (each row sums to 1: recall on the diagonal), side by side."""
    import numpy as np

    plt = _plt()
    cm = np.asarray(matrix, dtype=float)
    k = len(labels)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = max(4.2, 0.55 * k + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side + 0.6), layout="constrained")
    short = [lab if len(lab) <= 18 else lab[:17] + "…" for lab in labels]
    annotate = k <= 20
    tilt = k > 3 and max(len(s) for s in short) > 5  # tilt long names so neighbours do not overlap
    for ax, data, sub, fmt, top in ((axes[0], cm, "counts", "{:.0f}", max(float(cm.max()), 1.0)),
                                    (axes[1], norm, "normalised by true label", "{:.2f}", 1.0)):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=top)
        ax.set_title(sub, fontsize=11)
        ax.set_xticks(range(k), short, rotation=35 if tilt else 0, ha="right" if tilt else "center", fontsize=9)
        ax.set_yticks(range(k), short, fontsize=9)
        ax.set_xlabel("predicted label")
        ax.set_ylabel("true label")
        if annotate:
            hi = top / 2
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=9,
                            color="white" if data[i, j] > hi else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=12)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ the HTML report


def progress_table(rf: RunFiles) -> list[dict]:
    """One row per validation evaluation: step, epoch, latest train loss at or before it, val loss/accuracy/F1."""
    rows = []
    train = rf.train
    for e in rf.evals:
        before = [t for t in train if t["step"] <= e["step"]]
        rows.append({"step": e["step"], "epoch": e.get("epoch"), "train_loss": before[-1]["loss"] if before else None,
                     "val_loss": e.get("loss"), "accuracy": e.get("accuracy"), "macro_f1": e.get("macro_f1")})
    return rows


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


def render_html(rf: RunFiles, curves_png: bytes, confusion_png: bytes | None) -> str:
    """The report page of one run as a string."""
    import yaml

    m = rf.metrics
    val = m["val"]
    name = rf.path.name
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>loraclf report: {_e(name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>loraclf report: {_e(name)}</h1>",
             f"<p class=\"sub\">{_e(rf.path.resolve())} · finished {_e(m.get('finished_at', '?'))}</p>"]

    # final metrics
    cards = [("val accuracy", val.get("accuracy")), ("val macro-F1", val.get("macro_f1"))]
    if isinstance(m.get("test"), dict):
        cards += [("test accuracy", m["test"].get("accuracy")), ("test macro-F1", m["test"].get("macro_f1"))]
    parts.append("<h2 id=\"metrics\">Final metrics</h2><div class=\"cards\">"
                 + "".join(f"<div class=\"card\"><b>{_num(v)}</b><span>{_e(k)}</span></div>" for k, v in cards) + "</div>")
    rows = []
    for split in ("val", "test"):
        s = m.get(split)
        if isinstance(s, dict):
            rows.append([f"<span>{split}</span>", _num(s.get("accuracy")), _num(s.get("macro_f1")), _num(s.get("loss")),
                         _num(s.get("n"))])
    parts.append(_table(["split", "accuracy", "macro-F1", "loss", "examples"], rows, "metrics"))
    parts.append(f"<p>Weights from step {_num(m.get('best_step'))} of {_num(m.get('global_step'))}, chosen by "
                 f"validation {_e(m.get('metric_for_best_model', '?'))}"
                 + (" (stopped early)" if m.get("stopped_early") else "") + ".</p>")
    from .sweep import report_line  # one line when this run is a trial of a sweep

    parts.append(report_line(rf.path) or "")

    # curves + progress table
    parts.append("<h2 id=\"curves\">Training curves</h2>" + _img(curves_png, "training curves"))
    prog = progress_table(rf)
    parts.append("<h2 id=\"progress\">Training progress</h2>")
    if prog:
        parts.append(_table(["step", "epoch", "training loss", "validation loss", "accuracy", "macro-F1"],
                            [[_num(r["step"]), _num(r["epoch"], 2), _num(r["train_loss"]) if r["train_loss"] is not None else "No log",
                              _num(r["val_loss"]), _num(r["accuracy"]), _num(r["macro_f1"])] for r in prog], "progress"))
    else:
        parts.append("<p>history.jsonl has no evaluation records.</p>")

    # per class + confusion
    for split in ("val", "test"):
        s = m.get(split)
        if not isinstance(s, dict) or not s.get("per_class"):
            continue
        title = "validation" if split == "val" else "test"
        parts.append(f"<h2 id=\"per-class-{split}\">Per-class precision, recall and F1 ({title})</h2>")
        parts.append(_table(['<span class="t">class</span>', "precision", "recall", "F1", "support"],
                            [[_e(c), _num(v.get("precision"), 3), _num(v.get("recall"), 3), _num(v.get("f1"), 3),
                              _num(v.get("support"))] for c, v in s["per_class"].items()], "per-class"))
    if confusion_png is not None:
        parts.append("<h2 id=\"confusion\">Confusion matrix (validation)</h2>" + _img(confusion_png, "confusion matrix"))

    # confidently wrong examples
    parts.append(f"<h2 id=\"wrong\">The {WRONG_EXAMPLES} most confidently wrong validation examples</h2>")
    if rf.predictions is None:
        parts.append(f"<p>{runs.VAL_PREDICTIONS} is missing.</p>")
    else:
        wrong = confidently_wrong(rf)
        if wrong:
            parts.append(_table(["text", "true label", "predicted", "confidence"],
                                [[_e(r.get("text", "")), _e(r.get("label")), _e(r.get("predicted")), _num(r["confidence"], 3)]
                                 for r in wrong], "ex"))
        else:
            parts.append("<p>No wrong validation predictions.</p>")

    # parameters
    parts.append("<h2 id=\"params\">Trainable parameters</h2>")
    p = rf.params
    if p:
        parts.append(f"<p>{_num(p.get('trainable'))} trainable of {_num(p.get('total'))} "
                     f"({_num(p.get('percent'))}%): adapter {_num(p.get('adapter'))}, head {_num(p.get('head'))}, "
                     f"other {_num(p.get('other'))}.</p>")
        groups = p.get("groups") or {}
        if groups:
            parts.append(_table(['<span class="t">parameter group</span>', "parameters"],
                                [[_e(g), _num(n)] for g, n in groups.items()], "params"))
    else:
        parts.append(f"<p>{runs.PARAMS} is missing.</p>")

    # run time, hardware, tracking
    hw = m.get("hardware") if isinstance(m.get("hardware"), dict) else {}
    parts.append("<h2 id=\"runtime\">Run time and hardware</h2>")
    facts = [("training time (s)", m.get("train_runtime_s")), ("wall time (s)", m.get("wall_time_s")),
             ("training samples/s", m.get("train_samples_per_second")), ("effective batch size", m.get("effective_batch_size")),
             ("processes", m.get("num_processes")), ("precision", m.get("precision"))]
    facts += [(k, v) for k, v in hw.items()]
    if rf.tracking:
        for tracker, info in rf.tracking.items():
            for k, v in (info or {}).items():
                facts.append((f"{tracker} {k}", v))
    parts.append(_table(['<span class="t">item</span>', '<span class="t">value</span>'],
                        [[_e(k), _num(v, 2) if isinstance(v, float) else _e(v)] for k, v in facts if v is not None], "hw"))

    # config
    parts.append("<h2 id=\"config\">Resolved config</h2><pre>"
                 + _e(yaml.safe_dump(rf.config, sort_keys=False, allow_unicode=True)) + "</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(run: str | Path) -> Path:
    """Write RUN/report/ (curves.png, confusion.png, report.html) from the run folder's files; returns report.html."""
    rf = load_run(run)
    curves = _png(plot_curves(rf))
    val = rf.metrics["val"]
    confusion = None
    if val.get("confusion_matrix") and val.get("labels"):
        confusion = _png(plot_confusion(val["confusion_matrix"], [str(x) for x in val["labels"]],
                                        f"Validation confusion matrix: {rf.path.name}"))
    page = render_html(rf, curves, confusion)
    target = rf.path / runs.REPORT
    try:
        with runs.atomic_dir(target) as tmp:  # all three files or none
            tmp.chmod(0o755)  # mkdtemp makes it private; a report is meant to be shared
            (tmp / "curves.png").write_bytes(curves)
            if confusion is not None:
                (tmp / "confusion.png").write_bytes(confusion)
            (tmp / "report.html").write_text(page, encoding="utf-8")
    except OSError as e:
        raise RunError(f"cannot write {target}: {e.strerror or e}") from None
    return target / "report.html"


# ------------------------------------------------------------------------------------------ comparing runs

COMPARE_METRICS = [  # (column, getter)
    ("val_accuracy", lambda m: (m.get("val") or {}).get("accuracy")),
    ("val_macro_f1", lambda m: (m.get("val") or {}).get("macro_f1")),
    ("val_loss", lambda m: (m.get("val") or {}).get("loss")),
    ("test_accuracy", lambda m: (m.get("test") or {}).get("accuracy")),
    ("test_macro_f1", lambda m: (m.get("test") or {}).get("macro_f1")),
    ("best_step", lambda m: m.get("best_step")),
    ("trainable_params", lambda m: m.get("trainable_params")),
    ("train_runtime_s", lambda m: m.get("train_runtime_s")),
]
_MISSING = "(unset)"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _labels(paths: list[Path]) -> list[str]:
    """Run folder names; parent/name where two names clash."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def differing_keys(configs: list[dict]) -> dict[str, list]:
    """Flattened config keys whose values are not all equal, in config order, with each run's value."""
    flats = [_flat(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return {k: [f.get(k, _MISSING) for f in flats] for k in keys
            if len({repr(f.get(k, _MISSING)) for f in flats}) > 1}


def plot_compare(rfs: list[RunFiles], labels: list[str]):
    """Four panels (train loss, val loss, val accuracy, val macro-F1), one line per run in each. Returns the figure."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True, layout="constrained")
    panels = [(axes[0, 0], "training loss", "train", "loss"), (axes[0, 1], "validation loss", "eval", "loss"),
              (axes[1, 0], "validation accuracy", "eval", "accuracy"), (axes[1, 1], "validation macro-F1", "eval", "macro_f1")]
    for i, (rf, label) in enumerate(zip(rfs, labels)):
        colour = _TAB10[i % len(_TAB10)]
        for ax, _, kind, key in panels:
            recs = [r for r in (rf.train if kind == "train" else rf.evals) if r.get(key) is not None]
            if recs:
                ax.plot([r["step"] for r in recs], [r[key] for r in recs], color=colour, lw=1.6,
                        marker=None if kind == "train" else "o", ms=3.5, label=label)
    for ax, title, _, _ in panels:
        ax.set_title(title, fontsize=11)
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    handles, names = [], []
    for ax, *_ in panels:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), fontsize=9, frameon=False)
    fig.suptitle(f"Comparison of {len(rfs)} run(s)", fontsize=12)
    return fig


def _cell(v) -> str:
    """A config value as the user would write it in an override."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return "null" if v is None else str(v)


def _metric(col: str, v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2f}" if col.endswith("_s") else f"{v:.4f}"
    return str(v)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def compare_runs(run_paths: list, output: str | Path) -> Path:
    """Overlay several runs' curves and tabulate their differing config keys and final metrics.

    Writes OUTPUT/curves.png, OUTPUT/compare.md and OUTPUT/compare.csv (one row per run); returns compare.md.
    """
    if not run_paths:
        raise RunError("compare needs at least one run folder")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise RunError(f"--output {output} exists and is not a folder; give a folder to write the comparison into")
    rfs = [load_run(p) for p in run_paths]  # every run is checked before anything is written
    labels = _labels([rf.path for rf in rfs])
    diff = differing_keys([rf.config for rf in rfs])
    metrics = [[get(rf.metrics) for _, get in COMPARE_METRICS] for rf in rfs]
    png = _png(plot_compare(rfs, labels))

    # CSV: one row per run
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "path", *diff.keys(), *(c for c, _ in COMPARE_METRICS)])
    for i, rf in enumerate(rfs):
        w.writerow([labels[i], str(rf.path), *(_cell(v[i]) for v in diff.values()), *("" if x is None else x for x in metrics[i])])

    # Markdown: the differences (keys x runs), then the metrics (runs x metrics)
    md = [f"# Comparison of {len(rfs)} run(s)", "", "![curves](curves.png)", "", "## Config keys that differ", ""]
    if diff:
        md += ["| key | " + " | ".join(_md(x) for x in labels) + " |", "|---|" + "---|" * len(labels)]
        md += [f"| {_md(k)} | " + " | ".join(_md(_cell(x)) for x in vals) + " |" for k, vals in diff.items()]
    else:
        md.append("The resolved configs are identical.")
    md += ["", "## Final metrics", "", "| run | " + " | ".join(c for c, _ in COMPARE_METRICS) + " |",
           "|---|" + "---:|" * len(COMPARE_METRICS)]
    md += [f"| {_md(labels[i])} | " + " | ".join(_metric(c, x) for (c, _), x in zip(COMPARE_METRICS, metrics[i])) + " |"
           for i in range(len(rfs))]
    md += ["", "Runs: " + ", ".join(f"`{rf.path}`" for rf in rfs), ""]

    try:
        output.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_bytes(output / "curves.png", png)
        runs.atomic_write_text(output / "compare.csv", buf.getvalue())
        runs.atomic_write_text(output / "compare.md", "\n".join(md))
    except OSError as e:
        raise RunError(f"cannot write the comparison into {output}: {e.strerror or e}") from None
    return output / "compare.md"
