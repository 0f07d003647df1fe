"""The HTML page of `loraclf explain`: each text with its words shaded by their attribution (red pushes the target
up, blue pushes it down, the strongest word of each text at full colour), the target, the model's output and its
prediction. It reads the explanations as plain dicts (infer.explain's JSON), so it needs no model."""

from __future__ import annotations

import html
from pathlib import Path

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
    return " ".join(f'<span class="w" style="{_shade(w["score"], scale)}" title="{w["score"]:+.4f}">'
                    f'{html.escape(w["word"])}</span>' for w in words)


def _text_html(i: int, e: dict) -> str:
    words = e["words"] + (e.get("pair_words") or [])
    scale = max((abs(w["score"]) for w in words), default=0.0)
    pred = e["prediction"] if not isinstance(e["prediction"], list) else ", ".join(map(str, e["prediction"])) or "none"
    body = _words_html(e["words"], scale)
    if e.get("pair_words") is not None:
        body = (f'<span class="side">text</span>{body}<br><span class="side">text_pair</span>'
                f'{_words_html(e["pair_words"], scale)}')
    return (f'<div class="text"><div class="meta">#{i} &middot; target <b>{html.escape(str(e["target"]))}</b> '
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
