"""bench/tasks.py's data sets, metrics and contenders: the classical anchor, the stock Trainer (its settings,
TRAINER below, are fixed here and never read from loraclf) and loraclf, each run by bench/tasks.py in a child process.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import common

DATA = common.DATA
MODEL = "packaged:minilm-l6"
DATASETS = ["vader", "ag_digest", "ag_pairs"]
CONTENDERS = ["anchor", "trainer", "loraclf"]
TOPICS = ["is_world", "is_sports", "is_business", "is_sci"]
TOPIC_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
PAIR_LABELS = ["match", "mismatch"]  # class index 0, 1 (sorted names, as loraclf sorts them)
PROBLEM = {"vader": "regression", "ag_digest": "multi_label_classification", "ag_pairs": "single_label_classification"}
MAIN = {"vader": "pearson", "ag_digest": "micro_f1", "ag_pairs": "accuracy"}
SECONDARY = {"vader": ["rmse", "mae", "spearman", "r2"],
             "ag_digest": ["macro_f1", "subset_accuracy", "hamming_loss", "mean_average_precision"],
             "ag_pairs": ["macro_f1"]}
LOWER_IS_BETTER = {"rmse", "mae", "hamming_loss"}
# loraclf's data keys per data set (paths are filled in per split)
LORACLF_DATA = {
    "vader": {"text_column": "text", "label_column": "sentiment"},
    "ag_digest": {"text_column": "text", "label_column": "labels", "label_delimiter": "|"},
    "ag_pairs": {"text_column": "title", "text_pair_column": "description", "label_column": "label"},
}
# targets: loraclf's main-metric median against the anchor's (margin in metric units) and against the Trainer's
TARGET_VS_ANCHOR = {"vader": 0.05, "ag_digest": 0.03, "ag_pairs": 0.05}

# The stock Trainer contender's settings: fixed here, never read from loraclf.
TRAINER = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query", "value"], modules_to_save=["classifier"],
               learning_rate=1e-3, warmup=0.06, scheduler="linear", epochs=3, batch=32, eval_batch=64,
               weight_decay=0.01, max_length=128)
ANCHOR_GRID = {"ridge_alpha": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0], "C": [0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0]}


# ------------------------------------------------------------------------------------------ metrics (all contenders)


def regression_metrics(y, pred) -> dict:
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    return {"pearson": float(pearsonr(y, pred)[0]), "spearman": float(spearmanr(y, pred)[0]),
            "rmse": float(np.sqrt(mean_squared_error(y, pred))), "mae": float(mean_absolute_error(y, pred)),
            "r2": float(r2_score(y, pred))}


def multilabel_metrics(y, scores, threshold: float = 0.5, pred=None) -> dict:
    """y: n x L 0/1; scores: n x L probabilities. Predicted set = scores >= threshold, unless pred (n x L 0/1) is given."""
    import numpy as np
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

    y, scores = np.asarray(y, dtype=int), np.asarray(scores, dtype=float)
    pred = (scores >= threshold).astype(int) if pred is None else np.asarray(pred, dtype=int)
    present = y.sum(0) > 0  # average precision is undefined for a label with no positive row
    return {"micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(y, pred)), "hamming_loss": float(hamming_loss(y, pred)),
            "mean_average_precision": float(np.mean([average_precision_score(y[:, j], scores[:, j])
                                                     for j in np.flatnonzero(present)]))}


def single_metrics(y, pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro"))}


# ------------------------------------------------------------------------------------------ data


def split_paths(dataset: str) -> dict:
    return {s: DATA / dataset / f"{s}.csv" for s in ("train", "val", "test")}


def load_split(dataset: str, split: str, limit: int | None):
    import pandas as pd

    df = pd.read_csv(split_paths(dataset)[split], keep_default_na=False)
    return df.head(limit).reset_index(drop=True) if limit else df


def targets(dataset: str, df):
    """The gold labels in this script's form: floats (vader), n x 4 0/1 (ag_digest), class indices (ag_pairs)."""
    if dataset == "vader":
        return df["sentiment"].astype(float).to_numpy()
    if dataset == "ag_digest":
        return df[TOPICS].astype(int).to_numpy()
    return df["label"].map({n: i for i, n in enumerate(PAIR_LABELS)}).astype(int).to_numpy()


def score(dataset: str, df, outputs) -> dict:
    """outputs: predictions (vader), label probabilities (ag_digest) or predicted class indices (ag_pairs)."""
    y = targets(dataset, df)
    if dataset == "vader":
        return regression_metrics(y, outputs)
    if dataset == "ag_digest":
        return multilabel_metrics(y, outputs)
    return single_metrics(y, outputs)


# ------------------------------------------------------------------------------------------ contenders (child side)


