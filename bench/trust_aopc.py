"""bench/trust.py's explanation part (issue 41): faithfulness by deletion, and seconds per text.

For each AG News test text, the predicted class's probability p0 (loraclf's own predict) and, for each ranking of the
text's whitespace words, the probability after deleting its top k words (k = 1, 3, 5); the drop p0 - p_k averaged
over the texts is the AOPC at k. Rankings:
  ig          loraclf's Integrated Gradients (Classifier.explain's code) at the default steps, highest score first
  random      k words drawn at random (3 draws per text, averaged)
  occlusion   leave-one-out: the drop when that word alone is deleted (one forward pass per word)
  attention   the last layer's attention from [CLS] to each token, mean over heads, summed over a word's pieces
Texts whose words were not all seen by the model (longer than max_length) are left out and counted.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pandas as pd

import common
from trust_labels import AG

KS = (1, 3, 5)


def _delete(words: list[str], drop) -> str:
    drop = set(int(i) for i in drop)
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def _attention_scores(im, text: str, n_words: int) -> np.ndarray:
    import re

    import torch

    enc = im.tokenizer(text, truncation=True, max_length=im.data.max_length, return_offsets_mapping=True,
                       return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        out = im.model(**{k: v.to(im.model.device) for k, v in enc.items()}, output_attentions=True)
    att = out.attentions[-1][0].float().mean(0)[0].cpu().numpy()  # heads averaged, from [CLS]
    starts = np.array([m.start() for m in re.finditer(r"\S+", text)])
    scores = np.zeros(n_words)
    for (a, b), s in zip(offsets, att):
        if b > a:
            scores[int(np.searchsorted(starts, a, side="right")) - 1] += s
    return scores


def _occlusion(im, words: list[str], c: int, p0: float) -> np.ndarray:
    probs = im.predict([_delete(words, [i]) for i in range(len(words))])
    return p0 - probs[:, c]


def _load(args):
    from loraclf.infer.engine import load_inference_model

    im = load_inference_model(args.run, device="cpu")
    try:
        im.model.set_attn_implementation("eager")  # sdpa returns no attention weights
    except Exception as e:  # noqa: BLE001 - an older transformers: the attention anchor will say so
        print(f"eager attention not set: {e}")
    df = pd.read_csv(AG / "test.csv").sample(n=args.texts, random_state=0)
    return im, [str(t) for t in df["text"]]


def aopc(args) -> list[dict]:
    from loraclf.infer import explain as ex

    im, texts = _load(args)
    p = im.predict(texts)
    classes = p.argmax(1)
    meter = common.LoadMeter()
    t0 = time.perf_counter()
    expl = ex.explain_texts(im, texts, steps=ex.DEFAULT_STEPS)
    ig_s = (time.perf_counter() - t0) / len(texts)
    drops = {m: {k: [] for k in KS} for m in ("ig", "random", "occlusion", "attention")}
    rng, skipped = random.Random(0), 0
    for text, e, c, p0 in zip(texts, expl, classes, p[np.arange(len(texts)), classes]):
        words = text.split()
        if len(e.words) != len(words) or len(words) < 6:
            skipped += 1
            continue
        ranks = {"ig": np.argsort(-np.array([s for _, s in e.words]), kind="stable"),
                 "occlusion": np.argsort(-_occlusion(im, words, c, p0), kind="stable"),
                 "attention": np.argsort(-_attention_scores(im, text, len(words)), kind="stable")}
        batch, where = [], []
        for m, r in ranks.items():
            for k in KS:
                batch.append(_delete(words, r[:k])), where.append((m, k))
        for k in KS:
            for _ in range(3):
                batch.append(_delete(words, rng.sample(range(len(words)), k))), where.append(("random", k))
        after = im.predict(batch)[:, c]
        per = {}
        for (m, k), q in zip(where, after):
            per.setdefault((m, k), []).append(p0 - q)
        for (m, k), v in per.items():
            drops[m][k].append(float(np.mean(v)))
    load = meter.read()
    rows = [{"method": m, **{f"k{k}": round(float(np.mean(v[k])), 4) for k in KS}, "texts": len(v[1])}
            for m, v in drops.items()]
    rows.append({"method": "meta", "texts_asked": len(texts), "skipped": skipped, "ig_s_per_text_1thread":
                 round(ig_s, 3), "steps": ex.DEFAULT_STEPS, "wall_s": round(load.wall_s, 1),
                 "other_cpu_s": round(load.other_cpu_s, 1), "mean_p0": round(float(p.max(1).mean()), 4)})
    print(rows, flush=True)
    return rows


def speed(args) -> list[dict]:
    """Seconds per text at the default steps, on texts of 55-65 tokens, after two warm-up texts."""
    from loraclf.infer import explain as ex

    im, _ = _load(args)
    df = pd.read_csv(AG / "test.csv")
    lengths = [len(im.tokenizer(str(t))["input_ids"]) for t in df["text"]]
    pick = [str(t) for t, n in zip(df["text"], lengths) if 55 <= n <= 65][:22]
    ex.explain_texts(im, pick[:2])
    meter = common.LoadMeter()
    t0 = time.perf_counter()
    ex.explain_texts(im, pick[2:])
    s = (time.perf_counter() - t0) / len(pick[2:])
    load = meter.read()
    import torch

    return [{"texts": len(pick[2:]), "tokens_mean": round(float(np.mean([n for n in lengths if 55 <= n <= 65])), 1),
             "steps": ex.DEFAULT_STEPS, "s_per_text": round(s, 3), "threads": torch.get_num_threads(),
             "other_cpu_s": round(load.other_cpu_s, 1), "wall_s": round(load.wall_s, 1)}]
