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

from . import augment, logs, runs
from . import data as data_mod
from . import model as model_mod
from .config import Config
from .data import Splits
from .errors import DataError, LoraclfError
from .evaluate import compute_metrics
from .predict import predict_texts
from .training import default_run_name, train

logger = logs.get(__name__)


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


def read_unlabeled(path: str | Path, cfg: Config, log=None) -> list[str]:
    """The non-empty texts of an unlabeled file; a file with no usable text is an error."""
    say = logs.sink(log, logger)
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
        say(f"{where}: dropped {len(df) - len(texts)} empty texts")
    return texts


def read_target_eval(path: str | Path, cfg: Config, id2label: dict[int, str], log=None) -> tuple[list[str], np.ndarray]:
    """Texts and label ids of the labelled target file (used for reporting only)."""
    dcfg = _target_data_cfg(cfg)
    df = _read(path, dcfg, "data.target_eval")
    where = f"data.target_eval {path}"
    clean = data_mod.clean_frame(df, dcfg, where, True, log)
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
        augment.Augmenter(cfg.augment)  # fails now, not after the teacher, on all-zero rates or a missing WordNet


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
        p_texts, rows = augment.augment_dataset(p_texts, rows, cfg.augment, seed)
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


def _write_pseudo_labels(path: Path, texts, probs, kept, id2label) -> None:
    import pandas as pd

    pred = probs.argmax(-1)
    mask = np.zeros(len(texts), dtype=bool)
    mask[kept] = True
    df = pd.DataFrame({"index": np.arange(len(texts)), "text": texts,
                       "pseudo_label": [id2label[int(i)] for i in pred], "label_id": pred,
                       "confidence": probs.max(-1).round(6), "kept": mask})
    for i in range(len(id2label)):
        df[f"prob_{id2label[i]}"] = probs[:, i]
    runs.atomic_write_text(path, df.to_csv(index=False))


def _publish_final(round_dir: Path, run: Path) -> None:
    """Copy the last student's run folder (without its checkpoints) to the top of RUN."""
    for p in round_dir.iterdir():
        if p.name in (runs.CHECKPOINTS, runs.PSEUDO_LABELS) or p.name.startswith("."):
            continue
        if p.is_dir():
            shutil.copytree(p, run / p.name)
        else:
            shutil.copy2(p, run / p.name)


@dataclass
class _Inputs:
    """Everything self-training reads, checked before anything is written."""

    run: Path
    splits: Splits
    unlabeled: list[str]
    target: Optional[tuple[list[str], np.ndarray]]  # data.target_eval: texts and label ids


@dataclass
class _Round:
    """What one round leaves: its pseudo-labels (for the next student) and its metrics (for the last round's)."""

    probs: np.ndarray
    kept: np.ndarray
    metrics: dict  # the round's metrics.json, plus "target"


def _setup(cfg: Config) -> _Inputs:
    _check(cfg)
    run = runs.new_run_dir(cfg.output.dir, cfg.output.run_name or default_run_name(cfg), cfg.output.overwrite)
    splits = data_mod.load_splits(cfg.data)
    unlabeled = read_unlabeled(cfg.data.unlabeled, cfg)
    target = read_target_eval(cfg.data.target_eval, cfg, splits.id2label) if cfg.data.target_eval else None
    logger.info(f"self-training: {len(splits.train):,} labelled + {len(unlabeled):,} unlabeled texts, "
                f"{cfg.adapt.rounds} round(s)")
    return _Inputs(run, splits, unlabeled, target)


def _summary(cfg: Config, inputs: _Inputs) -> dict:
    """adapt.json, without its rounds yet."""
    target = inputs.target
    return {"settings": dataclasses.asdict(cfg.adapt),
            "unlabeled": {"file": str(cfg.data.unlabeled), "rows": len(inputs.unlabeled)},
            "target_eval": ({"file": str(cfg.data.target_eval), "rows": len(target[0])} if target else None),
            "selection": "best checkpoint of each round by labelled val "
                         f"{cfg.eval.metric_for_best_model}; final model = last round's student",
            "final_round": cfg.adapt.rounds, "rounds": []}


def _label_texts(cfg: Config, round_dir: Path, inputs: _Inputs) -> tuple[np.ndarray, Optional[dict]]:
    """The round's model over the unlabeled texts: their probabilities, and the target metrics if any."""
    model, tokenizer, _, _ = model_mod.load_run_model(round_dir)

    def predict(texts: list[str]) -> np.ndarray:
        return predict_texts(model, tokenizer, texts, cfg.eval.per_device_eval_batch_size, cfg.data.max_length,
                             cfg.train.mixed_precision)

    probs = predict(inputs.unlabeled)
    if inputs.target is None:
        return probs, None
    texts, labels = inputs.target
    same = texts == inputs.unlabeled  # e.g. the unlabeled texts with their held-back labels
    return probs, compute_metrics(labels, probs if same else predict(texts), inputs.splits.id2label)


