"""Rows made in the tests for every problem type (single-label, multi-label, regression, sentence pairs) and the
overrides that select each type: shared by the problem-type, bad-input and inference tests."""

from __future__ import annotations

import random

import pandas as pd

from loraclf import task

TOPICS = {"world": "minister election troops border treaty", "sports": "coach league striker goal season",
          "business": "shares profit investors merger earnings", "science": "software chip research network orbit"}
NAMES = list(TOPICS)
SINGLE, MULTI, REGRESSION = task.SINGLE, task.MULTI, task.REGRESSION
PAIRS = "sentence_pairs"  # single-label classification of (text, text_pair)
TYPES = (SINGLE, MULTI, REGRESSION, PAIRS)
METHODS = ("lora", "dora", "rslora", "pissa", "vera", "ia3", "adalora", "loha", "lokr")
HEADS = ("full", "linear", "lora")
STEPS = 3
# AdaLoRA re-allocates ranks after step 1 and fixes them for the last one
METHOD_EXTRA = {"adalora": ["adapter.r=2", "adapter.init_r=4", "adapter.adalora_tinit=1", "adapter.adalora_tfinal=1",
                            "adapter.adalora_deltaT=1"], "vera": ["adapter.r=16"]}


def words(rng: random.Random, topic: str, n: int) -> str:
    return " ".join(rng.choice(TOPICS[topic].split()) for _ in range(n))


def problem_rows(n: int, seed: int) -> pd.DataFrame:
    """n rows holding every type's columns: label (a topic), labels ('a|b', one or two topics), score (a number
    that grows with the share of sports words), and title/description with match (same topic) or mismatch."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        first, second = NAMES[i % 4], NAMES[(i + 1 + i // 4) % 4]
        both = i % 3 != 0
        k = rng.randint(0, 6)
        text = words(rng, first, 6) + (" " + words(rng, second, 4) if both else "")
        match = i % 2 == 0
        out.append({"text": text, "label": first, "labels": "|".join(sorted({first, second} if both else {first})),
                    "score": round(k / 6 + rng.random() * 0.05, 4),
                    "rated": words(rng, "sports", k) + " " + words(rng, "business", 6 - k),
                    "title": words(rng, first, 3), "description": words(rng, first if match else second, 6),
                    "match": "match" if match else "mismatch"})
    return pd.DataFrame(out)


def type_overrides(kind: str) -> list[str]:
    if kind == MULTI:
        return [f"model.problem_type={MULTI}", "data.label_column=labels", "data.label_delimiter='|'"]
    if kind == REGRESSION:
        return [f"model.problem_type={REGRESSION}", "data.text_column=rated", "data.label_column=score"]
    if kind == PAIRS:
        return ["data.text_column=title", "data.text_pair_column=description", "data.label_column=match"]
    return []
