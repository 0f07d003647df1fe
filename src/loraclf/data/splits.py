"""Train/validation/test as configured, with the label map: read, cleaned, encoded, split.

Raw splits are `datasets.Dataset`s with columns `text` (`text_pair`) and `label` (a class id, a multi-hot list or a
float). Files of at least read.ARROW_MIN_MB (csv/tsv/jsonl/parquet) stay on disk as memory-mapped Arrow all the way
to the batches, whatever the problem type; smaller ones go through pandas. With data.streaming the training split
is a `datasets.IterableDataset` instead (load_stream_splits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd
from pyarrow import types as pa_types

from ..base import logs, sources
from ..config import DataConfig
from ..task import MULTI, SINGLE
from ..base.errors import DataError, did_you_mean
from . import targets
from .clean import check_columns, clean_arrow, clean_frame, is_missing, text_columns
from .labels import build_label_map, normalise_label
from .read import READERS, column, read_hub, read_split, stream_head
from .stream import stream_where

if TYPE_CHECKING:  # annotations only: the code imports datasets where it uses it
    import datasets

logger = logs.get(__name__)


@dataclass
class Splits:
    train: datasets.Dataset | datasets.IterableDataset  # a stream of raw rows with data.streaming
    validation: datasets.Dataset
    test: Optional[datasets.Dataset]
    id2label: dict[int, str]
    notes: list[str] = field(default_factory=list)
    int_labels: bool = False  # the raw labels were integers (predict's ID,Label then writes ids, not names)
    problem_type: str = SINGLE
    # load_splits(hold_out=False) with no validation source: validation holds the training rows themselves, until
    # hold_out_validation splits it off (the few-shot recipe trains on every labelled row instead)
    validation_is_train: bool = False


def train_labels(splits: Splits) -> np.ndarray:
    """The encoded training labels: class ids, a multi-hot matrix, or the regression targets."""
    return label_array(splits.train)


def label_array(ds) -> np.ndarray:
    """A Dataset's encoded `label` column as numpy: ids or floats, or (multi-hot lists) one row per example, built
    from Arrow's flat values rather than an array object per row."""
    labels = column(ds, "label")
    if pa_types.is_list(labels.type):
        flat = labels.combine_chunks() if hasattr(labels, "combine_chunks") else labels
        values = flat.flatten().to_numpy(zero_copy_only=False)
        if len(flat) and len(values) % len(flat) == 0 and len(set(flat.value_lengths().unique().to_pylist())) == 1:
            return values.reshape(len(flat), -1)
    return labels.to_numpy(zero_copy_only=False)  # raw label cells (a stream's validation labels)


