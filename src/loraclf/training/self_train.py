"""Self-training on an unlabeled target domain: teacher -> pseudo-labels -> student, for adapt.rounds rounds.

Round 0 trains a teacher on the labelled data as usual. Each later round pseudo-labels data.unlabeled with the
previous round's model, keeps the confident ones (adapt.threshold and/or the class-balanced quota
adapt.top_fraction_per_class), and trains a student from the base model again on labelled + pseudo-labelled rows.
Every student has the teacher's shape, so the parameter budget is checked exactly as for a plain run.

pseudo_labels.py says what a pseudo-label and its confidence are for each problem type, which ones are kept, and
what a student trains on; this module runs the rounds and writes their records.

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

from ..data import augment
from ..base import logs
from .. import task as problem, runs
from .. import data as data_mod
from .. import model as model_mod
from ..config import Config
from ..data import Splits
from ..data.targets import encode as encode_targets
from ..base.errors import DataError, LoraclfError
from ..infer.forward import predict_texts
from ..infer.metrics import compute_metrics
from . import default_run_name, train
from .pseudo_labels import (Pseudo, agreement, label_counts, pseudo_labels, same_labels, second_view, select,
                            student_train_set)

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
    """Texts and encoded labels (class ids, multi-hot rows or values) of the labelled target file (reporting only)."""
    dcfg = _target_data_cfg(cfg)
    pt = cfg.model.problem_type
    df = _read(path, dcfg, "data.target_eval")
    where = f"data.target_eval {path}"
    clean = data_mod.clean_frame(df, dcfg, where, True, log, problem_type=pt)
    return clean["text"].tolist(), np.asarray(encode_targets(pt, clean["label"], id2label, dcfg, where))


def _check(cfg: Config) -> None:
    if cfg.data.unlabeled is None:
        raise LoraclfError("self-training needs data.unlabeled: a file of target-domain texts")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LoraclfError("self-training runs in one process; drop --nproc")
    if cfg.adapt.threshold is None and cfg.adapt.top_fraction_per_class is None:
        raise LoraclfError("adapt.threshold and adapt.top_fraction_per_class are both null, which would keep every "
                           "pseudo-label; set one (e.g. adapt.threshold=0.9)")
    if cfg.data.text_pair_column is not None:
        raise LoraclfError("self-training (data.unlabeled) reads single texts; drop data.text_pair_column or train "
                           "without data.unlabeled")
    if cfg.model.problem_type == problem.REGRESSION and cfg.adapt.weighting == "soft":
        raise LoraclfError("adapt.weighting=soft needs class probabilities, which regression has none of; use "
                           "adapt.weighting=none or confidence")
    if cfg.adapt.consistency:
        augment.Augmenter(cfg.augment)  # fails now, not after the teacher, on all-zero rates or a missing WordNet


# ------------------------------------------------------------------------------------------ the rounds


def _metrics_brief(m: Optional[dict], problem_type: str) -> Optional[dict]:
    if m is None:
        return None
    return {k: m[k] for k in (*problem.SCALARS[problem_type], "n") if k in m}


def _write_pseudo_labels(path: Path, texts, pseudo: Pseudo, kept, id2label, problem_type: str) -> None:
    """pseudo_labels.csv: every unlabeled text, its pseudo-label, confidence and outputs, and whether it was kept."""
    import pandas as pd

    mask = np.zeros(len(texts), dtype=bool)
    mask[kept] = True
    df = pd.DataFrame({"index": np.arange(len(texts)), "text": texts})
    if problem_type == problem.REGRESSION:
        df["pseudo_label"] = pseudo.labels.round(6)
        df["second_view"] = pseudo.second.round(6)
    elif problem_type == problem.MULTI:
        df["pseudo_label"] = ["|".join(id2label[j] for j in np.flatnonzero(row > 0)) for row in pseudo.labels]
    else:
        df["pseudo_label"] = [id2label[int(i)] for i in pseudo.labels]
        df["label_id"] = pseudo.labels
    df["confidence"] = pseudo.confidence.round(6)
    df["kept"] = mask
    if problem_type != problem.REGRESSION:
        for i in range(len(id2label)):
            df[f"prob_{id2label[i]}"] = pseudo.out[:, i]
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
    target: Optional[tuple[list[str], np.ndarray]]  # data.target_eval: texts and encoded labels
    second_view: Optional[list[str]] = None  # regression: the unlabeled texts with words deleted
    scale: float = 1.0  # regression: the std of the labelled targets (agreement is measured in it)

    @property
    def problem_type(self) -> str:
        return self.splits.problem_type


@dataclass
class _Round:
    """What one round leaves: its pseudo-labels (for the next student) and its metrics (for the last round's)."""

    pseudo: Pseudo
    kept: np.ndarray
    metrics: dict  # the round's metrics.json, plus "target"


def _setup(cfg: Config) -> _Inputs:
    _check(cfg)
    run = runs.new_run_dir(cfg.output.dir, cfg.output.run_name or default_run_name(cfg), cfg.output.overwrite)
    splits = data_mod.load_splits(cfg.data, problem_type=cfg.model.problem_type)
    unlabeled = read_unlabeled(cfg.data.unlabeled, cfg)
    target = read_target_eval(cfg.data.target_eval, cfg, splits.id2label) if cfg.data.target_eval else None
    logger.info(f"self-training: {len(splits.train):,} labelled + {len(unlabeled):,} unlabeled texts, "
                f"{cfg.adapt.rounds} round(s)")
    inputs = _Inputs(run, splits, unlabeled, target)
    if splits.problem_type == problem.REGRESSION:
        inputs.second_view = second_view(unlabeled, cfg.train.seed)
        inputs.scale = float(np.std(data_mod.train_labels(splits))) or 1.0
    return inputs


def _summary(cfg: Config, inputs: _Inputs) -> dict:
    """adapt.json, without its rounds yet."""
    target = inputs.target
    metric = problem.best_metric(inputs.problem_type, cfg.eval.metric_for_best_model)
    return {"settings": dataclasses.asdict(cfg.adapt), "problem_type": inputs.problem_type,
            "unlabeled": {"file": str(cfg.data.unlabeled), "rows": len(inputs.unlabeled)},
            "target_eval": ({"file": str(cfg.data.target_eval), "rows": len(target[0])} if target else None),
            "selection": f"best checkpoint of each round by labelled val {metric}; final model = last round's student",
            "final_round": cfg.adapt.rounds, "rounds": []}


def _label_texts(cfg: Config, round_dir: Path, inputs: _Inputs) -> tuple[Pseudo, Optional[dict]]:
    """The round's model over the unlabeled texts (under the round's decision.json): their pseudo-labels, and the
    target metrics if any."""
    run = runs.Run.open(round_dir)
    model, tokenizer = model_mod.load_trained(run)
    decision = run.decision

    def predict(texts: list[str]) -> np.ndarray:
        return predict_texts(model, tokenizer, texts, cfg.eval.per_device_eval_batch_size, cfg.data.max_length,
                             cfg.train.mixed_precision, data=cfg.data, decision=decision)

    out = predict(inputs.unlabeled)
    second = predict(inputs.second_view) if inputs.second_view is not None else None
    pseudo = pseudo_labels(out, decision, second, inputs.scale)
    if inputs.target is None:
        return pseudo, None
    texts, labels = inputs.target
    same = texts == inputs.unlabeled  # e.g. the unlabeled texts with their held-back labels
    return pseudo, compute_metrics(labels, out if same else predict(texts), inputs.splits.id2label, decision=decision)


def _pseudo_label_stats(cfg: Config, r: int, pseudo: Pseudo, kept, prev: Optional[_Round], inputs: _Inputs) -> dict:
    pt, id2label = inputs.problem_type, inputs.splits.id2label
    same = same_labels(prev.pseudo, pseudo, pt, inputs.scale) if prev else None
    return {
        "predicted_per_class": label_counts(pseudo, np.arange(len(pseudo.labels)), pt, id2label),
        "kept": int(len(kept)),
        "kept_per_class": label_counts(pseudo, kept, pt, id2label),
        "mean_confidence_kept": float(pseudo.confidence[kept].mean()) if len(kept) else None,
        "used_by_next_round": r < cfg.adapt.rounds,
        "agreement_with_previous": agreement(prev.pseudo.out, prev.kept, pseudo.out, kept, same) if prev else None,
    }


def _round_record(pt: str, r: int, result, rows: dict, stats: dict, target_metrics: Optional[dict]) -> dict:
    """One round's entry in adapt.json."""
    return {
        "round": r, "role": "teacher" if r == 0 else "student", "run": f"{runs.ROUNDS}/round-{r}",
        "train_rows": rows,
        "best_step": result.metrics["best_step"],
        "val": _metrics_brief(result.metrics["val"], pt),
        "target": _metrics_brief(target_metrics, pt),
        "test": _metrics_brief(result.metrics.get("test"), pt),
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
    pt, main = inputs.problem_type, problem.main_metric(inputs.problem_type)
    pseudo, target_metrics = _label_texts(cfg, round_dir, inputs)
    kept = select(pseudo, pt, cfg)
    _write_pseudo_labels(round_dir / runs.PSEUDO_LABELS, inputs.unlabeled, pseudo, kept, inputs.splits.id2label, pt)
    stats = _pseudo_label_stats(cfg, r, pseudo, kept, prev, inputs)
    rec = _round_record(pt, r, result, rows, stats, target_metrics)
    tgt = f", target {main} {target_metrics[main]:.4f}" if target_metrics else ""
    logger.info(f"round {r}: val {main} {rec['val'][main]:.4f}{tgt}; kept {len(kept):,}/"
                f"{len(inputs.unlabeled):,} pseudo-labels {stats['kept_per_class']}")
    if len(kept) == 0 and r < cfg.adapt.rounds:
        logger.info("no pseudo-label passed the selection; the next student trains on the labelled data alone "
                    "(lower adapt.threshold to keep some)")
    metrics = dict(result.metrics)
    if target_metrics is not None:
        metrics["target"] = target_metrics
    return _Round(pseudo, kept, metrics), rec


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
            train_set, n_aug = student_train_set(labelled, inputs.unlabeled, prev.pseudo.out, prev.kept, cfg,
                                                 cfg.train.seed + r, prev.pseudo)
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
