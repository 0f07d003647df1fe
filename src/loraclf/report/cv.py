"""report.html of a `loraclf cv` folder: the per-fold table of the held-out metrics with their mean ± std (and the
test split's, when the config has one), in the run report's style. It reads only cv.json's contents (no model, no
training), and every text from the run is HTML-escaped."""

from __future__ import annotations

import html
from pathlib import Path

from .. import runs
from .files import metric_name
from .html import CSS


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def fold_table(per_fold: list[dict], mean: dict, std: dict, keys: list[str]) -> str:
    """One row per fold, then mean ± std (sample std over folds) of each metric."""
    head = "".join(f"<th>{_e(metric_name(k))}</th>" for k in keys)
    rows = []
    for f in per_fold:
        held = f"<td>{f['held_out_rows']:,}</td>" if "held_out_rows" in f else "<td>–</td>"
        rows.append(f"<tr><td class=\"t\">fold {_e(f.get('fold', '?'))}</td>{held}"
                    + "".join(f"<td>{_num(f.get(k))}</td>" for k in keys) + "</tr>")
    total = f"{sum(f['held_out_rows'] for f in per_fold):,}" if all("held_out_rows" in f for f in per_fold) else "–"
    rows.append(f"<tr><th class=\"t\">mean ± std</th><th>{total}</th>"
                + "".join(f"<th>{_num(mean.get(k))} ± {_num(std.get(k))}</th>" for k in keys) + "</tr>")
    return (f"<table class=\"per-fold\"><thead><tr><th class=\"t\">fold</th><th>held-out rows</th>{head}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def _cards(cv: dict, keys: list[str]) -> str:
    cards = "".join(f"<div class=\"card\"><b>{_num(cv['mean'][k])}</b><span>{_e(metric_name(k))} ± "
                    f"{_num(cv['std'][k])}</span></div>" for k in keys[:2] if k in cv["mean"])
    return f"<div class=\"cards\">{cards}</div>"


def page(cv: dict, title: str) -> str:
    keys = [k for k in cv["per_fold"][0] if k not in ("fold", "folder", "held_out_rows")] if cv["per_fold"] else []
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>",
             f"<p class=\"sub\">{cv['rows']:,} training rows in {cv['folds']} folds"
             + (f", grouped by <code>{_e(cv['group_column'])}</code>" if cv.get("group_column") else "")
             + f" · problem type <code>{_e(cv['problem_type'])}</code> · seed {_e(cv['seed'])}</p>",
             "<h2 id=\"folds\">Held-out metrics per fold</h2>", _cards(cv, keys),
             fold_table(cv["per_fold"], cv["mean"], cv["std"], keys),
             f"<p>Each fold's run trained on the other folds' rows; its validation split: {_e(cv['validation'])}. "
             f"The held-out rows' predictions of every fold are in <code>oof.csv</code>; each fold's run folder "
             f"is <code>fold-1</code> to <code>fold-{cv['folds']}</code>. std is the sample standard deviation "
             f"over folds.</p>"]
    if cv.get("test_per_fold"):
        tests = [{"fold": f["fold"], **t} for f, t in zip(cv["per_fold"], cv["test_per_fold"])]
        parts += ["<h2 id=\"test\">Test split, each fold's run</h2>",
                  fold_table(tests, cv["test_mean"], cv["test_std"], keys)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write(cv: dict, path: str | Path, title: str) -> Path:
    path = Path(path)
    runs.atomic_write_text(path, page(cv, title))
    return path
