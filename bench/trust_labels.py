"""bench/trust.py's label-error part (issue 41): loraclf audit against a TF-IDF + cleanlab anchor on
../shared/data/ag_noisy (AG News 5k train, 250 labels flipped, flips.csv), then retraining on the cleaned files.

Every setting of the anchor is a constant here (never read from loraclf). loraclf's folds and retrainings use one
fixed recipe (LORACLF_RECIPE): loraclf's defaults with the packaged MiniLM, one epoch and seed 0, the same for every
training so that only the training file differs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import common

SHARED = common.ROOT.parent / "shared" / "data"
NOISY = SHARED / "ag_noisy"
AG = SHARED / "ag_news"
LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
FOLDS = 5
# the anchor, fixed: the issue's measurement (word 1-2-grams, min_df=2, C=1, 5 stratified folds)
ANCHOR = {"ngram_range": (1, 2), "min_df": 2, "C": 1.0, "folds": 5, "seed": 0, "max_iter": 2000}
LORACLF_RECIPE = {"model": {"name_or_path": "packaged:minilm-l6"},
                  "train": {"num_train_epochs": 1, "seed": 0, "num_threads": 1},
                  "eval": {"eval_steps": 10000}, "output": {"report": False}}


def flips() -> set[int]:
    return set(pd.read_csv(NOISY / "flips.csv")["row"].astype(int))


def scores(flagged: set[int], truth: set[int]) -> dict:
    tp = len(flagged & truth)
    p = tp / len(flagged) if flagged else 0.0
    r = tp / len(truth) if truth else 0.0
    return {"flagged": len(flagged), "true_positives": tp, "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def anchor() -> dict:
    """cleanlab's find_label_issues on out-of-fold probabilities of TF-IDF + logistic regression."""
    from cleanlab.filter import find_label_issues
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    df = pd.read_csv(NOISY / "train.csv")
    t0 = time.perf_counter()
    pipe = make_pipeline(TfidfVectorizer(ngram_range=ANCHOR["ngram_range"], min_df=ANCHOR["min_df"]),
                         LogisticRegression(C=ANCHOR["C"], max_iter=ANCHOR["max_iter"]))
    cv = StratifiedKFold(ANCHOR["folds"], shuffle=True, random_state=ANCHOR["seed"])
    probs = cross_val_predict(pipe, df["text"], df["label"], cv=cv, method="predict_proba")
    issues = find_label_issues(df["label"].to_numpy(), probs)
    return {"contender": "TF-IDF + LogisticRegression, cleanlab", **scores(set(np.flatnonzero(issues)), flips()),
            "seconds": round(time.perf_counter() - t0, 1)}


