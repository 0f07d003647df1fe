"""Benchmark (issue 17): the three non-single-text tasks, loraclf against a classical anchor and the stock Trainer.

Data sets (fixed splits under ../shared/data, never re-split; see its README):
  vader      regression, `sentiment` (mean human rating, -4..4) of tweets and movie snippets
             main metric Pearson r; also RMSE, MAE, Spearman rho, R^2
  ag_digest  multi-label, CONSTRUCTED from AG News (1-3 articles joined, their topics as `|`-joined labels)
             main metric micro-F1; also macro-F1, subset accuracy, Hamming loss, mAP (mean average precision per label)
  ag_pairs   sentence pairs, binary, CONSTRUCTED from AG News (a title with its own or another row's description)
             main metric accuracy; also macro-F1

Contenders, each run in its own child process (clean peak RSS) at ONE torch/BLAS thread, one after the other:
  anchor     scikit-learn on the same split: TF-IDF (word 1-2 grams, sublinear tf) + Ridge (vader, alpha chosen on
             val Pearson); one-vs-rest LogisticRegression, threshold 0.5 (ag_digest, C chosen on val micro-F1);
             TF-IDF of title and of description (one vocabulary fitted on both) + their elementwise product + cosine,
             into LogisticRegression (ag_pairs, C chosen on val accuracy). Deterministic: run once (seed 0).
  trainer    transformers.Trainer + peft.get_peft_model with problem_type in the model config. Every setting is a
             constant of this script (TRAINER below), none is read from loraclf.
  loraclf    `loraclf.train` with its defaults plus only the data keys, model.problem_type and train.seed.

Metrics are computed by this script's own functions (sklearn/scipy) for the anchor and the Trainer; loraclf's are
its run's metrics.json (its val metrics are also recomputed here from val_predictions.csv where that file can be read,
as a check that both metric codes agree). Raw rows are appended to the .jsonl beside --out; a later invocation skips
the (dataset, contender, seed) rows already there (failed rows are retried) and re-renders the table from all rows.

Run (from the repository root; about 1.5 hours at one thread):
    python bench/tasks.py                                   # writes bench/results/tasks.md (+ tasks.jsonl)
    python bench/tasks.py --contenders loraclf              # add missing loraclf rows later
    python bench/tasks.py --limit 200 --seeds 0 --out /tmp/tasks.md   # check the script (first 200 rows of each split)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
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

    from loraclf.sources import resolve_model

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


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    work = Path(args.work)
    if args.child == "anchor":
        out = run_anchor(args.dataset, args.seed, args.limit)
    elif args.child == "trainer":
        out = run_trainer(args.dataset, args.seed, args.limit, work)
    else:
        out = run_loraclf(args.dataset, args.seed, args.limit, work)
    out.update(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, threads=torch.get_num_threads())
    Path(args.result).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------ driver


def _busy_cpu_s() -> float:
    """CPU seconds all processes have used on this machine since boot (/proc/stat: all but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src/loraclf"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return head + (" + uncommitted src/loraclf changes" if dirty else "")
    except OSError:
        return "?"


def run_child(args, dataset: str, contender: str, seed: int) -> dict:
    result = args.work / f"{dataset}-{contender}-{seed}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", contender, "--dataset", dataset, "--seed", str(seed),
           "--result", str(result), "--work", str(args.work)] + (["--limit", str(args.limit)] if args.limit else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    row = {"dataset": dataset, "contender": contender, "seed": seed, "limit": args.limit, "argv": shlex.join(args.argv),
           "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "code": _git_head()}
    busy0, own0, t0 = _busy_cpu_s(), _children_cpu_s(), time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    own = _children_cpu_s() - own0
    row.update(process_s=round(wall, 1), own_cpu_s=round(own, 1),
               other_cpu_s=round(max(_busy_cpu_s() - busy0 - own, 0.0), 1))
    if proc.returncode != 0 or not result.exists():
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        row["error"] = (lines[-1] if lines else f"exit {proc.returncode}")[:500]
        row["stderr_tail"] = "\n".join(lines[-15:])[-3000:]
    else:
        row.update(json.loads(result.read_text()))
    return row


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _metric_cell(vals: list, pct: bool) -> str:
    s = (lambda v: f"{100 * v:.2f}") if pct else (lambda v: f"{v:.4f}")
    if not vals:
        return "-"
    if len(vals) == 1:
        return s(vals[0])
    return f"{s(statistics.median(vals))} ({s(min(vals))}–{s(max(vals))})"


PRECISION_NAME = {"no": "fp32 (auto: no bf16 on this CPU)", "fp64": "fp64 (sklearn)"}
PCT = {"micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "mean_average_precision", "accuracy"}
LABEL = {"anchor": "classical anchor (TF-IDF + linear, sklearn)", "trainer": "stock Trainer + PEFT",
         "loraclf": "loraclf defaults + data keys"}
METRIC_NAME = {"pearson": "Pearson r", "spearman": "Spearman ρ", "rmse": "RMSE", "mae": "MAE", "r2": "R²",
               "micro_f1": "micro-F1 %", "macro_f1": "macro-F1 %", "subset_accuracy": "subset acc. %",
               "hamming_loss": "Hamming loss %", "mean_average_precision": "mAP %", "accuracy": "accuracy %"}
DESCRIBE = {
    "vader": "**vader** — regression (VADER ground truth: tweets + movie snippets, mean human rating -4..4); "
             "10,365 train / 1,479 val / 2,961 test rows.",
    "ag_digest": "**ag_digest** — multi-label, **constructed from AG News** (1–3 articles joined; their topics as the "
                 "labels, 4 topics); 5,000 train / 600 val / 2,000 test rows. The anchor and the Trainer predict a topic "
                 "at probability >= 0.5 (no threshold tuned); loraclf uses its own per-label thresholds chosen on val.",
    "ag_pairs": "**ag_pairs** — sentence pairs, binary, **constructed from AG News** (a title with its own "
                "description = match, or another row's = mismatch; half the mismatches share the topic); "
                "5,000 train / 600 val / 2,000 test rows.",
}


def render(args, rows: list) -> None:
    import sklearn
    import torch
    import transformers
    import peft

    from loraclf.device import cpu_name
    from loraclf.runs import atomic_write_text

    ok = [r for r in rows if "error" not in r]
    got = {(r["dataset"], r["contender"]) for r in ok}
    limits = sorted({r["limit"] for r in ok if r.get("limit")})
    when = sorted(r["started"] for r in rows) or ["-"]
    other = [r["other_cpu_s"] for r in ok]
    other_frac = [r["other_cpu_s"] / r["process_s"] for r in ok if r["process_s"]]
    threads = sorted({r["threads"] for r in ok if "threads" in r})
    invocations = []
    for r in rows:  # the command lines that produced the rows, in order
        a = r.get("argv", shlex.join(args.argv))
        if a not in invocations:
            invocations.append(a)
    lines = [
        "# Task coverage: regression, multi-label and sentence pairs (issue 17)",
        "",
        "Generated by " + ", then ".join(f"`python bench/tasks.py{' ' + a if a else ''}`" for a in invocations)
        + f" (rows accumulate in `{args.out.with_suffix('.jsonl').name}`; jobs started from {when[0]} to {when[-1]}; "
        f"rendered {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}).",
        "",
    ]
    if limits:
        lines += [f"**SCRIPT CHECK ONLY: rows trained on the first {', '.join(map(str, limits))} rows of each split; "
                  "these numbers mean nothing.**", ""]
    lines += [
        f"- Machine: {cpu_name()}, {os.cpu_count()} CPU cores, no GPU; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}, scikit-learn {sklearn.__version__}, Python "
        f"{platform.python_version()}.",
        f"- **Every job at {', '.join(map(str, threads)) or '1'} torch thread (OMP_NUM_THREADS=1), one job at a time per invocation, "
        "machine shared** with other work (another benchmark's job or a test run, each at 1 thread, on the 2 cores): "
        "times are at 1 thread on a shared machine. CPU used by other "
        "processes while a job ran (/proc/stat busy time less the job's own): "
        + (f"median {med(other):,.0f} CPU s per job, at most {max(other):,.0f} CPU s; as a share of the job's wall "
           f"time, median {med(other_frac):.2f} and at most {max(other_frac):.2f} cores (of {os.cpu_count()})."
           if other else "-"),
        f"- Model: `{MODEL}` (all-MiniLM-L6-v2, BERT, 6 layers, hidden 384, 22.7M parameters) for the Trainer and "
        "loraclf. Each contender runs in its own process (peak RSS is that process's). Seeds 0, 1, 2 planned for the "
        "Trainer and loraclf (median over the seeds that finished, min–max in brackets; the runs column names them); "
        "the anchor is deterministic and ran once.",
        f"- Stock Trainer + PEFT, settings fixed in the script: LoRA r={TRAINER['r']}, alpha {TRAINER['lora_alpha']}, "
        f"dropout {TRAINER['lora_dropout']}, query+value, classifier trained in full (modules_to_save=[classifier]), "
        f"lr {TRAINER['learning_rate']:g}, {TRAINER['warmup']:.0%} warm-up then linear decay, {TRAINER['epochs']} epochs, "
        f"batch {TRAINER['batch']}, weight decay {TRAINER['weight_decay']}, max_length {TRAINER['max_length']}, dynamic "
        "padding with group_by_length, fp32, no evaluation during training; `problem_type` set in the model config "
        "(regression: 1 output, MSE; multi-label: 4 outputs, BCE on float multi-hot labels); pairs encoded as "
        "`tokenizer(title, description, truncation=True, max_length=128)`.",
        "- loraclf: `loraclf.train({model: {problem_type}, data: {train, validation, test, text/label columns, "
        "text_pair_column or label_delimiter}, train: {seed}, output: {dir, report: false}})`, everything else its "
        "defaults (its head trains pooler + classifier, hence more trainable parameters than the Trainer's; its "
        "precision is its default `auto`, shown per row; on ag_digest it picks a threshold per label on val "
        "(the run's decision.json) and applies it to test, where the Trainer and the anchor use 0.5; by default it "
        "evaluates on val once per epoch and keeps the best epoch's weights by its main metric (RMSE for "
        "regression), where the Trainer keeps the last step's). Its metrics are its run's metrics.json.",
        f"- Anchor: TF-IDF word 1–2 grams, sublinear tf, fitted on train; vader: Ridge, alpha from "
        f"{ANCHOR_GRID['ridge_alpha']} by val Pearson; ag_digest: one-vs-rest LogisticRegression, C from "
        f"{ANCHOR_GRID['C']} by val micro-F1, threshold 0.5; ag_pairs: title and description TF-IDF (one vocabulary), "
        "their elementwise product and cosine, into LogisticRegression, C from the same grid by val accuracy. "
        "Test is scored once, for the chosen value. Its \"train s\" is the whole fit including the grid; its "
        "\"trainable\" is the number of linear coefficients.",
        "- Metrics are on test. The anchor's and the Trainer's are computed by the script's own sklearn/scipy "
        "functions (mAP = mean over labels of average precision of the probabilities; Hamming loss and the F1s at "
        "threshold 0.5). Percentages for the classification metrics. Train s: the training loop only "
        "(Trainer's train_runtime, loraclf's train_runtime_s), evaluation excluded.",
        "",
    ]
    for ds in args.all_datasets:
        mets = [MAIN[ds], *SECONDARY[ds]]
        lines += [f"## {ds}", "", DESCRIBE[ds], "",
                  "| contender | runs | " + " | ".join(("**" + METRIC_NAME[m] + "** (main)") if m == MAIN[ds]
                                                     else METRIC_NAME[m] for m in mets)
                  + f" | val {METRIC_NAME[MAIN[ds]]} | train s | steps | trainable params | peak RSS MB | precision |",
                  "| --- | --- | " + " | ".join("---" for _ in mets) + " | --- | --- | --- | --- | --- | --- |"]
        for c in CONTENDERS:
            rs = sorted((r for r in ok if r["dataset"] == ds and r["contender"] == c), key=lambda r: r["seed"])
            if not rs:
                errs = [r for r in rows if r["dataset"] == ds and r["contender"] == c]
                lines.append(f"| {LABEL[c]} | 0 | " + " | ".join("missing" for _ in mets)
                             + f" | missing | | | | | {'failed, see below' if errs else 'not run'} |")
                continue
            cells = []
            for m in mets:
                vals = [r["test"][m] for r in rs if m in r["test"]]
                cells.append(_metric_cell(vals, m in PCT) if vals else "not reported")
            val_main = [r["val"][MAIN[ds]] for r in rs if MAIN[ds] in r["val"]]
            steps = sorted({r["steps"] for r in rs if r.get("steps") is not None})
            lines.append(
                f"| {LABEL[c]} | {len(rs)} (seeds {','.join(str(r['seed']) for r in rs)}) | " + " | ".join(cells)
                + f" | {_metric_cell(val_main, MAIN[ds] in PCT)} | {med([r['train_s'] for r in rs]):,.1f} | "
                f"{', '.join(map(str, steps)) or '-'} | {', '.join(f'{t:,}' for t in sorted({r['trainable'] for r in rs}))} | "
                f"{med([r['peak_rss_mb'] for r in rs]):,.0f} | "
                f"{', '.join(sorted({PRECISION_NAME.get(str(r.get('precision')), str(r.get('precision'))) for r in rs}))} |")
        anchors = [r for r in ok if r["dataset"] == ds and r["contender"] == "anchor"]
        if anchors and "chosen" in anchors[0]:
            a = anchors[0]
            lines += ["", f"Anchor: chose {', '.join(f'{k}={v:g}' for k, v in a['chosen'].items())} on val "
                          f"({a['features']:,} features); val {METRIC_NAME[MAIN[ds]]} per value: "
                      + ", ".join(f"{list(t.keys())[0]}={list(t.values())[0]:g}: "
                                  f"{(100 * list(t.values())[1]) if MAIN[ds] in PCT else list(t.values())[1]:.{2 if MAIN[ds] in PCT else 4}f}"
                                  for t in a["tried"]) + "."]
        lo = [r for r in ok if r["dataset"] == ds and r["contender"] == "loraclf"]
        checks = []
        for r in lo:
            if "val_recomputed" in r:
                diff = max(abs(r["val_recomputed"][k] - r["val"][k]) for k in r["val"] if k in r["val_recomputed"])
                checks.append(f"seed {r['seed']}: largest difference {diff:.2g}")
            elif "recompute_error" in r:
                checks.append(f"seed {r['seed']}: not recomputed ({r['recompute_error']})")
        if checks:
            lines += ["", "loraclf's val metrics recomputed by this script from its val_predictions.csv: "
                      + "; ".join(checks) + "."]
        lines.append("")

    # targets: computed from the medians above
    lines += ["## Targets", "",
              "Computed from the test medians above (PASS/MISS is the script's, from the numbers).", "",
              "| data set | target | loraclf | reference | difference | result |", "| --- | --- | --- | --- | --- | --- |"]
    for ds in args.all_datasets:
        m = MAIN[ds]
        pct = m in PCT
        fmtv = (lambda v: f"{100 * v:.2f}") if pct else (lambda v: f"{v:.4f}")
        fmtd = (lambda v: f"{100 * v:+.2f} points") if pct else (lambda v: f"{v:+.4f}")
        lo = med([r["test"].get(m) for r in ok if r["dataset"] == ds and r["contender"] == "loraclf"])
        for ref, want in (("anchor", TARGET_VS_ANCHOR[ds]), ("trainer", 0.0)):
            rv = med([r["test"].get(m) for r in ok if r["dataset"] == ds and r["contender"] == ref])
            name = (f"{METRIC_NAME[m]} ≥ anchor {fmtd(want)}" if ref == "anchor"
                    else f"{METRIC_NAME[m]} ≥ stock Trainer (level, same steps)")
            if lo is None or rv is None:
                lines.append(f"| {ds} | {name} | {fmtv(lo) if lo is not None else 'missing'} | "
                             f"{fmtv(rv) if rv is not None else 'missing'} | - | not measured |")
                continue
            diff = lo - rv
            verdict = "PASS" if diff >= want - 1e-12 else f"MISS (short by {fmtd(want - diff).lstrip('+')})"
            note = ""
            if ref == "trainer":
                s_lo = {r.get("steps") for r in ok if r["dataset"] == ds and r["contender"] == "loraclf"}
                s_tr = {r.get("steps") for r in ok if r["dataset"] == ds and r["contender"] == "trainer"}
                note = "" if s_lo == s_tr else f" (steps differ: loraclf {sorted(map(str, s_lo))}, Trainer {sorted(map(str, s_tr))})"
            lines.append(f"| {ds} | {name} | {fmtv(lo)} | {fmtv(rv)} | {fmtd(diff)} | {verdict}{note} |")
    missing = [(ds, c) for ds in args.all_datasets for c in CONTENDERS if (ds, c) not in got]
    errs = [r for r in rows if "error" in r and (r["dataset"], r["contender"]) not in got]
    if missing:
        slow = max((r["process_s"] for r in ok if r["contender"] != "anchor"), default=None)
        lines += ["", "Missing: " + "; ".join(f"{ds} {c}" for ds, c in missing) + " (not run in the time available"
                  + (f"; the slowest model job that finished took {slow / 60:.0f} min wall at 1 thread on the shared "
                     "machine" if slow else "") + "; add them with `python bench/tasks.py`, which skips the rows "
                  "already in the .jsonl)."]
    for ds in args.all_datasets:
        if ds != "vader":
            continue
        for c in ("trainer", "loraclf"):
            bad = [r for r in ok if r["dataset"] == ds and r["contender"] == c and r["test"].get("r2", 1) < 0]
            if bad:
                lines += ["", f"Note: {LABEL[c]} on {ds}, seed(s) {', '.join(str(r['seed']) for r in bad)}: test R² "
                          + ", ".join(f"{r['test']['r2']:.3f}" for r in bad) + " (below 0: worse than predicting the "
                          "mean) and Pearson " + ", ".join(f"{r['test']['pearson']:.4f}" for r in bad)
                          + ": that run learned no usable regression."
                          + "".join(f" Seed {r['seed']}: its test predictions have mean {sp['pred_mean']:.3f} and std "
                                    f"{sp['pred_std']:.3f}, the targets mean {sp['true_mean']:.3f} and std "
                                    f"{sp['true_std']:.3f}; final training loss {r['train_loss']:.3f}."
                                    for r in bad if (sp := r.get("test_spread")) and "train_loss" in r)]
    if errs:
        lines += ["", "Failed or invalid runs (the last error line of the child process, or why the row does not count):", ""]
        seen = set()
        for r in reversed(errs):
            key = (r["dataset"], r["contender"], r["error"])
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"- {r['dataset']} {r['contender']} seed {r['seed']}{' (32-row probe)' if r.get('probe') else ''} "
                         f"({r['started']}, code {r['code']}): "
                         f"`{r['error']}`")
    lines += ["", "Per run (test main metric / train s / other processes' CPU s during the job):", ""]
    for ds in args.all_datasets:
        for c in CONTENDERS:
            rs = sorted((r for r in ok if r["dataset"] == ds and r["contender"] == c), key=lambda r: r["seed"])
            if rs:
                lines.append(f"- {ds} {c}: " + "; ".join(
                    f"seed {r['seed']}: {r['test'][MAIN[ds]]:.4f} / {r['train_s']:,.1f} / {r['other_cpu_s']:,.0f}"
                    for r in rs) + f" (code {rs[-1]['code']})")
    lines += ["", f"Raw rows: `{args.out.with_suffix('.jsonl').name}`.", ""]
    atomic_write_text(args.out, "\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--limit", type=int, default=None, help="first N rows of each split (script check only)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tasks.md")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-tasks"))
    p.add_argument("--until", default=None, help="UTC HH:MM after which no new job is started")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="skip loraclf's 32-row probe run before its first full run per data set")
    p.add_argument("--render-only", action="store_true", help="rewrite the table from the .jsonl, run nothing")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.argv = sys.argv[1:]
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args)
        return 0
    datasets = [d for d in args.datasets.split(",") if d]
    contenders = [c for c in args.contenders.split(",") if c]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    bad = [d for d in datasets if d not in DATASETS] + [c for c in contenders if c not in CONTENDERS]
    if bad:
        p.error(f"unknown data set or contender: {', '.join(bad)}")
    for d in datasets:
        if not (DATA / d).is_dir():
            sys.exit(f"{DATA / d} not found (../shared beside the checkout)")
    raw = args.out.with_suffix(".jsonl")
    rows = [json.loads(x) for x in raw.read_text().splitlines() if x.strip()] if raw.exists() else []
    args.all_datasets = [d for d in DATASETS if d in datasets or any(r["dataset"] == d for r in rows)]
    done = {(r["dataset"], r["contender"], r["seed"]) for r in rows if "error" not in r}
    # data-set-major, anchors first, then seed by seed: an interrupted run has every contender at the first seeds
    plan = [(d, "anchor", 0) for d in datasets if "anchor" in contenders]
    for s in seeds:  # seed-major: an interrupted run has every data set and contender at the first seeds
        plan += [(d, c, s) for d in datasets for c in contenders if c != "anchor"]
    stop_at = None
    if args.until:
        hh, mm = map(int, args.until.split(":"))
        stop_at = datetime.now(timezone.utc).replace(hour=hh, minute=mm, second=0, microsecond=0)
    probed = {}
    for d, c, s in plan:
        if args.render_only or (d, c, s) in done:
            continue
        if stop_at is not None and datetime.now(timezone.utc) >= stop_at:
            print(f"--until {args.until} UTC reached: no new job started", flush=True)
            break
        if c == "loraclf" and args.probe and not args.limit and d not in probed:
            # a few rows first, so that an unsupported key fails in seconds, not after a full training run
            probe = argparse.Namespace(**{**vars(args), "limit": 32, "work": args.work / "probe"})
            probe.work.mkdir(parents=True, exist_ok=True)
            pr = run_child(probe, d, c, s)
            probed[d] = "error" not in pr
            if not probed[d]:
                pr["probe"] = True
                rows.append(pr)
                with open(raw, "a", encoding="utf-8") as f:
                    f.write(json.dumps(pr) + "\n")
                print(json.dumps({k: pr.get(k) for k in ("dataset", "contender", "seed", "probe", "error")}), flush=True)
                render(args, rows)
        if c == "loraclf" and probed.get(d) is False:
            continue
        row = run_child(args, d, c, s)
        rows.append(row)
        with open(raw, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: row.get(k) for k in ("dataset", "contender", "seed", "train_s", "process_s", "other_cpu_s",
                                                   "error")} | {"test": row.get("test")}), flush=True)
        render(args, rows)
    render(args, rows)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