def run_anchor(dataset: str, seed: int, limit: int | None) -> dict:
    import numpy as np
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import normalize

    tr, va, te = (load_split(dataset, s, limit) for s in ("train", "val", "test"))
    t0 = time.perf_counter()
    tfidf = dict(ngram_range=(1, 2), sublinear_tf=True)
    if dataset == "ag_pairs":
        vec = TfidfVectorizer(**tfidf).fit(list(tr["title"]) + list(tr["description"]))

        def feats(df):
            a, b = normalize(vec.transform(df["title"])), normalize(vec.transform(df["description"]))
            prod = a.multiply(b).tocsr()
            cos = sp.csr_matrix(np.asarray(prod.sum(1)))
            return sp.hstack([a, b, prod, cos]).tocsr()
    else:
        vec = TfidfVectorizer(**tfidf).fit(tr["text"])

        def feats(df):
            return vec.transform(df["text"])

    xtr, xva, xte = feats(tr), feats(va), feats(te)
    ytr = targets(dataset, tr)
    tried = []
    if dataset == "vader":
        grid = ANCHOR_GRID["ridge_alpha"]
        make = lambda h: Ridge(alpha=h)  # noqa: E731
        outputs = lambda m, x: m.predict(x)  # noqa: E731
        hp = "alpha"
    elif dataset == "ag_digest":
        grid = ANCHOR_GRID["C"]
        make = lambda h: OneVsRestClassifier(LogisticRegression(C=h, max_iter=2000))  # noqa: E731
        outputs = lambda m, x: m.predict_proba(x)  # noqa: E731
        hp = "C"
    else:
        grid = ANCHOR_GRID["C"]
        make = lambda h: LogisticRegression(C=h, max_iter=2000)  # noqa: E731
        outputs = lambda m, x: m.predict(x)  # noqa: E731
        hp = "C"
    best = None
    for h in grid:  # chosen on val's main metric only; test is scored once, for the chosen value
        m = make(h).fit(xtr, ytr)
        v = score(dataset, va, outputs(m, xva))
        tried.append({hp: h, MAIN[dataset]: v[MAIN[dataset]]})
        if best is None or v[MAIN[dataset]] > best[1][MAIN[dataset]]:
            best = (h, v, m)
    train_s = time.perf_counter() - t0
    h, val, model = best
    test = score(dataset, te, outputs(model, xte))
    est = model.estimators_ if dataset == "ag_digest" else [model]
    params = int(sum(np.size(e.coef_) + np.size(e.intercept_) for e in est))
    return {"val": val, "test": test, "train_s": train_s, "trainable": params, "steps": None, "precision": "fp64",
            "chosen": {hp: h}, "tried": tried, "features": int(xtr.shape[1])}