def write_config(work: Path, train: Path, seed: int = 0) -> Path:
    cfg = {**LORACLF_RECIPE, "data": {"train": str(train), "validation": str(AG / "val.csv"),
                                      "test": str(AG / "test.csv"), "label_names": LABEL_NAMES}}
    cfg["train"] = {**cfg["train"], "seed": seed}
    path = work / (f"cfg_{train.stem}.yaml" if seed == 0 else f"cfg_{train.stem}_s{seed}.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def loraclf_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "loraclf", *map(str, args)]


def audit(work: Path, first_pass_s: float | None = None) -> list[dict]:
    """`loraclf audit --write-clean` (flagged rows removed, and every duplicate the audit finds), then, on the same
    folds (reused, not trained again), loraclf.audit(..., relabel=True) with exact duplicates only: the CLI would
    embed all 7,600 texts again (~7 min at one thread) only to find the same near-duplicates (the embedding source
    of the label issues still embeds the 5,000 training texts). first_pass_s: the first pass's wall time where an
    earlier invocation ran it."""
    from loraclf.config import load_config
    from loraclf.trust import run_audit

    cfg, out = write_config(work, NOISY / "train.csv"), work / "audit"
    if not (out / "issues.csv").exists():
        child = common.run_child(loraclf_cmd("audit", cfg, "--output", out, "--folds", FOLDS, "--write-clean",
                                             work / "removed.csv", "--quiet"), stdout="inherit", stderr="inherit")
        if child.returncode != 0:
            raise SystemExit(f"loraclf audit failed ({child.returncode})")
        first_pass_s = child.wall_s
    if not (work / "relabelled.csv").exists():
        run_audit(load_config(str(cfg), []), out, folds=FOLDS, near_threshold=None,
                  write_clean=work / "relabelled.csv", relabel=True, quiet=True)
    issues = pd.read_csv(out / "issues.csv")
    li = json.loads((out / "summary.json").read_text())["label_issues"]
    sources = " + ".join(li["probabilities"]["sources"])
    return [{"contender": f"loraclf audit (packaged MiniLM, {FOLDS} folds of 1 epoch; defaults: {sources}, "
                          f"filter_by {li['filter_by']})",
             **scores(set(issues["row"].astype(int)), flips()), "seconds": round(first_pass_s or 0, 1),
             "sources": li["probabilities"]["sources"], "filter_by": li["filter_by"],
             "agreement_with_given_labels": li["probabilities"]["agreement_with_given_labels"]}]


def retrain(work: Path, seed: int = 0) -> list[dict]:
    """The same recipe (train.seed = seed) trained on each training file; test accuracy on the clean
    ag_news/test.csv. Runs already in work/runs are read, not trained again."""
    files = {"clean (original ag_news/train.csv)": AG / "train.csv", "noisy (ag_noisy/train.csv)": NOISY / "train.csv",
             "cleaned: flagged removed": work / "removed.csv", "cleaned: flagged relabelled": work / "relabelled.csv"}
    out = []
    for i, (name, path) in enumerate(files.items()):
        run_name = f"r{i}" if seed == 0 else f"r{i}-s{seed}"
        run_dir = work / "runs" / run_name
        if not (run_dir / "metrics.json").exists():
            child = common.run_child(loraclf_cmd("train", write_config(work, path, seed), f"output.dir={work / 'runs'}",
                                                 f"output.run_name={run_name}", "--quiet"), stdout="inherit",
                                     stderr="inherit")
            if child.returncode != 0:
                raise SystemExit(f"loraclf train failed on {path}")
        m = json.loads((run_dir / "metrics.json").read_text())
        test = m.get("test") or m["splits"]["test"]
        out.append({"training file": name, "rows": len(pd.read_csv(path)), "run": str(run_dir), "seed": seed,
                    "test_accuracy": round(test["accuracy"], 4)})
    return out


def non_flip_flags(work: Path, n: int = 30) -> list[dict]:
    """The n most confident flags that are not synthetic flips, for a person to judge."""
    issues = pd.read_csv(work / "audit" / "issues.csv")
    rest = issues[~issues["row"].astype(int).isin(flips())].head(n)
    return rest[["row", "given_label", "suggested_label", "text"]].to_dict("records")


SCREEN_FILTERS = ("prune_by_noise_rate", "both", "prune_by_class", "confident_learning")


def screen(work: Path, fold_dirs: dict[str, Path]) -> list[dict]:
    """The label-error screen behind the audit's defaults: cleanlab's F1 against the flips for each probability
    source and their means, under each filter_by. Sources: fine-tuned folds (heldout.npz of finished audit folds,
    one entry per fold_dirs name), and loraclf.trust.probs' logistic regressions on the MiniLM embeddings of the
    dups part (work/ag_emb.npy: its first 5,000 rows are ag_news/train.csv, the texts of ag_noisy/train.csv) and on
    TF-IDF, on the folds the audit uses (training.cv.assign, seed 0)."""
    from cleanlab.filter import find_label_issues
    from loraclf.training.cv import assign
    from loraclf.trust import probs

    df = pd.read_csv(NOISY / "train.csv")
    y, n, truth = df["label"].to_numpy(), len(df), flips()
    held = assign(y, "single_label_classification", FOLDS, LORACLF_RECIPE["train"]["seed"])
    src = {"embeddings": probs.embedding_oof(np.load(work / "ag_emb.npy")[:n], y, held, False, 4),
           "tfidf": probs.tfidf_oof([str(t) for t in df["text"]], y, held, False, 4)}
    for name, folder in fold_dirs.items():
        p = np.zeros((n, 4))
        for f in sorted(folder.glob("fold-*/heldout.npz")):
            z = np.load(f)
            p[z["rows"]] = z["probs"]
        src[name] = p
    folds = [k for k in fold_dirs]
    arms = {**{k: [k] for k in src}, "embeddings + tfidf": ["embeddings", "tfidf"]}
    for f in folds:
        arms[f"{f} + embeddings"] = [f, "embeddings"]
        arms[f"{f} + embeddings + tfidf"] = [f, "embeddings", "tfidf"]
    out = []
    for arm, names in arms.items():
        p = np.mean([src[k] for k in names], axis=0)
        row = {"arm": arm, "agreement_with_given": round(float((p.argmax(1) == y).mean()), 4)}
        for fb in SCREEN_FILTERS:
            row[fb] = scores(set(np.flatnonzero(find_label_issues(y, p, filter_by=fb))), truth)
        out.append(row)
        print(arm, {fb: row[fb]["f1"] for fb in SCREEN_FILTERS}, flush=True)
    return out
