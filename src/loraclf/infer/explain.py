"""Why a prediction was made: token attributions by Integrated Gradients (Captum's LayerIntegratedGradients on the
encoder's word-embedding layer), merged from word pieces back into words.

The attributed output is the one the run reports, under its decision: a class's probability (single-label, its
temperature applied), a label's own probability (multi-label) or the predicted value (regression). The baseline
keeps the special tokens and replaces every text token by the padding token. Texts are cut exactly as `predict`
cuts them (data.long_text): a document in chunks is attributed window by window and the windows are stitched back
(a word seen by several overlapping windows gets the mean of its scores). A pair model's two texts are both
attributed: `words` for the first, `pair_words` for the second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch

from .. import task as problem
from ..base import device as device_mod
from ..base.errors import DataError, ModelError, did_you_mean
from ..task import MULTI, REGRESSION
from .engine import InferenceModel

DEFAULT_STEPS = 32  # integration steps: the completeness gap at 32 is under 5% of the output on the tiny and MiniLM runs
MAX_STEPS = 1024


@dataclass
class Explanation:
    """One text's attributions: each word with its score (positive: pushes the target up), the target and the
    model's output for it."""

    target: str  # the label attributed (regression: the target's name)
    output: float  # the model's output for the target: a probability, or the value
    prediction: object  # what predict gives for the text (a label, a list of labels, a value)
    words: list[tuple[str, float]] = field(default_factory=list)
    pair_words: Optional[list[tuple[str, float]]] = None  # a pair model's second text
    delta: float = 0.0  # Integrated Gradients' completeness gap: output - baseline output - sum of scores

    def to_json(self) -> dict:
        out = asdict(self)
        out["words"] = [{"word": w, "score": s} for w, s in self.words]
        if self.pair_words is not None:
            out["pair_words"] = [{"word": w, "score": s} for w, s in self.pair_words]
        return out