def run_trainer(dataset: str, seed: int, limit: int | None, work: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from loraclf.base.sources import resolve_model

    c = TRAINER
    path = resolve_model(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    tr, va, te = (load_split(dataset, s, limit) for s in ("train", "val", "test"))

    def encode(df):
        if dataset == "ag_pairs":
            enc = tok(list(df["title"]), list(df["description"]), truncation=True, max_length=c["max_length"])
        else:
            enc = tok(list(df["text"]), truncation=True, max_length=c["max_length"])
        y = targets(dataset, df)
        # float labels for MSE (regression) and BCE (multi-label: float multi-hot vectors); class indices otherwise
        labels = y.astype(np.float32).tolist() if dataset != "ag_pairs" else y.tolist()
        return Dataset.from_dict({**dict(enc), "labels": labels})

    dtr, dva, dte = encode(tr), encode(va), encode(te)
    if dataset == "vader":
        kw = dict(num_labels=1)
    elif dataset == "ag_digest":
        kw = dict(num_labels=4, id2label=dict(enumerate(TOPIC_NAMES)), label2id={n: i for i, n in enumerate(TOPIC_NAMES)})
    else:
        kw = dict(num_labels=2, id2label=dict(enumerate(PAIR_LABELS)), label2id={n: i for i, n in enumerate(PAIR_LABELS)})
    model = AutoModelForSequenceClassification.from_pretrained(path, problem_type=PROBLEM[dataset], **kw)
    assert model.config.problem_type == PROBLEM[dataset]
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=c["r"], lora_alpha=c["lora_alpha"],
                                             lora_dropout=c["lora_dropout"], target_modules=c["target_modules"],
                                             modules_to_save=c["modules_to_save"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    args = TrainingArguments(
        output_dir=str(work / f"trainer-{dataset}-{seed}"), learning_rate=c["learning_rate"],
        warmup_steps=c["warmup"], lr_scheduler_type=c["scheduler"], num_train_epochs=c["epochs"],
        per_device_train_batch_size=c["batch"], per_device_eval_batch_size=c["eval_batch"],
        weight_decay=c["weight_decay"], train_sampling_strategy="group_by_length", bf16=False, fp16=False,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), seed=seed)
    trainer = Trainer(model=model, args=args, train_dataset=dtr, data_collator=DataCollatorWithPadding(tok))
    out = trainer.train()
    # transformers 5.x's Trainer also evaluates and predicts through a LengthGroupedSampler when
    # train_sampling_strategy="group_by_length" (Trainer._get_eval_sampler), so predict() returns its rows in a
    # shuffled order. Training is done: a sequential order for prediction, checked against the labels below.
    trainer.args.train_sampling_strategy = "sequential"

    def outputs(ds):
        pred = trainer.predict(ds)
        if not np.allclose(np.asarray(pred.label_ids, dtype=np.float64), np.asarray(ds["labels"], dtype=np.float64)):
            raise RuntimeError("Trainer.predict returned its rows out of the dataset's order")
        logits = np.asarray(pred.predictions, dtype=np.float64)
        if dataset == "vader":
            return logits.reshape(-1)
        if dataset == "ag_digest":
            return 1 / (1 + np.exp(-logits))  # threshold 0.5 in multilabel_metrics (the Trainer tunes none)
        return logits.argmax(-1)

    test_out = outputs(dte)
    row = {"val": score(dataset, va, outputs(dva)), "test": score(dataset, te, test_out),
           "train_s": out.metrics["train_runtime"], "trainable": trainable, "steps": trainer.state.global_step,
           "precision": "fp32", "train_loss": float(out.training_loss)}
    if dataset == "vader":  # a diagnostic of what the regression learned: the spread of its predictions
        y = targets(dataset, te).astype(float)
        row["test_spread"] = {"pred_mean": float(test_out.mean()), "pred_std": float(test_out.std()),
                              "true_mean": float(y.mean()), "true_std": float(y.std())}
    return row


def _recompute_val(dataset: str, run_dir: Path, va) -> dict:
    """loraclf's val metrics recomputed by this script's functions from the run's val_predictions.csv."""
    import numpy as np
    import pandas as pd

    p = pd.read_csv(run_dir / "val_predictions.csv", keep_default_na=False)
    if len(p) != len(va):
        raise ValueError(f"val_predictions.csv has {len(p)} rows, val {len(va)}")
    cols = list(p.columns)
    if dataset == "vader":
        col = next(c for c in ("prediction", "pred", "predicted", "score") if c in cols)
        return score(dataset, va, p[col].astype(float).to_numpy())
    if dataset == "ag_digest":
        prob_cols = []
        for name, flag in zip(TOPIC_NAMES, TOPICS):
            cands = [c for c in cols if c in (f"prob_{name}", f"p_{name}", f"score_{name}", f"prob_{flag}", name)]
            if not cands:
                raise KeyError(f"no probability column for {name} among {cols}")
            prob_cols.append(cands[0])
        # loraclf's predicted sets (its per-label thresholds, decision.json) for the set metrics; probabilities for mAP
        sets = [set(str(v).split("|")) - {""} for v in p["predicted"]]
        pred = np.array([[int(n in s) for n in TOPIC_NAMES] for s in sets])
        return multilabel_metrics(targets(dataset, va), p[prob_cols].astype(float).to_numpy(), pred=pred)
    col = next(c for c in ("prediction", "pred", "predicted", "predicted_label") if c in cols)
    idx = {n: i for i, n in enumerate(PAIR_LABELS)}
    return score(dataset, va, np.array([idx[str(v)] for v in p[col]]))


def run_loraclf(dataset: str, seed: int, limit: int | None, work: Path) -> dict:
    import loraclf

    paths = split_paths(dataset)
    if limit:  # script check: the first rows of each split, written beside the work folder
        folder = Path(tempfile.mkdtemp(prefix=f"limit-{dataset}-", dir=work))
        for s in paths:
            load_split(dataset, s, limit).to_csv(folder / f"{s}.csv", index=False)
            paths[s] = folder / f"{s}.csv"
    data = {"train": str(paths["train"]), "validation": str(paths["val"]), "test": str(paths["test"]),
            **LORACLF_DATA[dataset]}
    out_dir = Path(tempfile.mkdtemp(prefix=f"loraclf-{dataset}-{seed}-", dir=work))
    r = loraclf.train({"model": {"problem_type": PROBLEM[dataset]}, "data": data, "train": {"seed": seed},
                       "output": {"dir": str(out_dir), "report": False}}, quiet=True)
    m = r.metrics
    row = {"val": {k: m["val"][k] for k in [MAIN[dataset], *SECONDARY[dataset]] if k in m["val"]},
           "test": {k: m["test"][k] for k in [MAIN[dataset], *SECONDARY[dataset]] if k in m["test"]},
           "train_s": m["train_runtime_s"], "trainable": m["trainable_params"], "steps": m.get("global_step"),
           "precision": m.get("precision"), "run_dir": str(r.run_dir)}
    missing = [k for k in [MAIN[dataset], *SECONDARY[dataset]] if k not in m["test"]]
    if missing:
        row["missing_metrics"] = missing
    try:
        row["val_recomputed"] = _recompute_val(dataset, Path(r.run_dir), load_split(dataset, "val", limit))
    except Exception as e:  # a check only: the row stands on metrics.json
        row["recompute_error"] = f"{type(e).__name__}: {e}"[:300]
    return row
