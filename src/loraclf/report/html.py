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
import html
import math
from pathlib import Path

import numpy as np
import yaml

from .. import task as problem, runs
from ..base.errors import RunError
from .figures import (
    plot_confusion,
    plot_curves,
    plot_per_label,
    plot_predicted_vs_true,
    plot_reliability,
    plot_residuals,
    png_bytes,
    pyplot,
    standardised,
)
from .explanations import errors_section
from .files import WRONG_EXAMPLES, RunFiles, curve_metrics, load_run, metric_name, sweep_trial_line

__all__ = ["write_report", "load_run", "RunFiles", "metric_name", "pyplot", "png_bytes", "plot_curves",
           "plot_confusion", "plot_per_label", "plot_predicted_vs_true", "plot_residuals", "plot_reliability",
           "progress_table", "confidently_wrong", "render_html", "figures"]


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
CSS = _CSS  # the report's style, shared by the other pages in its style (cv.py)


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
    if standardised(rf):
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
        if runs.PER_LABEL_PNG in figs:
            parts.append("<h2 id=\"per-label-bars\">Per-label precision, recall, F1 and thresholds (validation)</h2>"
                         + _img(figs[runs.PER_LABEL_PNG], "per-label bars"))
        return parts
    if rf.problem_type == problem.REGRESSION:
        if runs.PREDICTED_VS_TRUE_PNG not in figs:
            return [f"<p>{runs.VAL_PREDICTIONS} is missing, so there is no predicted-vs-true plot.</p>"]
        return ["<h2 id=\"predicted-vs-true\">Predicted vs true (validation)</h2>"
                + _img(figs[runs.PREDICTED_VS_TRUE_PNG], "predicted vs true"),
                "<h2 id=\"residuals\">Residuals (validation)</h2>" + _img(figs[runs.RESIDUALS_PNG], "residual histogram")]
    parts = _score_tables(rf, "per_class", "class")
    if runs.CONFUSION_PNG in figs:
        parts.append("<h2 id=\"confusion\">Confusion matrix (validation)</h2>"
                     + _img(figs[runs.CONFUSION_PNG], "confusion matrix"))
    return parts + _calibration_section(rf, figs.get(runs.RELIABILITY_PNG))


def _text_cell(r: dict) -> str:
    pair = r.get("text_pair")
    return _e(r.get("text", "")) + (f"<br><i>pair:</i> {_e(pair)}" if pair else "")


_WHAT = {problem.SINGLE: "most confidently wrong validation examples",
         problem.MULTI: "validation examples with the most label errors",
         problem.REGRESSION: "validation examples with the largest residuals"}


def _wrong_section(rf: RunFiles) -> list[str]:
    pt = rf.problem_type
    what = _WHAT[pt]
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
        return {runs.PER_LABEL_PNG: png_bytes(plot_per_label(per_label, f"Validation per-label scores: {name}"))}
    if pt == problem.REGRESSION:
        y, pred = _column(rf.predictions, "label"), _column(rf.predictions, "predicted")
        ok = ~(np.isnan(y) | np.isnan(pred))
        if not ok.any():
            return {}
        return {runs.PREDICTED_VS_TRUE_PNG: png_bytes(plot_predicted_vs_true(y[ok], pred[ok], f"Predicted vs true: {name}")),
                runs.RESIDUALS_PNG: png_bytes(plot_residuals(pred[ok] - y[ok], f"Residuals (predicted - true): {name}"))}
    figs = {}
    if val.get("confusion_matrix") and val.get("labels"):
        figs[runs.CONFUSION_PNG] = png_bytes(plot_confusion(val["confusion_matrix"], [str(x) for x in val["labels"]],
                                                   f"Validation confusion matrix: {name}"))
    if isinstance(rf.metrics.get("calibration"), dict) and rf.predictions:
        conf = _column(rf.predictions, "confidence")
        correct = np.array([str(r.get("label")) == str(r.get("predicted")) for r in rf.predictions])
        ok = ~np.isnan(conf)
        if ok.any():
            figs[runs.RELIABILITY_PNG] = png_bytes(plot_reliability(conf[ok], correct[ok]))
    return figs


def figures(rf: RunFiles) -> dict[str, bytes]:
    """Every figure of the report as PNG bytes, by file name: curves.png first, then the type's figures."""
    return {runs.CURVES_PNG: png_bytes(plot_curves(rf)), **_type_figures(rf)}


def render_html(rf: RunFiles, figs: dict[str, bytes], why: tuple[str, ...] = ()) -> str:
    """The report page of one run as a string (figs: from figures(); why: the errors' explanations section)."""
    config = _e(yaml.safe_dump(rf.config, sort_keys=False, allow_unicode=True))
    parts = [*_head(rf), *_metrics_section(rf), *_curves_section(rf, figs[runs.CURVES_PNG]),
             *_outcome_sections(rf, figs), *_wrong_section(rf), *why, *_params_section(rf), *_runtime_section(rf),
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
    page = render_html(rf, figs, tuple(errors_section(rf.path, confidently_wrong(rf), _WHAT[rf.problem_type])))
    try:
        with runs.atomic_dir(target) as tmp:  # every file or none
            tmp.chmod(0o755)  # mkdtemp makes it private; a report is meant to be shared
            for name, png in figs.items():
                (tmp / name).write_bytes(png)
            (tmp / runs.REPORT_HTML).write_text(page, encoding="utf-8")
    except OSError as e:
        raise RunError(f"cannot write {target}: {e.strerror or e}") from None
    return target / runs.REPORT_HTML
