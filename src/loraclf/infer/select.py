"""`loraclf select` and `Classifier.select`: which unlabelled rows of a pool to label next.

A trained run (or export) is loaded by the one loader (infer.engine) and the pool read by the input path of
`loraclf predict` (infer.inputs). Rows whose text (and second text) the run was already trained, validated or
tested on are excluded, as are empty texts and repeats within the pool (the first is kept); the strategy
(infer.strategies) then ranks the rest, and the k rows chosen are written in the pool's own format with all their
columns plus select_rank, select_score, select_strategy and (model strategies) select_prediction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from .. import data as data_mod
from .. import runs
from .. import task as problem
from ..base import logs
from ..base.errors import ConfigError, DataError, LoraclfError
from ..data import windows
from ..task import MULTI, REGRESSION
from . import strategies as strat
from .strategies import DEFAULT_STRATEGY, STRATEGIES  # noqa: F401  (the API and CLI name them from here)
from .engine import InferenceModel, load_inference_model
from .files import check_output, write_frame
from .forward import pad_rows, pool_windows, token_batches
from .inputs import frame_inputs, read_input_frame

logger = logs.get(__name__)

SELECT_BATCH = 64
COLUMNS = ("select_rank", "select_score", "select_strategy", "select_prediction")
# the pool's format -> the output's (a .txt pool has no columns to hold scores; a pickle is not written back)
OWN_FORMAT = {".csv": ".csv", ".tsv": ".tsv", ".json": ".jsonl", ".jsonl": ".jsonl", ".parquet": ".parquet",
              ".pq": ".parquet", ".txt": ".csv", ".pkl": ".parquet", ".pickle": ".parquet"}


@dataclass
class Selection:
    """The chosen rows (the pool's columns plus COLUMNS, best first) and what was left out before ranking."""

    rows: pd.DataFrame
    strategy: str
    pool_rows: int
    candidates: int
    excluded: dict = field(default_factory=dict)  # labelled, duplicate, empty -> rows

    def summary(self) -> dict:
        return {"selected": len(self.rows), "pool_rows": self.pool_rows, "candidates": self.candidates,
                "excluded": dict(self.excluded), "strategy": self.strategy}


# ------------------------------------------------------------------------------------------ checks


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError([f"--k must be a whole number of rows, 1 or more, got {k!r}"])
    return int(k)


def check_problem(im: InferenceModel, strategy: str) -> None:
    """Regression has no class probabilities to be unsure about: only random applies."""
    if im.problem_type == REGRESSION and strategy != "random":
        raise ConfigError([f"--strategy {strategy} ranks rows by how unsure the class probabilities are, but this "
                           f"run is a regression (model.problem_type=regression), which has none; use --strategy "
                           f"random"])


def output_path(pool: Path, output: str | Path) -> Path:
    """--output in the pool's own format (OWN_FORMAT), refused before any model is loaded otherwise."""
    out = Path(output)
    want = OWN_FORMAT.get(pool.suffix.lower())
    if want is not None and out.suffix.lower() != want:
        raise DataError(f"--output {out} must be a {want} file: select writes the rows of the {pool.suffix} pool "
                        f"{pool.name} in its own format, all its columns kept")
    return out


# ------------------------------------------------------------------------------------------ labelled rows


def _key(text: str, pair: Optional[str]) -> tuple:
    return (text.strip(), None if pair is None else pair.strip())


def labelled_keys(im: InferenceModel) -> set:
    """(text, second text) of every row of the run's data.train, data.validation and data.test files; empty for an
    export (which keeps no data paths) or a run trained from a hub dataset."""
    keys: set = set()
    folder = im.folder
    if not isinstance(folder, runs.Run):
        logger.info("select: loaded from an export folder, which names no training data: no rows excluded as "
                    "labelled")
        return keys
    data = folder.config.data
    for split in ("train", "validation", "test"):
        path = getattr(data, split)
        if not path:
            continue
        if not Path(path).is_file():
            logger.warning(f"select: the run's data.{split} file {path} is gone; its rows cannot be excluded")
            continue
        try:
            df = data_mod.read_table(path, data.allow_pickle, data.max_file_mb)
            texts, pairs = frame_inputs(df, data, str(path))  # the run's own columns, whatever --text-column says
        except LoraclfError as e:
            logger.warning(f"select: cannot read the run's data.{split} ({e}); its rows are not excluded")
            continue
        keys.update(_key(t, None if pairs is None else p) for t, p in zip(texts, pairs or texts))
    if data.name and not data.train:
        logger.warning(f"select: the run was trained on the hub dataset {data.name}; its rows are not excluded")
    return keys


def candidate_rows(texts: list[str], pairs: Optional[list[str]], labelled: set) -> tuple[np.ndarray, dict]:
    """Positions of the pool rows to rank: not empty, not labelled, the first of repeated texts."""
    seen: set = set()
    keep, excluded = [], {"labelled": 0, "duplicate": 0, "empty": 0}
    for i, text in enumerate(texts):
        key = _key(text, None if pairs is None else pairs[i])
        if not key[0]:
            excluded["empty"] += 1
        elif key in labelled:
            excluded["labelled"] += 1
        elif key in seen:
            excluded["duplicate"] += 1
        else:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64), excluded


# ------------------------------------------------------------------------------------------ the model pass