def check_explainable(im: InferenceModel, precision: str, steps: int) -> None:
    """Refuse, before any work, what gradients cannot run through."""
    if device_mod.resolve_inference(precision, "--precision") == device_mod.INT8:
        raise ModelError("explain needs fp32 (or bf16) weights: gradients do not flow through int8 layers; run it "
                         "without --precision int8 (an int8 export keeps its fp32 weights, which explain uses)")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise DataError(f"--steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    if next(im.model.parameters(), None) is None:
        raise ModelError("this model has no PyTorch weights to take gradients of (an ONNX graph); explain a run "
                         "folder or an export's model.safetensors")


def target_index(im: InferenceModel, target: Optional[str]) -> Optional[int]:
    """The class id of a named target label (None: each text's predicted label)."""
    if target is None:
        return None
    if im.problem_type == REGRESSION:
        raise DataError("a regression model has one output, the value: drop --target")
    names = {name: i for i, name in im.id2label.items()}
    if str(target) not in names:
        raise DataError(f"unknown target label '{target}'{did_you_mean(str(target), list(names))}; this model's "
                        f"labels are: {', '.join(list(names)[:20])}")
    return names[str(target)]


def _forward(model, decision: problem.Decision, target: int):
    """The attributed output of a batch of embeddings' worth of inputs: one number per row."""
    def f(input_ids, attention_mask, token_type_ids=None):
        kw = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        logits = model(input_ids=input_ids, **kw).logits.float()
        if decision.problem_type == REGRESSION:
            return logits[:, 0] * decision.target_std + decision.target_mean
        z = logits / decision.temperature
        if decision.problem_type == MULTI:
            return torch.sigmoid(z[:, target])
        return torch.softmax(z, dim=-1)[:, target]
    return f


def _window(tokenizer, enc, row: int) -> dict[str, torch.Tensor]:
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return {k: torch.tensor([enc[k][row]]) for k in keys}


def _baseline(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    special = set(tokenizer.all_special_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep = torch.tensor([[int(t) in special for t in ids[0]]])
    return torch.where(keep, ids, torch.full_like(ids, pad))


def attribute_window(im: InferenceModel, inputs: dict, target: int, steps: int) -> tuple[np.ndarray, float, float]:
    """Per-token scores of one window, its output, and the completeness gap."""
    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError:
        raise ModelError("explain needs captum: pip install 'loraclf[explain]'") from None

    model = im.model
    f = _forward(model, im.decision, target)
    lig = LayerIntegratedGradients(f, model.get_input_embeddings())
    ids = inputs["input_ids"].to(model.device)
    extra = tuple(inputs[k].to(model.device) for k in ("attention_mask", "token_type_ids") if k in inputs)
    base = _baseline(im.tokenizer, inputs["input_ids"]).to(model.device)
    attr, delta = lig.attribute(ids, baselines=base, additional_forward_args=extra, n_steps=steps,
                                return_convergence_delta=True, internal_batch_size=steps)
    with torch.no_grad():
        out = float(f(ids, *extra)[0])
    return attr.sum(-1)[0].detach().float().cpu().numpy(), out, float(delta[0])


def to_dicts(explanations: list[Explanation]) -> list[dict]:
    return [e.to_json() for e in explanations]


# ------------------------------------------------------------------------------------------ tokens -> words


def _encodings(im: InferenceModel, text: str, pair: Optional[str]) -> list[dict]:
    """The windows predict feeds the model for one text (windows.encode's calls, with character offsets), each as
    {inputs, offsets: [(side, start, end) or None per token]}."""
    from ..data import windows

    tok, data = im.tokenizer, im.data
    if pair is not None:
        (text,), (pair,) = windows.cut_long_sides(tok, [text], [pair], data.max_length)
        enc = tok(text, pair, truncation=data.truncation, max_length=data.max_length, return_offsets_mapping=True)
        sides = enc.sequence_ids(0)
        return [{"inputs": _window(tok, {k: [v] for k, v in enc.items() if k != "offset_mapping"}, 0),
                 "offsets": [None if s is None else (s, a, b) for s, (a, b) in zip(sides, enc["offset_mapping"])]}]
    if data.long_text == "head_tail":
        return [_head_tail_window(im, text)]
    chunks = data.long_text == "chunks"
    enc = tok([text], truncation=True, max_length=data.max_length, return_offsets_mapping=True,
              **({"stride": data.stride, "return_overflowing_tokens": True} if chunks else {}))
    out = []
    for row in range(len(enc["input_ids"])):
        sides = enc.sequence_ids(row)
        out.append({"inputs": _window(tok, enc, row),
                    "offsets": [None if s is None else (0, a, b) for s, (a, b) in zip(sides, enc["offset_mapping"][row])]})
    return out


def _head_tail_window(im: InferenceModel, text: str) -> dict:
    """head_tail's one window (windows.encode's ids) with the offsets of the tokens it kept."""
    from ..data import windows

    ids = windows.encode(im.tokenizer, [text], None, im.data)
    plain = im.tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True)
    k, budget = windows.head_tokens(im.tokenizer, im.data)
    offsets, row = plain["offset_mapping"], plain["input_ids"]
    if len(row) > budget:
        offsets, row = offsets[:k] + offsets[len(row) - (budget - k):], row[:k] + row[len(row) - (budget - k):]
    window = ids["input_ids"][0]
    start = next((i for i in range(len(window) - len(row) + 1) if window[i:i + len(row)] == row), 1)
    spans: list = [None] * len(window)
    for j, (a, b) in enumerate(offsets):
        spans[start + j] = (0, a, b)
    return {"inputs": _window(im.tokenizer, ids, 0), "offsets": spans}


def _words(text: str, token_scores: dict[tuple[int, int], list[float]]) -> list[tuple[str, float]]:
    """Token scores summed into the whitespace-separated words they fall in; words the model never saw are left
    out (the middle of a head_tail text, the end of a truncated one)."""
    import re

    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    totals: dict[int, float] = {}
    starts = np.array([a for a, _ in spans]) if spans else np.zeros(0, dtype=int)
    for (a, b), scores in token_scores.items():
        if b <= a or not len(starts):
            continue
        w = int(np.searchsorted(starts, a, side="right")) - 1
        if w >= 0:
            totals[w] = totals.get(w, 0.0) + float(np.mean(scores))
    return [(text[spans[w][0]:spans[w][1]], round(totals[w], 6)) for w in sorted(totals)]


def explain_one(im: InferenceModel, text: str, pair: Optional[str], target: Optional[int], steps: int,
                prediction) -> Explanation:
    windows_ = _encodings(im, text, pair)
    if target is None:
        target = _predicted_target(im, text, pair)
    per_side: list[dict] = [{}, {}]
    outputs, gaps = [], []
    for w in windows_:
        scores, out, gap = attribute_window(im, w["inputs"], target, steps)
        outputs.append(out)
        gaps.append(gap)
        for span, score in zip(w["offsets"], scores):
            if span is not None:
                per_side[span[0]].setdefault((span[1], span[2]), []).append(float(score))
    name = im.id2label[target] if im.problem_type != REGRESSION else im.labels[0]
    pooled = float(np.max(outputs)) if im.data.chunk_pooling == "max" else float(np.mean(outputs))
    return Explanation(name, round(pooled, 6), prediction, _words(text, per_side[0]),
                       _words(pair, per_side[1]) if pair is not None else None, round(float(np.mean(gaps)), 6))


def _predicted_target(im: InferenceModel, text: str, pair: Optional[str]) -> int:
    """The label a text is explained for by default: the predicted class (single-label), the most probable label
    (multi-label), the one output (regression)."""
    if im.problem_type == REGRESSION:
        return 0
    out = im.predict([text], pairs=None if pair is None else [pair])[0]
    if im.problem_type == MULTI:
        return int(np.argmax(out))
    return int(problem.predictions(out[None, :], im.decision)[0])


def explain_texts(im: InferenceModel, texts: list[str], pairs: Optional[list[str]] = None,
                  target: Optional[str] = None, steps: int = DEFAULT_STEPS, precision: str = "fp32",
                  progress: bool = False) -> list[Explanation]:
    """One Explanation per text (and pair), for the named target label or each text's prediction."""
    from tqdm.auto import tqdm

    from ..base import logs

    check_explainable(im, precision, steps)
    index = target_index(im, target)
    predictions = im.decide(im.predict(texts, pairs=pairs)) if texts else []
    out = []
    for i in tqdm(range(len(texts)), desc="explain", unit="text", disable=not logs.show_progress(progress)):
        out.append(explain_one(im, texts[i], None if pairs is None else pairs[i], index, steps, predictions[i]))
    return out