def _pseudo_label_stats(cfg: Config, r: int, probs, kept, prev: Optional[_Round], id2label) -> dict:
    pred = probs.argmax(-1)
    return {
        "predicted_per_class": _per_class(pred, id2label),
        "kept": int(len(kept)),
        "kept_per_class": _per_class(pred[kept], id2label),
        "mean_confidence_kept": float(probs.max(-1)[kept].mean()) if len(kept) else None,
        "used_by_next_round": r < cfg.adapt.rounds,
        "agreement_with_previous": agreement(prev.probs, prev.kept, probs, kept) if prev else None,
    }


def _round_record(cfg: Config, r: int, result, rows: dict, stats: dict, target_metrics: Optional[dict]) -> dict:
    """One round's entry in adapt.json."""
    return {
        "round": r, "role": "teacher" if r == 0 else "student", "run": f"{runs.ROUNDS}/round-{r}",
        "train_rows": rows,
        "best_step": result.metrics["best_step"],
        "val": _metrics_brief(result.metrics["val"]),
        "target": _metrics_brief(target_metrics),
        "test": _metrics_brief(result.metrics.get("test")),
        "pseudo_labels": stats,
        "train_runtime_s": result.metrics.get("train_runtime_s"),
    }


def _one_round(cfg: Config, r: int, inputs: _Inputs, train_set, rows: dict, prev: Optional[_Round],
               tmp: Path, quiet: bool) -> tuple[_Round, dict]:
    """Train round r on train_set, pseudo-label the unlabeled texts with it; returns the round and its record."""
    logger.info(f"round {r} ({'teacher' if r == 0 else 'student'}): training on {len(train_set):,} rows")
    round_cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, overwrite=False))
    round_dir = tmp / runs.ROUNDS / f"round-{r}"
    result = train(round_cfg, quiet=quiet, splits=dataclasses.replace(inputs.splits, train=train_set),
                   run_dir=round_dir)
    probs, target_metrics = _label_texts(cfg, round_dir, inputs)
    kept = select_pseudo_labels(probs, cfg.adapt.threshold, cfg.adapt.top_fraction_per_class)
    _write_pseudo_labels(round_dir / runs.PSEUDO_LABELS, inputs.unlabeled, probs, kept, inputs.splits.id2label)
    stats = _pseudo_label_stats(cfg, r, probs, kept, prev, inputs.splits.id2label)
    rec = _round_record(cfg, r, result, rows, stats, target_metrics)
    tgt = f", target accuracy {target_metrics['accuracy']:.4f}" if target_metrics else ""
    logger.info(f"round {r}: val accuracy {rec['val']['accuracy']:.4f}{tgt}; kept {len(kept):,}/"
                f"{len(inputs.unlabeled):,} pseudo-labels {stats['kept_per_class']}")
    if len(kept) == 0 and r < cfg.adapt.rounds:
        logger.info("no pseudo-label passed the selection; the next student trains on the labelled data alone "
                    "(lower adapt.threshold to keep some)")
    metrics = dict(result.metrics)
    if target_metrics is not None:
        metrics["target"] = target_metrics
    return _Round(probs, kept, metrics), rec


def _rounds(cfg: Config, inputs: _Inputs, summary: dict, tmp: Path, quiet: bool) -> dict:
    """Teacher, then adapt.rounds students, each recorded in tmp/adapt.json; returns the last round's metrics."""
    labelled = inputs.splits.train
    train_set, prev = labelled, None
    rows = {"total": len(labelled), "labelled": len(labelled), "pseudo": 0, "augmented": 0}
    for r in range(cfg.adapt.rounds + 1):
        prev, rec = _one_round(cfg, r, inputs, train_set, rows, prev, tmp, quiet)
        summary["rounds"].append(rec)
        runs.write_json(tmp / runs.ADAPT, summary)
        if r < cfg.adapt.rounds:
            train_set, n_aug = student_train_set(labelled, inputs.unlabeled, prev.probs, prev.kept, cfg,
                                                 cfg.train.seed + r)
            rows = {"total": len(train_set), "labelled": len(labelled), "pseudo": int(len(prev.kept)),
                    "augmented": n_aug}
    return prev.metrics


def self_train(cfg: Config, quiet: bool = False) -> AdaptResult:
    """Train a teacher, then adapt.rounds students on labelled + pseudo-labelled data; write one run folder."""
    started = time.time()
    with logs.quiet(quiet):
        inputs = _setup(cfg)  # every input is checked before anything is written
        summary = _summary(cfg, inputs)
        with runs.atomic_dir(inputs.run) as tmp:  # replaces an old RUN (output.overwrite) only once all succeeded
            metrics = _rounds(cfg, inputs, summary, tmp, quiet)
            _publish_final(tmp / runs.ROUNDS / f"round-{cfg.adapt.rounds}", tmp)
            metrics["adapt"] = {"rounds": cfg.adapt.rounds, "summary": runs.ADAPT,
                                "wall_time_s": round(time.time() - started, 2)}
            runs.write_json(tmp / runs.METRICS, metrics)
            summary["wall_time_s"] = round(time.time() - started, 2)
            runs.write_json(tmp / runs.ADAPT, summary)
        logger.info(f"self-training done: final student in {inputs.run}, per-round records in "
                    f"{inputs.run / runs.ADAPT}")
    return AdaptResult(inputs.run, metrics, summary["rounds"])
