"""audit.html: the summary, the label issues and the duplicates on one page, in the style of the run report. It
reads only what the audit wrote (summary dict, the two tables), so it needs no model."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .. import runs

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 72rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; } .meta { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
td, th { border-bottom: 1px solid #eee; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b42318; font-weight: 600; } .text { max-width: 32rem; }
"""
SHOWN_ROWS = 50
DUPLICATE_COLUMNS = ["kind", "scope", "row", "duplicate_of_row", "similarity", "conflict", "text", "duplicate_text"]


def _cell(value) -> str:
    if isinstance(value, bool):
        return f'<td class="{"bad" if value else ""}">{"yes" if value else ""}</td>'
    if isinstance(value, (int, float)):
        return f'<td class="num">{value:.4g}</td>' if isinstance(value, float) else f'<td class="num">{value}</td>'
    text = str(value)
    short = text if len(text) <= 200 else text[:200] + "..."
    return f'<td class="text" title="{html.escape(text[:2000])}">{html.escape(short)}</td>'


def table(df: pd.DataFrame, columns: list[str]) -> str:
    if df.empty:
        return '<p class="meta">none found</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row[c]) for c in columns) + "</tr>"
                   for _, row in df.head(SHOWN_ROWS).iterrows())
    more = f'<p class="meta">{len(df) - SHOWN_ROWS} more in the CSV</p>' if len(df) > SHOWN_ROWS else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _splits_html(summary: dict) -> str:
    parts = []
    for split, s in summary["splits"].items():
        balance = ", ".join(f"{html.escape(str(k))} {v['rows']} ({v['share']:.1%})"
                            for k, v in s["class_balance"].items())
        ln = s["lengths"]
        length = (f"words: median {ln['median']:.0f}, q1-q3 {ln['q1']:.0f}-{ln['q3']:.0f}, max {ln['max']}, "
                  f"{ln['outliers']} outliers" if ln.get("rows", 1) else "no rows")
        parts.append(f"<tr><td>{html.escape(split)}</td><td class=\"num\">{s['rows']}</td><td>{balance}</td>"
                     f"<td>{length}</td><td class=\"num\">{s['near_empty']['rows']}</td></tr>")
    return ("<table><tr><th>split</th><th>rows</th><th>class balance</th><th>text length</th>"
            f"<th>near-empty</th></tr>{''.join(parts)}</table>")


def _dup_counts_html(summary: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(scope)}</td><td class=\"num\">{c['exact']}</td><td class=\"num\">"
                   f"{c['near']}</td><td class=\"num\">{c['conflicting_labels']}</td></tr>"
                   for scope, c in summary["duplicates"].items())
    return ("<table><tr><th>where</th><th>exact</th><th>near</th><th>conflicting labels</th></tr>"
            f"{rows}</table>") if rows else '<p class="meta">none found</p>'


def page(summary: dict, issues: pd.DataFrame, duplicates: pd.DataFrame, title: str) -> str:
    li = summary.get("label_issues", {})
    sources = " + ".join(li.get("probabilities", {}).get("sources", ["folds"]))
    issue_note = (f"{li['flagged']} of {li['rows']} training rows flagged by cleanlab (filter_by "
                  f"{li.get('filter_by', 'prune_by_noise_rate')}) on the mean of out-of-fold probabilities from "
                  f"{html.escape(sources)}, {li['folds']} folds, worst first" if "flagged" in li
                  else html.escape(li.get("skipped", "")))
    near = summary.get("near_threshold")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<h2>Splits</h2>{_splits_html(summary)}"
            f"<h2>Label issues</h2><p class=\"meta\">{issue_note}</p>"
            f"{table(issues, ['row', 'given_label', 'suggested_label', 'self_confidence', 'text'])}"
            f"<h2>Duplicates and leaks</h2><p class=\"meta\">exact: same text after normalising case, whitespace and "
            f"punctuation; near: cosine of mean-pooled encoder embeddings &ge; {near if near is not None else 'n/a'}"
            f"</p>{_dup_counts_html(summary)}"
            f"{table(duplicates, DUPLICATE_COLUMNS)}"
            "</body></html>\n")


def write(summary: dict, issues: pd.DataFrame, duplicates: pd.DataFrame, path: Path, title: str) -> Path:
    runs.atomic_write_text(path, page(summary, issues, duplicates, title))
    return path
