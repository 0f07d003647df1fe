"""Self-training on an unlabeled target domain: teacher -> pseudo-labels -> student, for adapt.rounds rounds.

Round 0 trains a teacher on the labelled data as usual. Each later round pseudo-labels data.unlabeled with the
previous round's model, keeps the confident ones (adapt.threshold and/or the class-balanced quota
adapt.top_fraction_per_class), and trains a student from the base model again on labelled + pseudo-labelled rows.
Every student has the teacher's shape, so the parameter budget is checked exactly as for a plain run.

Model selection never sees the unlabeled texts nor data.target_eval: inside each round the best checkpoint is the
one with the best labelled validation metric (train.py does this), and the final model is always the last round's
student. Layout of the run folder:

    RUN/                 a normal run folder for the final student (predict, evaluate and export use it)
      adapt.json         per round: rows trained on, pseudo-labels kept (per class), agreement with the previous
                         round, val / target / test metrics
      rounds/round-K/    the run folder of round K (0 = teacher), plus pseudo_labels.csv: that model's label,
                         confidence and class probabilities for every unlabeled text, and whether each was kept
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import data as data_mod
from . import runs
from .config import Config
from .errors import DataError, LoraclfError

ADAPT = "adapt.json"
PSEUDO_LABELS = "pseudo_labels.csv"


@dataclass
class AdaptResult:
    run_dir: Path
    metrics: dict  # the final student's metrics.json (plus "target" when data.target_eval is set)
    rounds: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------ inputs


def _target_data_cfg(cfg: Config):
    column = cfg.adapt.target_text_column
    return dataclasses.replace(cfg.data, text_column=column) if column is not None else cfg.data


def _read(path, dcfg, key: str):
    try:
        return data_mod.read_table(path, dcfg.allow_pickle, dcfg.max_file_mb)
    except DataError as e:
        raise DataError(f"{key}: {e}") from None


def read_unlabeled(path: str | Path, cfg: Config, log=print) -> list[str]:
    """The non-empty texts of an unlabeled file; a file with no usable text is an error."""
    dcfg = _target_data_cfg(cfg)
    df = _read(path, dcfg, "data.unlabeled")
    if len(df) == 0:
        raise DataError(f"data.unlabeled {path} has no rows; give a file of target-domain texts")
    if isinstance(dcfg.text_column, str) and dcfg.text_column not in df.columns and len(df.columns) == 1:
        df = df.rename(columns={df.columns[0]: dcfg.text_column})  # a one-column file is the texts
    where = f"data.unlabeled {path}"
    try:
        text = data_mod.select_text(df, dcfg, where)
    except DataError as e:
        raise DataError(str(e).replace("(set data.text_column)", "(set adapt.target_text_column)")) from None
    texts = [t[: dcfg.max_text_chars] for t in text if t is not None]
    if not texts:
        raise DataError(f"{where} has no usable texts (all {len(df)} are empty)")
    if len(texts) < len(df):
        log(f"{where}: dropped {len(df) - len(texts)} empty texts")
    return texts


def read_target_eval(path: str | Path, cfg: Config, id2label: dict[int, str], log=print) -> tuple[list[str], np.ndarray]:
    """Texts and label ids of the labelled target file (used for reporting only)."""
    dcfg = _target_data_cfg(cfg)
    df = _read(path, dcfg, "data.target_eval")
    where = f"data.target_eval {path}"
    clean = data_mod._clean(df, dcfg, where, True, log)
    return clean["text"].tolist(), data_mod.encode_labels(clean["label"], id2label, where)


def _check(cfg: Config) -> None:
    if cfg.data.unlabeled is None:
        raise LoraclfError("self-training needs data.unlabeled: a file of target-domain texts")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LoraclfError("self-training runs in one process; drop --nproc")
    if cfg.adapt.threshold is None and cfg.adapt.top_fraction_per_class is None:
        raise LoraclfError("adapt.threshold and adapt.top_fraction_per_class are both null, which would keep every "
                           "pseudo-label; set one (e.g. adapt.threshold=0.9)")
    if cfg.adapt.consistency:
        from .augment import Augmenter

        Augmenter(cfg.augment)  # fails now, not after the teacher, on all-zero rates or a missing WordNet


# ------------------------------------------------------------------------------------------ pseudo-labels


def select_pseudo_labels(probs: np.ndarray, threshold: Optional[float] = None,
                         top_fraction_per_class: Optional[float] = None) -> np.ndarray:
    """Indices (ascending) of the pseudo-labels to keep.

    threshold: keep those whose top probability is at least this. top_fraction_per_class: then keep, per predicted
    class, at most ceil(fraction * N / K) of them, most confident first, so that no class floods the student.
    """
    probs = np.asarray(probs)
    n, k = probs.shape
    conf = probs.max(-1)
    pred = probs.argmax(-1)
    keep = np.ones(n, dtype=bool) if threshold is None else conf >= threshold
    if top_fraction_per_class is not None:
        quota = int(np.ceil(top_fraction_per_class * n / k))
        capped = np.zeros(n, dtype=bool)
        for c in range(k):
            idx = np.flatnonzero(keep & (pred == c))
            best = idx[np.argsort(-conf[idx], kind="stable")[:quota]]
            capped[best] = True
        keep = capped
    return np.flatnonzero(keep)


def _per_class(labels: np.ndarray, id2label: dict[int, str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(id2label))
    return {id2label[i]: int(counts[i]) for i in range(len(id2label))}


def agreement(prev_probs: np.ndarray, prev_kept: np.ndarray, probs: np.ndarray, kept: np.ndarray) -> dict:
    """How this round's pseudo-labels compare with the previous round's."""
    prev_pred, pred = prev_probs.argmax(-1), probs.argmax(-1)
    both = np.intersect1d(prev_kept, kept)
    return {
        "all": float((prev_pred == pred).mean()),  # argmax labels of every unlabeled text
        "kept_in_both": int(len(both)),
        "kept": float((prev_pred[both] == pred[both]).mean()) if len(both) else None,
        "kept_jaccard": float(len(both) / max(len(np.union1d(prev_kept, kept)), 1)),
    }


def student_train_set(labelled, texts: list[str], probs: np.ndarray, kept: np.ndarray, cfg: Config, seed: int):
    """Labelled rows + kept pseudo-labelled rows (+ their augmented views when adapt.consistency), as a Dataset.

    weighting=confidence adds a `weight` column (1 for labelled rows); weighting=soft adds `soft_labels`
    (one-hot for labelled rows, the teacher's probabilities for pseudo-labelled ones).
    """
    import datasets

    k = probs.shape[1]
    p_texts = [texts[i] for i in kept]
    p_probs = probs[kept]
    rows = list(range(len(kept)))
    n_aug = 0
    if cfg.adapt.consistency and len(kept):
        from .augment import augment_dataset

        p_texts, rows = augment_dataset(p_texts, rows, cfg.augment, seed)
        n_aug = len(p_texts) - len(kept)
    lab_labels = [int(x) for x in labelled["label"]]
    out = {"text": list(labelled["text"]) + p_texts,
           "label": lab_labels + [int(p_probs[r].argmax()) for r in rows]}
    if cfg.adapt.weighting == "confidence":
        out["weight"] = [1.0] * len(lab_labels) + [float(p_probs[r].max()) for r in rows]
    elif cfg.adapt.weighting == "soft":
        eye = np.eye(k, dtype=np.float32)
        out["soft_labels"] = [eye[y].tolist() for y in lab_labels] + [p_probs[r].astype(np.float32).tolist() for r in rows]
    return datasets.Dataset.from_dict(out), n_aug


# ------------------------------------------------------------------------------------------ the rounds


def _metrics_brief(m: Optional[dict]) -> Optional[dict]:
    if m is None:
        return None
    return {k: m[k] for k in ("accuracy", "macro_f1", "loss", "n") if k in m}


def _write_pseudo_labels(path: Path, texts, probs, kept_mask, id2label) -> None:
    import pandas as pd

    pred = probs.argmax(-1)
    df = pd.DataFrame({"index": np.arange(len(texts)), "text": texts,
                       "pseudo_label": [id2label[int(i)] for i in pred], "label_id": pred,
                       "confidence": probs.max(-1).round(6), "kept": kept_mask})
    for i in range(len(id2label)):
        df[f"prob_{id2label[i]}"] = probs[:, i]
    runs.atomic_write_text(path, df.to_csv(index=False))


def _publish_final(round_dir: Path, run: Path) -> None:
    """Copy the last student's run folder (without its checkpoints) to the top of RUN."""
    for p in round_dir.iterdir():
        if p.name in (runs.CHECKPOINTS, PSEUDO_LABELS) or p.name.startswith("."):
            continue
        if p.is_dir():
            shutil.copytree(p, run / p.name)
        else:
            shutil.copy2(p, run / p.name)


def self_train(cfg: Config, quiet: bool = False) -> AdaptResult:
    """Train a teacher, then adapt.rounds students on labelled + pseudo-labelled data; write one run folder."""
    from .evaluate import compute_metrics
    from .model import load_run_model
    from .predict import predict_texts
    from .train import default_run_name, log_line, train

    say = lambda m: log_line(m, quiet)  # noqa: E731
    started = time.time()
    # ------------------------------------------------ setup: every input is checked before anything is written
    _check(cfg)
    run = runs.new_run_dir(cfg.output.dir, cfg.output.run_name or default_run_name(cfg), cfg.output.overwrite)
    splits = data_mod.load_splits(cfg.data, log=say)
    unlabeled = read_unlabeled(cfg.data.unlabeled, cfg, log=say)
    target = read_target_eval(cfg.data.target_eval, cfg, splits.id2label, log=say) if cfg.data.target_eval else None
    id2label = splits.id2label
    say(f"self-training: {len(splits.train):,} labelled + {len(unlabeled):,} unlabeled texts, {cfg.adapt.rounds} round(s)")

    # ------------------------------------------------ rounds, built in a temp folder published at the end
    records: list[dict] = []
    summary = {"settings": dataclasses.asdict(cfg.adapt), "unlabeled": {"file": str(cfg.data.unlabeled), "rows": len(unlabeled)},
               "target_eval": ({"file": str(cfg.data.target_eval), "rows": len(target[0])} if target else None),
               "selection": "best checkpoint of each round by labelled val "
                            f"{cfg.eval.metric_for_best_model}; final model = last round's student",
               "final_round": cfg.adapt.rounds, "rounds": records}
    with runs.atomic_dir(run) as tmp:  # replaces an old RUN (output.overwrite) only once everything succeeded
        prev_probs = prev_kept = None
        train_set = splits.train
        final_metrics = None
        for r in range(cfg.adapt.rounds + 1):
            role = "teacher" if r == 0 else "student"
            say(f"round {r} ({role}): training on {len(train_set):,} rows")
            round_cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, overwrite=False))
            round_splits = dataclasses.replace(splits, train=train_set)
            round_dir = tmp / runs.ROUNDS / f"round-{r}"
            result = train(round_cfg, quiet=quiet, splits=round_splits, run_dir=round_dir)

            model, tokenizer, _, _ = load_run_model(round_dir)
            predict = lambda texts: predict_texts(model, tokenizer, texts, cfg.eval.per_device_eval_batch_size,  # noqa: E731
                                                  cfg.data.max_length, cfg.train.mixed_precision)
            probs = predict(unlabeled)
            if target is not None:
                same = target[0] == unlabeled  # e.g. the unlabeled texts with their held-back labels
                target_metrics = compute_metrics(target[1], probs if same else predict(target[0]), id2label)
            else:
                target_metrics = None
            del model
            kept = select_pseudo_labels(probs, cfg.adapt.threshold, cfg.adapt.top_fraction_per_class)
            mask = np.zeros(len(unlabeled), dtype=bool)
            mask[kept] = True
            _write_pseudo_labels(round_dir / PSEUDO_LABELS, unlabeled, probs, mask, id2label)

            rec = {
                "round": r, "role": role, "run": f"{runs.ROUNDS}/round-{r}",
                "train_rows": {"total": len(train_set), "labelled": len(splits.train),
                               "pseudo": records[-1]["pseudo_labels"]["kept"] if r else 0,
                               "augmented": n_aug if r else 0},
                "best_step": result.metrics["best_step"],
                "val": _metrics_brief(result.metrics["val"]),
                "target": _metrics_brief(target_metrics),
                "test": _metrics_brief(result.metrics.get("test")),
                "pseudo_labels": {
                    "predicted_per_class": _per_class(probs.argmax(-1), id2label),
                    "kept": int(len(kept)),
                    "kept_per_class": _per_class(probs.argmax(-1)[kept], id2label),
                    "mean_confidence_kept": float(probs.max(-1)[kept].mean()) if len(kept) else None,
                    "used_by_next_round": r < cfg.adapt.rounds,
                    "agreement_with_previous": agreement(prev_probs, prev_kept, probs, kept) if r else None,
                },
                "train_runtime_s": result.metrics.get("train_runtime_s"),
            }
            records.append(rec)
            runs.write_json(tmp / ADAPT, summary)
            tgt = f", target accuracy {target_metrics['accuracy']:.4f}" if target_metrics else ""
            say(f"round {r}: val accuracy {rec['val']['accuracy']:.4f}{tgt}; kept {len(kept):,}/{len(unlabeled):,} "
                f"pseudo-labels {rec['pseudo_labels']['kept_per_class']}")
            if len(kept) == 0 and r < cfg.adapt.rounds:
                say("no pseudo-label passed the selection; the next student trains on the labelled data alone "
                    "(lower adapt.threshold to keep some)")

            prev_probs, prev_kept = probs, kept
            final_metrics = dict(result.metrics)
            if target_metrics is not None:
                final_metrics["target"] = target_metrics
            if r < cfg.adapt.rounds:
                train_set, n_aug = student_train_set(splits.train, unlabeled, probs, kept, cfg, cfg.train.seed + r)

        _publish_final(tmp / runs.ROUNDS / f"round-{cfg.adapt.rounds}", tmp)
        final_metrics["adapt"] = {"rounds": cfg.adapt.rounds, "summary": ADAPT,
                                  "wall_time_s": round(time.time() - started, 2)}
        runs.write_json(tmp / runs.METRICS, final_metrics)
        summary["wall_time_s"] = round(time.time() - started, 2)
        runs.write_json(tmp / ADAPT, summary)
    say(f"self-training done: final student in {run}, per-round records in {run / ADAPT}")
    return AdaptResult(run, final_metrics, records)
