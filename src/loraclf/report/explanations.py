"""The HTML page of `loraclf explain`: each text with its words shaded by their attribution (red pushes the target
up, blue pushes it down, the strongest word of each text at full colour), the target, the model's output and its
prediction. It reads the explanations as plain dicts (infer.explain's JSON), so it needs no model.

errors_section() is the report's section "Why the most confident errors": the explanations of the few worst
validation predictions, computed when the report is written (through infer: a run folder keeps the predictions,
not their attributions), at fewer integration steps than `explain`'s default, to stay cheap. Where it cannot run
(captum not installed, the model not loadable from the folder) the section says why in one line instead."""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path
from typing import Optional

from .. import runs

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; color: #222; }
h1 { font-size: 1.4rem; } .meta { color: #555; font-size: 0.9rem; margin: 0.2rem 0 0.4rem; }
.text { line-height: 2; margin-bottom: 1.6rem; border-bottom: 1px solid #eee; padding-bottom: 0.8rem; }
.w { padding: 0.1rem 0.15rem; border-radius: 3px; } .side { color: #777; font-size: 0.8rem; margin-right: 0.4rem; }
.legend span { padding: 0.1rem 0.5rem; border-radius: 3px; margin-right: 0.5rem; }
"""


def _shade(score: float, scale: float) -> str:
    a = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    rgb = "220, 40, 40" if score > 0 else "40, 90, 220"
    return f"background: rgba({rgb}, {a:.3f})"


def _words_html(words: list[dict], scale: float) -> str:
    return " ".join(f'<span class="w" style="{_shade(w["score"], scale)}" title="{w["score"]:+.4g}">'
                    f'{html.escape(w["word"])}</span>' for w in words)


def _text_html(i: int, e: dict, given: Optional[str] = None) -> str:
    """One text's block; given: its true label (set) or value, shown before the target (the report's errors)."""
    words = e["words"] + (e.get("pair_words") or [])
    scale = max((abs(w["score"]) for w in words), default=0.0)
    pred = e["prediction"] if not isinstance(e["prediction"], list) else ", ".join(map(str, e["prediction"])) or "none"
    body = _words_html(e["words"], scale)
    if e.get("pair_words") is not None:
        body = (f'<span class="side">text</span>{body}<br><span class="side">text_pair</span>'
                f'{_words_html(e["pair_words"], scale)}')
    true = "" if given is None else f"true <b>{html.escape(given)}</b> &middot; "
    return (f'<div class="text"><div class="meta">#{i} &middot; {true}target <b>{html.escape(str(e["target"]))}</b> '
            f'&middot; output {e["output"]:.4g} &middot; prediction <b>{html.escape(str(pred))}</b></div>'
            f'{body}</div>')


def page(explanations: list[dict], title: str) -> str:
    texts = "\n".join(_text_html(i, e) for i, e in enumerate(explanations))
    legend = ('<p class="legend"><span style="background: rgba(220, 40, 40, 0.8)">raises the target</span>'
              '<span style="background: rgba(40, 90, 220, 0.8)">lowers it</span> Integrated Gradients on the word '
              'embeddings; hover a word for its score.</p>')
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{legend}\n{texts}\n</body></html>\n")


def write(explanations: list[dict], path: str | Path, title: str) -> Path:
    """The page, written atomically to path."""
    runs.atomic_write_text(path, page(explanations, title))
    return Path(path)


ERRORS_EXPLAINED = 5  # the report explains this many of its most confident validation errors
WHY_STYLE = (".why .meta{color:#555;font-size:12px;margin:2px 0}.why .text{line-height:2;margin-bottom:12px;"
             "border-bottom:1px solid #eee;padding-bottom:6px}.why .w{padding:1px 2px;border-radius:3px}")
REPORT_STEPS = 16  # integration steps in the report (explain's default is 32): half the cost, a larger gap


def _given(row: dict) -> str:
    """What the row's label was: the true label (set) or value, for the section's meta line."""
    return str(row.get("labels", row.get("label", "")))


def explain_rows(run: Path, rows: list[dict], steps: int = REPORT_STEPS) -> list[dict]:
    """The explanations (infer.explain's JSON) of the rows' texts (and pairs) for each row's predicted label, by
    the run's model on the CPU."""
    from ..infer import explain as explain_mod
    from ..infer.engine import load_inference_model

    im = load_inference_model(run, device="cpu")
    texts = [str(r.get("text", "")) for r in rows]
    pairs = [str(r.get("text_pair", "")) for r in rows] if any("text_pair" in r for r in rows) else None
    return explain_mod.to_dicts(explain_mod.explain_texts(im, texts, pairs, steps=steps))


def errors_section(run: Path, rows: list[dict], what: str) -> list[str]:
    """The report's HTML section: rows are the worst validation predictions (report.html.confidently_wrong),
    `what` names them; an empty list where there are none."""
    rows = rows[:ERRORS_EXPLAINED]
    if not rows:
        return []
    head = (f'<h2 id="why">Why: the {len(rows)} {what}, explained</h2>'
            f'<p class="sub">Integrated Gradients at {REPORT_STEPS} steps on the word embeddings, for the predicted '
            f'label (<code>loraclf explain</code> gives more texts and steps). Red words raised the prediction, blue '
            f'words lowered it; hover a word for its score.</p>')
    reason = _cannot_explain(run)
    if reason is None:
        try:
            found = explain_rows(run, rows)
        except Exception as e:  # noqa: BLE001 - the report is written all the same; the section names the error
            first = str(e).splitlines()[0] if str(e) else ""
            reason = f"the model could not be explained ({type(e).__name__}: {first})"
    if reason is not None:
        return [head, f"<p>Not shown: {html.escape(reason)}.</p>"]
    body = "\n".join(_text_html(i, e, _given(r)) for i, (e, r) in enumerate(zip(found, rows)))
    return [head, f"<style>{WHY_STYLE}</style>", f'<div class="why">{body}</div>']


def _cannot_explain(run: Path) -> Optional[str]:
    if importlib.util.find_spec("captum") is None:
        return "captum is not installed (pip install 'loraclf[explain]')"
    if not (Path(run) / runs.ADAPTER).is_dir():
        return f"the run folder has no {runs.ADAPTER}/ to load the model from"
    return None