@torch.inference_mode()
def outputs_and_embeddings(im: InferenceModel, texts: list[str], pairs: Optional[list[str]],
                           batch_size: int = SELECT_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """One fp32 pass: the run's outputs (probabilities by its decision, windows pooled as predict pools them) and
    the mean-pooled last hidden states of the fine-tuned encoder, one row per text."""
    model = im.model.eval()
    enc = windows.encode(im.tokenizer, list(texts), None if pairs is None else list(pairs), im.data)
    doc = np.asarray(enc.pop("doc"), dtype=np.int64)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(doc))
    pad_id = im.tokenizer.pad_token_id if im.tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    idx_all, logit_all, emb_all = [], [], []
    for idx in token_batches(lengths, batch_size, batch_size * im.data.max_length):
        batch = {k: v.to(device) for k, v in pad_rows(enc, idx, keys, pad_id).items()}
        out = model(**batch, output_hidden_states=True)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        hidden = out.hidden_states[-1].float()
        emb_all.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
        logit_all.append(out.logits.float().cpu().numpy())
        idx_all.append(doc[idx])
    idx = np.concatenate(idx_all)
    order = np.argsort(idx, kind="stable")
    idx, logits, emb = idx[order], np.concatenate(logit_all)[order], np.concatenate(emb_all)[order]
    _, pooled, _ = pool_windows(idx, logits, None, im.data.chunk_pooling)
    _, emb, _ = pool_windows(idx, emb, None, "mean")
    return problem.outputs(pooled, im.decision), emb


# ------------------------------------------------------------------------------------------ ranking


def rank(im: InferenceModel, texts: list[str], pairs: Optional[list[str]], k: int, strategy: str,
         seed: int) -> tuple[np.ndarray, np.ndarray, Optional[list]]:
    """(positions into texts in the order picked, their scores, the model's predictions for them or None)."""
    if strategy == "random":
        order, scores = strat.pick_random(len(texts), k, seed)
        return order, scores, None
    probs, emb = outputs_and_embeddings(im, texts, pairs)
    pt = im.problem_type
    if strategy == "entropy":
        order, scores = strat.pick_entropy(probs, k, pt)
    elif strategy == "margin":
        order, scores = strat.pick_margin(probs, k, pt, im.decision.thresholds if pt == MULTI else None)
    else:
        order, scores = strat.pick_diverse(probs, emb, k, pt, seed)
    return order, scores, im.decide(probs[order])


def select_frame(im: InferenceModel, df: pd.DataFrame, texts: list[str], pairs: Optional[list[str]], k: int,
                 strategy: str = strat.DEFAULT_STRATEGY, seed: int = 0, exclude_labelled: bool = True,
                 where: str = "the pool") -> Selection:
    """The k rows of df (texts/pairs: its texts as the run reads them) to label next, best first."""
    strat.check_strategy(strategy)
    k = check_k(k)
    check_problem(im, strategy)
    if len(df) == 0:
        raise DataError(f"{where} has no rows; give a pool of unlabelled texts to choose from")
    keep, excluded = candidate_rows(texts, pairs, labelled_keys(im) if exclude_labelled else set())
    left_out = ", ".join(f"{n} {what}" for what, n in excluded.items() if n)
    if k > len(keep):
        fix = f"ask for at most {len(keep)}" if len(keep) else "give rows the run has not seen, or keep labelled rows"
        raise DataError(f"--k {k} is more than the {len(keep)} rows {where} has to choose from ({len(df)} rows, "
                        f"{left_out or 'none'} left out); {fix}")
    logger.info(f"select: {len(df)} pool rows, {len(keep)} to rank" + (f" ({left_out} left out)" if left_out else ""))
    order, scores, preds = rank(im, [texts[i] for i in keep], None if pairs is None else [pairs[i] for i in keep],
                                k, strategy, seed)
    rows = df.iloc[keep[order]].reset_index(drop=True).copy()
    rows["select_rank"] = np.arange(1, len(order) + 1)
    rows["select_score"] = np.asarray(scores, dtype=np.float64)
    rows["select_strategy"] = strategy
    if preds is not None:
        rows["select_prediction"] = [_cell(p, im) for p in preds]
    return Selection(rows, strategy, len(df), len(keep), excluded)


def _cell(pred, im: InferenceModel):
    """A prediction as one cell: a label set joined as predict joins it."""
    if isinstance(pred, list):
        return (im.data.label_delimiter or "|").join(pred)
    return pred


def write_selection(path: Path, rows: pd.DataFrame) -> None:
    if path.suffix.lower() == ".json":
        runs.atomic_write_text(path, rows.to_json(orient="records"))
    else:
        write_frame(path, rows)


def select_file(run: str | Path | runs.ModelFolder, pool: str | Path, output: str | Path, k: int,
                strategy: str = strat.DEFAULT_STRATEGY, seed: int = 0, allow_pickle: bool = False,
                text_column: Optional[str] = None, exclude_labelled: bool = True) -> dict:
    """`loraclf select`: every check that needs no model first, then the model, the pool, the ranking, the file."""
    strat.check_strategy(strategy)
    k = check_k(k)
    pool_path = Path(pool)
    if not pool_path.is_file():
        raise DataError(f"pool file not found: {pool_path}" + (" (it is a folder)" if pool_path.is_dir() else ""))
    out = output_path(pool_path, output)
    check_output(out, pool_path, "--pool")
    im = load_inference_model(run)
    check_problem(im, strategy)
    if text_column:  # the pool's column; the run's config (read for its labelled rows) keeps its own
        im.data = dataclasses.replace(im.data, text_column=text_column)
    texts, pairs, _, df = read_input_frame(pool_path, im.data, allow_pickle or im.data.allow_pickle,
                                           bool(text_column))
    chosen = select_frame(im, df, texts, pairs, k, strategy, seed, exclude_labelled, f"the pool {pool_path}")
    write_selection(out, chosen.rows)
    return {**chosen.summary(), "output": str(out)}