def stratified_split(labels: np.ndarray, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation row indices; `size` is a fraction (< 1) or a row count."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_val = int(size) if size >= 1 else int(round(size * n))
    if n_val < 1 or n_val >= n:
        raise DataError(f"data.validation_split={size:g} leaves no training or no validation rows out of {n}")
    idx = np.arange(n)
    if np.asarray(labels).dtype.kind != "i" or np.asarray(labels).ndim != 1:  # label sets, regression targets
        tr, va = train_test_split(idx, test_size=n_val, random_state=seed)
        return np.sort(tr), np.sort(va)
    counts = np.bincount(labels)
    n_classes = int((counts > 0).sum())
    # stratify only where every class can be in both parts; else sklearn refuses and a plain shuffle is used
    stratify = labels if counts[counts > 0].min() >= 2 and n_classes <= n_val <= n - n_classes else None
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(va)


# ------------------------------------------------------------------------------------------ one part, either kind
# a part is a DataFrame (small files, hub and packaged data) or a memory-mapped Dataset (large files)


def _clean_part(part, cfg: DataConfig, where: str, log, problem_type: str, group: bool = False):
    if isinstance(part, pd.DataFrame):
        return clean_frame(part, cfg, where, True, log, problem_type, group)
    return clean_arrow(part, cfg, where, True, log, problem_type, group)


def _check_group_column(part, cfg: DataConfig, where: str) -> None:
    columns = [str(c) for c in (part.columns if isinstance(part, pd.DataFrame) else part.column_names)]
    g = cfg.group_column
    if g not in columns:
        raise DataError(f"{where} has no group column '{g}'{did_you_mean(g, columns)}; columns are: "
                        f"{', '.join(columns)} (set data.group_column)")


def _encode_part(part, id2label: dict[int, str], where: str, cfg: DataConfig, problem_type: str = SINGLE):
    if isinstance(part, pd.DataFrame):
        encoded = targets.encode(problem_type, part["label"], id2label, cfg, where)
        # multi-hot rows stay Python lists (one cell each), which datasets stores as a sequence column
        part["label"] = pd.Series(list(encoded), dtype=object) if problem_type == MULTI else encoded
        return part
    return targets.encode_arrow(problem_type, part, id2label, cfg, where)


def _label_map(train, cfg: DataConfig, problem_type: str, class_names: Optional[list[str]],
               where: str) -> dict[int, str]:
    """id2label from the cleaned training part's raw labels, read a batch at a time from a memory-mapped one."""
    if isinstance(train, pd.DataFrame):
        return targets.build_map(problem_type, train["label"], cfg, class_names, where)
    if problem_type == SINGLE:
        raw = targets.distinct_labels(train, where, cfg.label_column)
        return targets.build_map(problem_type, raw, cfg, class_names, where)
    return targets.arrow_map(problem_type, train, cfg, where)


def _labels_of(part) -> np.ndarray:
    if isinstance(part, pd.DataFrame):
        return part["label"].to_numpy()
    return label_array(part)


def _to_dataset(part):
    import datasets

    cols = [c for c in ("text", "text_pair", "label", "group") if c in (part.columns if isinstance(part, pd.DataFrame)
                                                                 else part.column_names)]
    if isinstance(part, pd.DataFrame):
        return datasets.Dataset.from_pandas(part[cols].reset_index(drop=True), preserve_index=False)
    return part.select_columns(cols)


def _int_labels(frame, cfg: DataConfig) -> bool:
    """Whether the raw labels (before cleaning) are integers, judged on the first 1,000."""
    if cfg.label_columns:
        return False
    if isinstance(frame, pd.DataFrame):
        head = frame[cfg.label_column].dropna().head(1000)
    else:
        head = [v for v in frame.select(range(min(1000, len(frame))))[cfg.label_column] if not is_missing(v)]
    return all(isinstance(normalise_label(v), int) for v in head)


def _notes(log):
    """A list of the notes and a sink that keeps each one and logs it."""
    notes: list[str] = []
    say = logs.sink(log, logger)

    def note(msg):
        notes.append(msg)
        say(msg)

    return notes, note


# ------------------------------------------------------------------------------------------ whole splits


def _read_parts(cfg: DataConfig, arrow: bool) -> tuple[dict, dict, Optional[list[str]]]:
    """The raw parts (train and, when given, validation and test), their names in messages, ClassLabel names."""
    label_names = None
    if cfg.train:
        frames = {"train": read_split(cfg.train, cfg, arrow=arrow)}
        where = {"train": str(cfg.train)}
    elif sources.is_packaged(cfg.name):
        frames = {"train": pd.DataFrame(sources.packaged_dataset_rows(cfg.name))}
        where = {"train": cfg.name}
    else:
        hub, label_names = read_hub(cfg)
        where = {k: f"{cfg.name}[{k}]" for k in hub}
        frames = {"train": hub["train"], "test": hub.get("test")}
    for key in ("validation", "test"):
        path = getattr(cfg, key)
        if path:
            frames[key] = read_split(path, cfg, arrow=arrow)
            where[key] = str(path)
    return frames, where, label_names


def _split_off_validation(train, cfg: DataConfig, note):
    labels = _labels_of(train)
    tr, va = stratified_split(labels, cfg.validation_split, cfg.split_seed)
    if isinstance(train, pd.DataFrame):
        val = train.iloc[va].reset_index(drop=True)
        train = train.iloc[tr].reset_index(drop=True)
    else:
        val, train = train.select(va), train.select(tr)
    how = "stratified" if labels.dtype.kind in "iu" and labels.ndim == 1 else "shuffled"
    note(f"validation: {len(val)} rows split from train ({how}, seed {cfg.split_seed})")
    return train, val


def load_splits(cfg: DataConfig, log=None, id2label: Optional[dict[int, str]] = None,
                problem_type: str = SINGLE, groups: bool = False, hold_out: bool = True) -> Splits:
    """Read train/validation/test as configured and return them with a label map (see the module's docstring).
    Every problem type takes the Arrow path for large files. groups (with data.group_column set): the training
    rows keep their group as a `group` column (text; None where the cell is empty), for k-fold training.
    hold_out=False: with no validation source, validation is the training rows (see Splits.validation_is_train)."""
    if cfg.streaming:
        return load_stream_splits(cfg, log, id2label)
    frames, where, label_names = _read_parts(cfg, arrow=True)
    notes, note = _notes(log)

    def part(key):
        cleaned = _clean_part(frames[key], cfg, where.get(key, key), note, problem_type)
        return _encode_part(cleaned, id2label, where.get(key, key), cfg, problem_type)

    groups = groups and cfg.group_column is not None
    if groups:
        _check_group_column(frames["train"], cfg, where["train"])
    train = _clean_part(frames["train"], cfg, where["train"], note, problem_type, groups)
    if id2label is None:
        id2label = _label_map(train, cfg, problem_type, label_names, where["train"])
    train = _encode_part(train, id2label, where["train"], cfg, problem_type)
    if frames.get("validation") is not None:
        val = part("validation")
    elif hold_out:
        train, val = _split_off_validation(train, cfg, note)
    else:
        val = train
    test = part("test") if frames.get("test") is not None else None
    if problem_type == SINGLE:
        train_labels_ = _labels_of(train)
        if len(np.unique(train_labels_)) < 2:
            raise DataError(f"the training split has only one class ({id2label[int(train_labels_[0])]}); a "
                            f"classifier needs at least two")
    return Splits(_to_dataset(train), _to_dataset(val), _to_dataset(test) if test is not None else None, id2label,
                  notes, problem_type == SINGLE and _int_labels(frames["train"], cfg), problem_type,
                  validation_is_train=frames.get("validation") is None and not hold_out)


def hold_out_validation(splits: Splits, cfg: DataConfig, log=None) -> Splits:
    """Splits loaded with hold_out=False, with the validation split now taken from the training rows as
    load_splits would have taken it."""
    import dataclasses

    notes, note = _notes(log)
    train, val = _split_off_validation(splits.train, cfg, note)
    return dataclasses.replace(splits, train=train, validation=val, notes=splits.notes + notes,
                               validation_is_train=False)


# ------------------------------------------------------------------------------------------ streaming
#
# data.streaming: the training split is a `datasets` stream, read as training consumes it (stream.train_stream).
# Validation and test are small and read whole, as above; they also give the label set, since a stream cannot be
# scanned for its labels up front.


def _stream_parts(cfg: DataConfig):
    """The training stream, the validation/test parts read whole, their names in messages, ClassLabel names."""
    class_names, hub, frames, wheres = None, {}, {}, {}
    if cfg.train:
        train = read_split(cfg.train, cfg, streaming=True)
    else:
        hub, class_names = read_hub(cfg, streaming=True)
        train = hub["train"]
    for key in ("validation", "test"):
        path = getattr(cfg, key)
        if path:
            frames[key], wheres[key] = read_split(path, cfg), str(path)
        elif key in hub:
            wheres[key] = f"{cfg.name}[{key}]"
            frames[key] = stream_head(hub[key], None, wheres[key])
    return train, frames, wheres, class_names


def _checked_stream(train, cfg: DataConfig, where: str, kind: str):
    """The stream's text and label columns, checked on its first row before any model or run folder exists."""
    first = stream_head(train, 1, where, kind)
    if first.empty:
        raise DataError(f"{where} has no rows; add at least one row under the header")
    check_columns(first.columns, cfg, where, need_label=True)
    return train.select_columns(list(dict.fromkeys(text_columns(cfg) + [cfg.label_column])))


def _held_out_head(train, cfg: DataConfig, where: str, kind: str, note):
    """The first data.validation_split rows as validation, and the training stream that skips them."""
    n = cfg.validation_split
    if n < 1:
        raise DataError(f"with data.streaming=true, set data.validation to a file, or data.validation_split to a "
                        f"row count (e.g. 2000) held out from the head of the stream; a fraction ({n:g}) needs "
                        f"the stream's length")
    n = int(n)
    head = stream_head(train, n + 1, where, kind)
    if len(head) <= n:
        raise DataError(f"{where} has only {len(head)} rows, none left for training after "
                        f"data.validation_split={n}; lower it or give data.validation")
    note(f"validation: the first {n} rows of the stream, held out from training (not stratified)")
    # skip() also keeps the shard order fixed across epochs, so the held-out rows never enter training
    return train.skip(n), head.head(n), f"the first {n} rows of {where}"


def _stream_label_map(val, class_names, cfg: DataConfig, val_where: str) -> dict[int, str]:
    names = class_names or cfg.label_names
    raw = list(_labels_of(val))
    if names and all(isinstance(normalise_label(v), int) for v in raw):
        raw += list(range(len(names)))  # every named class, whether or not the validation data has it
    elif not names and len({normalise_label(v) for v in raw}) < 2:
        raise DataError(f"with data.streaming=true the label set is read from the validation data "
                        f"({val_where}), which has only one class; give validation data with every "
                        f"class, or name the integer classes in data.label_names")
    return build_label_map(raw, names, cfg.max_labels, val_where, cfg.label_column)


def load_stream_splits(cfg: DataConfig, log=None, id2label: Optional[dict[int, str]] = None) -> Splits:
    """Splits whose `train` is the unshuffled training stream (see stream.stream_loader); validation and test read whole.

    Validation: data.validation, else the hub dataset's validation split, else the first data.validation_split
    rows of the stream (a row count: a fraction needs the length), which training then skips.
    The label set comes from the hub dataset's ClassLabel names or data.label_names (integer labels), else from
    the labels of the validation data; a training row with another label stops training with a one-line error.
    """
    notes, note = _notes(log)
    where = stream_where(cfg)
    kind = READERS.get(Path(cfg.train).suffix.lower(), "data") if cfg.train else "data"
    train, frames, wheres, class_names = _stream_parts(cfg)
    train = _checked_stream(train, cfg, where, kind)
    if "validation" not in frames:
        train, frames["validation"], wheres["validation"] = _held_out_head(train, cfg, where, kind, note)

    val = _clean_part(frames["validation"], cfg, wheres["validation"], note, SINGLE)
    if id2label is None:
        id2label = _stream_label_map(val, class_names, cfg, wheres["validation"])
    val = _encode_part(val, id2label, wheres["validation"], cfg)
    test = None
    if frames.get("test") is not None:
        test = _encode_part(_clean_part(frames["test"], cfg, wheres["test"], note, SINGLE), id2label, wheres["test"], cfg)
    note(f"train: streamed from {where}, shuffled in a buffer of {cfg.shuffle_buffer_size:,} rows; "
         f"label set {', '.join(id2label.values())}")
    return Splits(train, _to_dataset(val), _to_dataset(test) if test is not None else None, id2label, notes,
                  _int_labels(frames["validation"], cfg))
