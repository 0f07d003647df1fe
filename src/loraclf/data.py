"""Data: sources -> columns -> label map -> split -> tokenize -> batches.

Raw splits are `datasets.Dataset`s with columns `text` and `label` (int). Tokenized splits add `input_ids`,
`attention_mask`, `length` and keep an `index` column so predictions can be put back in input order.
With data.streaming the training split is a `datasets.IterableDataset` instead, cleaned and tokenized pass by pass
as it is read (train_stream, stream_loader).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .config import DataConfig
from .errors import DataError, did_you_mean
from . import sources

READERS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".pkl": "pickle",
    ".pickle": "pickle",
}
ID_COLUMNS = ("ID", "Id", "id")
# Files at least this large are read through `datasets` (Arrow on disk, memory-mapped, cleaned with cached batched
# maps) instead of pandas, so peak memory stays flat as the file grows; smaller files keep the pandas reader.
ARROW_MIN_MB = 16.0
ARROW_BUILDERS = {"csv": "csv", "tsv": "csv", "jsonl": "json", "parquet": "parquet"}


# ------------------------------------------------------------------------------------------ reading files


def _check_file(p: Path) -> None:
    if not p.exists():
        raise DataError(f"data file not found: {p} (check the path; a relative path is read from {Path.cwd()})")
    if p.is_dir():
        raise DataError(f"{p} is a folder; give a data file (.csv, .tsv, .json, .jsonl, .parquet)")


def read_table(path: str | Path, allow_pickle: bool = False, max_file_mb: float = 2048.0) -> pd.DataFrame:
    """Read one data file into a DataFrame, with one-line errors for everything a user can get wrong."""
    p = Path(path)
    _check_file(p)
    kind = READERS.get(p.suffix.lower())
    if kind is None:
        raise DataError(
            f"unknown data format '{p.suffix or p.name}' for {p}; use one of {', '.join(sorted(set(READERS)))}"
        )
    size_mb = p.stat().st_size / 1e6
    if size_mb > max_file_mb:
        raise DataError(f"{p} is {size_mb:,.0f} MB, over data.max_file_mb={max_file_mb:g}; raise data.max_file_mb if the file is meant to be this large")
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty; give a file with a header line and at least one row")
    if kind == "pickle":
        if not allow_pickle:
            raise DataError(
                f"{p} is a pickle, and unpickling runs code from the file; if you trust it, set data.allow_pickle=true "
                f"(or pass --allow-pickle)"
            )
        return _read_pickle(p)
    try:
        if kind == "csv":
            df = pd.read_csv(p, encoding="utf-8", keep_default_na=False, na_values=[""])
        elif kind == "tsv":
            df = pd.read_csv(p, sep="\t", encoding="utf-8", keep_default_na=False, na_values=[""])
        elif kind == "jsonl":
            df = pd.read_json(p, lines=True, encoding="utf-8")
        elif kind == "json":
            df = _read_json(p)
        elif kind == "parquet":
            df = pd.read_parquet(p)
        else:  # text: one text per line
            lines = p.read_text(encoding="utf-8").splitlines()
            df = pd.DataFrame({"text": [line for line in lines if line.strip()]})
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not valid UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{p} has no rows; add at least one row under the header") from None
    except (ValueError, pd.errors.ParserError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read {p} as {kind}: {msg[:300]}; check that the file is well-formed {kind}") from None
    except Exception as e:  # pyarrow raises its own types on damaged parquet
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read {p} as {kind}: {msg[:300]}; check that the file is well-formed {kind}") from None
    if not isinstance(df, pd.DataFrame) or len(df.columns) == 0:
        raise DataError(f"{p} holds no table")
    if len(df) == 0:
        raise DataError(f"{p} has a header but no rows; add at least one row under the header")
    df.columns = [str(c) for c in df.columns]
    return df


def _read_json(p: Path) -> pd.DataFrame:
    import json

    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        # many ".json" files are really JSON lines
        return pd.read_json(p, lines=True, encoding="utf-8")
    if isinstance(obj, dict):
        for key in ("data", "rows", "examples", "train"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f"{p} must hold a list of records (objects) or be JSON lines")
    return pd.DataFrame(obj)


def _read_pickle(p: Path) -> pd.DataFrame:
    import pickle

    try:
        with open(p, "rb") as f:
            obj = pickle.load(f)  # opt-in only: see data.allow_pickle
    except Exception as e:
        raise DataError(f"cannot unpickle {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    try:
        import datasets

        if isinstance(obj, datasets.DatasetDict):
            raise DataError(f"{p} holds a DatasetDict with splits {list(obj)}; save one split, e.g. dataset['train']")
        if isinstance(obj, datasets.Dataset):
            return obj.to_pandas()
    except ImportError:
        pass
    if isinstance(obj, pd.DataFrame):
        return obj.reset_index(drop=True)
    if isinstance(obj, (list, tuple)) and all(isinstance(x, str) for x in obj):
        return pd.DataFrame({"text": list(obj)})
    raise DataError(f"{p} holds a {type(obj).__name__}; expected a datasets.Dataset or a pandas DataFrame")


# ------------------------------------------------------------------------------------------ columns


def _text_columns(cfg: DataConfig) -> list[str]:
    return [cfg.text_column] if isinstance(cfg.text_column, str) else list(cfg.text_column)


def select_text(df: pd.DataFrame, cfg: DataConfig, where: str) -> pd.Series:
    """The text column(s) joined by a space; NaN where every part is missing."""
    cols = _text_columns(cfg)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        hint = did_you_mean(missing[0], df.columns)
        raise DataError(
            f"{where} has no text column '{missing[0]}'{hint}; columns are: {', '.join(map(str, df.columns))} "
            f"(set data.text_column)"
        )
    # element-wise on Python objects: pandas' string dtypes turn None back into NaN (and NaN into "nan")
    parts = [[None if _missing(v) else str(v) for v in df[c].tolist()] for c in cols]
    joined = [" ".join(x for x in row if x and x.strip()) for row in zip(*parts)]
    return pd.Series([t.strip() or None for t in joined], index=df.index, dtype=object)


def _missing(v) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):  # lists/arrays in a cell are not "missing"
        return False


def _clean(df: pd.DataFrame, cfg: DataConfig, where: str, need_label: bool, log) -> pd.DataFrame:
    text = select_text(df, cfg, where)
    out = pd.DataFrame({"text": text})
    if need_label:
        if cfg.label_column not in df.columns:
            hint = did_you_mean(cfg.label_column, df.columns)
            raise DataError(
                f"{where} has no label column '{cfg.label_column}'{hint}; columns are: "
                f"{', '.join(map(str, df.columns))} (set data.label_column)"
            )
        out["label"] = df[cfg.label_column].values
    empty = out["text"].isna()
    if need_label:
        empty |= out["label"].isna() | out["label"].map(lambda v: isinstance(v, str) and not v.strip())
    n_empty = int(empty.sum())
    if n_empty:
        if cfg.empty_text == "error":
            first = int(np.flatnonzero(empty.values)[0])
            raise DataError(
                f"{where} has {n_empty} empty or NaN texts/labels (first at row {first}); "
                f"set data.empty_text=drop to skip them"
            )
        log(f"{where}: dropped {n_empty} rows with empty or NaN text/label")
        out = out[~empty].reset_index(drop=True)
    if len(out) == 0:
        raise DataError(f"{where} has no usable rows (all texts empty)")
    long = out["text"].str.len() > cfg.max_text_chars
    if long.any():
        out.loc[long, "text"] = out.loc[long, "text"].str.slice(0, cfg.max_text_chars)
        log(f"{where}: cut {int(long.sum())} texts to data.max_text_chars={cfg.max_text_chars} characters")
    return out


# ------------------------------------------------------------------------------------------ large files (Arrow)


def _arrow_kind(path) -> Optional[str]:
    """The reader kind when `path` is a file large enough for the memory-mapped Arrow path, else None."""
    p = Path(path)
    kind = READERS.get(p.suffix.lower())
    if kind not in ARROW_BUILDERS or not p.is_file():
        return None
    return kind if p.stat().st_size >= ARROW_MIN_MB * 1e6 else None


def _read_arrow(path, kind: str, cfg: DataConfig):
    """Read a large file into a memory-mapped `datasets.Dataset` (converted to Arrow once, cached on disk)."""
    import datasets

    p = Path(path)
    size_mb = p.stat().st_size / 1e6
    if size_mb > cfg.max_file_mb:
        raise DataError(f"{p} is {size_mb:,.0f} MB, over data.max_file_mb={cfg.max_file_mb:g}; raise data.max_file_mb if the file is meant to be this large")
    kwargs = {}
    if kind in ("csv", "tsv"):  # the same NaN rules as the pandas reader
        kwargs = dict(sep="\t" if kind == "tsv" else ",", keep_default_na=False, na_values=[""])
    try:
        ds = datasets.load_dataset(ARROW_BUILDERS[kind], data_files=str(p.resolve()), split="train",
                                   cache_dir=str(sources.cache_root() / "datasets"), **kwargs)
    except Exception as e:
        cause = e.__cause__ or e
        msg = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise DataError(f"cannot read {p} as {kind}: {msg[:300]}; check that the file is well-formed {kind}") from None
    if len(ds) == 0:
        raise DataError(f"{p} has a header but no rows; add at least one row under the header")
    return ds


def column(ds, name: str):
    """One column of a Dataset as a pyarrow array (honouring select/filter indices), without a Python object per row."""
    return ds.select_columns([name]).with_format("arrow")[:][name]


def _clean_arrow(ds, cfg: DataConfig, where: str, need_label: bool, log):
    """`_clean` for a memory-mapped Dataset: the same rules and messages, in cached batched maps."""
    import datasets

    cols = _text_columns(cfg)
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        hint = did_you_mean(missing[0], ds.column_names)
        raise DataError(f"{where} has no text column '{missing[0]}'{hint}; columns are: {', '.join(ds.column_names)} "
                        f"(set data.text_column)")
    label_col = cfg.label_column
    if need_label and label_col not in ds.column_names:
        hint = did_you_mean(label_col, ds.column_names)
        raise DataError(f"{where} has no label column '{label_col}'{hint}; columns are: "
                        f"{', '.join(ds.column_names)} (set data.label_column)")
    text_cfg = DataConfig(text_column=cfg.text_column)  # only what select_text reads: keeps the map's cache key stable
    max_chars = cfg.max_text_chars

    def fn(batch):
        text = select_text(pd.DataFrame({c: batch[c] for c in cols}), text_cfg, where)
        empty = text.isna().to_numpy().copy()
        out = {"text": [t if t is None else t[:max_chars] for t in text],
               "_cut": [t is not None and len(t) > max_chars for t in text]}
        if need_label:
            lab = pd.Series(batch[label_col], dtype=object)
            empty |= (lab.isna() | lab.map(lambda v: isinstance(v, str) and not v.strip())).to_numpy(dtype=bool)
            out["label"] = batch[label_col]
        out["_keep"] = ~empty
        return out

    feats = {"text": datasets.Value("string"), "_cut": datasets.Value("bool")}
    if need_label:
        feats["label"] = ds.features[label_col]
    feats["_keep"] = datasets.Value("bool")
    ds = ds.map(fn, batched=True, batch_size=10_000, remove_columns=ds.column_names,
                features=datasets.Features(feats), desc=f"Cleaning {Path(where).name}")
    keep = column(ds, "_keep").to_numpy(zero_copy_only=False)
    n_empty = int((~keep).sum())
    if n_empty:
        if cfg.empty_text == "error":
            raise DataError(f"{where} has {n_empty} empty or NaN texts/labels (first at row {int(np.flatnonzero(~keep)[0])}); "
                            f"set data.empty_text=drop to skip them")
        log(f"{where}: dropped {n_empty} rows with empty or NaN text/label")
        ds = ds.select(np.flatnonzero(keep))
    if len(ds) == 0:
        raise DataError(f"{where} has no usable rows (all texts empty)")
    n_cut = int(np.asarray(column(ds, "_cut").to_numpy(zero_copy_only=False)).sum())
    if n_cut:
        log(f"{where}: cut {n_cut} texts to data.max_text_chars={cfg.max_text_chars} characters")
    return ds.remove_columns(["_cut", "_keep"])


def _encode_arrow(ds, id2label: dict[int, str], where: str):
    """Replace the raw label column by class ids, in a cached batched map (this also flattens any select)."""
    import datasets

    def fn(batch):
        return {"label": encode_labels(pd.Series(batch["label"], dtype=object), id2label, where)}

    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    return ds.map(fn, batched=True, batch_size=10_000, features=feats, desc=f"Encoding labels of {Path(where).name}")


# ------------------------------------------------------------------------------------------ label map


def _normalise_label(v):
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    return str(v).strip()


def build_label_map(labels, label_names: Optional[list[str]], max_labels: int) -> dict[int, str]:
    """id2label from the training labels: ints keep their values, strings are sorted."""
    values = sorted({_normalise_label(v) for v in labels}, key=lambda v: (isinstance(v, str), v))
    if len(values) > max_labels:
        raise DataError(f"the label column has {len(values):,} distinct values, over data.max_labels={max_labels}; is it the right column?")
    if len(values) < 2:
        raise DataError(
            f"the training data has only one class ({values[0]!r}); a classifier needs at least two"
            if values else "the training data has no labels"
        )
    if all(isinstance(v, int) for v in values):
        if values[0] < 0:
            raise DataError(f"integer labels must be >= 0, found {values[0]}; number the classes 0..K-1 or use label names")
        k = max(values) + 1
        if k > max_labels:
            raise DataError(f"integer labels reach {max(values)}, over data.max_labels={max_labels}")
        if label_names:
            if len(label_names) < k:
                raise DataError(f"data.label_names has {len(label_names)} names but labels go up to {k - 1}; "
                                f"give one name per label 0..{k - 1}")
            return {i: str(label_names[i]) for i in range(k)}
        return {i: str(i) for i in range(k)}
    if label_names:
        raise DataError("data.label_names is only for integer labels; these labels are already names")
    return {i: str(v) for i, v in enumerate(values)}


def encode_labels(labels: pd.Series, id2label: dict[int, str], where: str, streamed: bool = False) -> np.ndarray:
    label2id = {name: i for i, name in id2label.items()}
    ints = {i for i in id2label}
    out = np.empty(len(labels), dtype=np.int64)
    unseen = set()
    for j, v in enumerate(labels):
        v = _normalise_label(v)
        if str(v) in label2id:
            out[j] = label2id[str(v)]
        elif isinstance(v, int) and v in ints:  # integer labels named by data.label_names
            out[j] = v
        else:
            unseen.add(v)
    if unseen and streamed:
        shown = ", ".join(repr(u) for u in sorted(unseen, key=str)[:5])
        raise DataError(
            f"{where} has rows with labels outside the label set read before training: {shown}; known labels are "
            f"{', '.join(id2label.values())} (a stream's label set comes from the validation data, data.label_names "
            f"or the dataset's ClassLabel: add that class to one of them, or drop those rows)"
        )
    if unseen:
        shown = ", ".join(repr(u) for u in sorted(unseen, key=str)[:5])
        raise DataError(
            f"{where} has labels never seen in training: {shown}; known labels are "
            f"{', '.join(id2label.values())} (add examples of them to the training data, or drop those rows)"
        )
    return out


# ------------------------------------------------------------------------------------------ splits


@dataclass
class Splits:
    train: "datasets.Dataset"  # noqa: F821  (an IterableDataset of raw rows with data.streaming)
    validation: "datasets.Dataset"  # noqa: F821
    test: Optional["datasets.Dataset"]  # noqa: F821
    id2label: dict[int, str]
    notes: list[str] = field(default_factory=list)
    int_labels: bool = False  # the raw labels were integers (predict's ID,Label then writes ids, not names)


def _stratified_split(labels: np.ndarray, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_val = int(size) if size >= 1 else int(round(size * n))
    if n_val < 1 or n_val >= n:
        raise DataError(f"data.validation_split={size:g} leaves no training or no validation rows out of {n}")
    idx = np.arange(n)
    counts = np.bincount(labels)
    n_classes = int((counts > 0).sum())
    # stratify only where every class can be in both parts; else sklearn refuses and a plain shuffle is used
    stratify = labels if counts[counts > 0].min() >= 2 and n_classes <= n_val <= n - n_classes else None
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(va)


def _hub_frames(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], Optional[list[str]]]:
    """Load a hub dataset's splits as DataFrames, and its ClassLabel names when it has them."""
    import datasets

    try:
        dd = datasets.load_dataset(cfg.name)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot load dataset '{cfg.name}' from the Hugging Face hub ({msg}); "
                        f"check the name and network, or point data.train at a local file") from None
    names = None
    first = next(iter(dd.values()))
    feat = first.features.get(cfg.label_column)
    if isinstance(feat, datasets.ClassLabel):
        names = list(feat.names)
    return {k: v.to_pandas() for k, v in dd.items()}, names


def _read(path, cfg: DataConfig):
    """A data file as a DataFrame, or as a memory-mapped Dataset when it is at least ARROW_MIN_MB."""
    kind = _arrow_kind(path)
    return _read_arrow(path, kind, cfg) if kind else read_table(path, cfg.allow_pickle, cfg.max_file_mb)


def _clean_part(part, cfg: DataConfig, where: str, log):
    if isinstance(part, pd.DataFrame):
        return _clean(part, cfg, where, True, log)
    return _clean_arrow(part, cfg, where, True, log)


def _encode_part(part, id2label: dict[int, str], where: str):
    if isinstance(part, pd.DataFrame):
        part["label"] = encode_labels(part["label"], id2label, where)
        return part
    return _encode_arrow(part, id2label, where)


def _labels_of(part) -> np.ndarray:
    if isinstance(part, pd.DataFrame):
        return part["label"].to_numpy()
    return column(part, "label").to_numpy(zero_copy_only=False)


def _to_dataset(part):
    import datasets

    if isinstance(part, pd.DataFrame):
        return datasets.Dataset.from_pandas(part[["text", "label"]].reset_index(drop=True), preserve_index=False)
    return part.select_columns(["text", "label"])


def _int_labels(frame, cfg: DataConfig) -> bool:
    """Whether the raw labels (before cleaning) are integers, judged on the first 1,000."""
    if isinstance(frame, pd.DataFrame):
        head = frame[cfg.label_column].dropna().head(1000)
    else:
        head = [v for v in frame.select(range(min(1000, len(frame))))[cfg.label_column] if not _missing(v)]
    return all(isinstance(_normalise_label(v), int) for v in head)


def load_splits(cfg: DataConfig, log=print, id2label: Optional[dict[int, str]] = None) -> Splits:
    """Read train/validation/test as configured and return them with a label map.

    Files of at least ARROW_MIN_MB (csv/tsv/jsonl/parquet) stay on disk as memory-mapped Arrow all the way to the
    batches; smaller ones go through pandas. With data.streaming the training split is a stream instead
    (see load_stream_splits).
    """
    if cfg.streaming:
        return load_stream_splits(cfg, log, id2label)

    label_names = None
    if cfg.train:
        frames = {"train": _read(cfg.train, cfg)}
        where = {"train": str(cfg.train)}
    elif sources.is_packaged(cfg.name):
        frames = {"train": pd.DataFrame(sources.packaged_dataset_rows(cfg.name))}
        where = {"train": cfg.name}
    else:
        frames, label_names = _hub_frames(cfg)
        where = {k: f"{cfg.name}[{k}]" for k in frames}
        if "train" not in frames:
            raise DataError(f"dataset '{cfg.name}' has no 'train' split; it has {', '.join(frames)}")
        frames = {"train": frames["train"], "test": frames.get("test")}
    for key in ("validation", "test"):
        path = getattr(cfg, key)
        if path:
            frames[key] = _read(path, cfg)
            where[key] = str(path)

    notes: list[str] = []

    def note(msg):
        notes.append(msg)
        log(msg)

    train = _clean_part(frames["train"], cfg, where["train"], note)
    if id2label is None:
        raw = train["label"] if isinstance(train, pd.DataFrame) else column(train, "label").unique().to_pylist()
        id2label = build_label_map(raw, cfg.label_names or label_names, cfg.max_labels)
    train = _encode_part(train, id2label, where["train"])

    if frames.get("validation") is not None:
        val = _encode_part(_clean_part(frames["validation"], cfg, where["validation"], note), id2label, where["validation"])
    else:
        tr, va = _stratified_split(_labels_of(train), cfg.validation_split, cfg.split_seed)
        if isinstance(train, pd.DataFrame):
            val = train.iloc[va].reset_index(drop=True)
            train = train.iloc[tr].reset_index(drop=True)
        else:
            val, train = train.select(va), train.select(tr)
        note(f"validation: {len(val)} rows split from train (stratified, seed {cfg.split_seed})")
    test = None
    if frames.get("test") is not None:
        test = _encode_part(_clean_part(frames["test"], cfg, where.get("test", "test"), note), id2label, where.get("test", "test"))

    train_labels = _labels_of(train)
    if len(np.unique(train_labels)) < 2:
        raise DataError(f"the training split has only one class ({id2label[int(train_labels[0])]}); a classifier needs at least two")
    return Splits(_to_dataset(train), _to_dataset(val), _to_dataset(test) if test is not None else None, id2label, notes,
                  _int_labels(frames["train"], cfg))


# ------------------------------------------------------------------------------------------ streaming
#
# data.streaming: the training split is a `datasets` stream (load_dataset(..., streaming=True)), read as training
# consumes it: shuffled through a buffer, cleaned and tokenized on the fly. Validation and test are small and read
# whole, as above; they also give the label set, since a stream cannot be scanned for its labels up front.

STREAM_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
STREAM_MAP_BATCH = 1000  # rows cleaned and tokenized at a time (datasets' own default batch size for map)


def _open_stream(path, cfg: DataConfig):
    """A local training file as a `datasets.IterableDataset` (one pass reads it from disk, nothing is cached).

    data.max_file_mb does not apply: it guards the readers that load a whole file, which a stream never does.
    """
    import datasets

    p = Path(path)
    _check_file(p)
    kind = READERS.get(p.suffix.lower())
    if kind not in STREAM_BUILDERS:
        raise DataError(f"data.streaming=true streams .csv .tsv .json .jsonl .parquet files, not '{p.suffix or p.name}' "
                        f"({p}); convert the file, or set data.streaming=false")
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty; give a file with a header line and at least one row")
    kwargs = {}
    if kind in ("csv", "tsv"):  # the same NaN rules as the pandas reader
        kwargs = dict(sep="\t" if kind == "tsv" else ",", keep_default_na=False, na_values=[""])
    try:
        return datasets.load_dataset(STREAM_BUILDERS[kind], data_files=str(p.resolve()), split="train",
                                     streaming=True, **kwargs)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read {p} as {kind}: {msg[:300]}; check that the file is well-formed {kind}") from None


def _hub_streams(cfg: DataConfig):
    """A hub dataset's splits as streams (an IterableDatasetDict); nothing is downloaded until a split is read."""
    import datasets

    try:
        return datasets.load_dataset(cfg.name, streaming=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot load dataset '{cfg.name}' from the Hugging Face hub ({msg}); "
                        f"check the name and network, or point data.train at a local file") from None


def _stream_where(cfg: DataConfig) -> str:
    return str(cfg.train) if cfg.train else f"{cfg.name}[train]"


def _stream_head(stream, n: Optional[int], where: str, kind: str = "data") -> pd.DataFrame:
    """The first n rows of a stream (None: all) as a DataFrame, with a one-line error when it cannot be read."""
    try:
        return pd.DataFrame(list(stream if n is None else stream.take(n)))
    except DataError:
        raise
    except Exception as e:  # the builders raise pandas', pyarrow's and json's own errors on a damaged file
        cause = e.__cause__ or e
        msg = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise DataError(f"cannot read {where}: {msg[:300]}; check that the file is well-formed {kind}") from None


def load_stream_splits(cfg: DataConfig, log=print, id2label: Optional[dict[int, str]] = None) -> Splits:
    """Splits whose `train` is the unshuffled training stream (see stream_loader); validation and test read whole.

    Validation: data.validation, else the hub dataset's validation split, else the first data.validation_split
    rows of the stream (a row count: a fraction needs the length), which training then skips.
    The label set comes from the hub dataset's ClassLabel names or data.label_names (integer labels), else from
    the labels of the validation data; a training row with another label stops training with a one-line error.
    """
    import datasets

    notes: list[str] = []

    def note(msg):
        notes.append(msg)
        log(msg)

    where = _stream_where(cfg)
    kind = READERS.get(Path(cfg.train).suffix.lower(), "data") if cfg.train else "data"
    class_names, frames, wheres = None, {}, {}
    if cfg.train:
        train = _open_stream(cfg.train, cfg)
        hub = {}
    else:
        hub = _hub_streams(cfg)
        if "train" not in hub:
            raise DataError(f"dataset '{cfg.name}' has no 'train' split; it has {', '.join(hub)}")
        train = hub["train"]
        feat = (train.features or {}).get(cfg.label_column)
        if isinstance(feat, datasets.ClassLabel):
            class_names = list(feat.names)
    for key in ("validation", "test"):
        path = getattr(cfg, key)
        if path:
            frames[key], wheres[key] = _read(path, cfg), str(path)
        elif key in hub:
            wheres[key] = f"{cfg.name}[{key}]"
            frames[key] = _stream_head(hub[key], None, wheres[key])

    # the columns are checked on the first row, before any model is built or run folder written
    first = _stream_head(train, 1, where, kind)
    if first.empty:
        raise DataError(f"{where} has no rows; add at least one row under the header")
    select_text(first, cfg, where)  # the missing-text-column message of the other paths
    if cfg.label_column not in first.columns:
        raise DataError(f"{where} has no label column '{cfg.label_column}'{did_you_mean(cfg.label_column, first.columns)}; "
                        f"columns are: {', '.join(map(str, first.columns))} (set data.label_column)")
    train = train.select_columns(list(dict.fromkeys(_text_columns(cfg) + [cfg.label_column])))

    if "validation" not in frames:
        n = cfg.validation_split
        if n < 1:
            raise DataError(f"with data.streaming=true, set data.validation to a file, or data.validation_split to a "
                            f"row count (e.g. 2000) held out from the head of the stream; a fraction ({n:g}) needs "
                            f"the stream's length")
        n = int(n)
        wheres["validation"] = f"the first {n} rows of {where}"
        frames["validation"] = _stream_head(train, n + 1, where, kind)
        if len(frames["validation"]) <= n:
            raise DataError(f"{where} has only {len(frames['validation'])} rows, none left for training after "
                            f"data.validation_split={n}; lower it or give data.validation")
        frames["validation"] = frames["validation"].head(n)
        # skip() also keeps the shard order fixed across epochs, so the held-out rows never enter training
        train = train.skip(n)
        note(f"validation: the first {n} rows of the stream, held out from training (not stratified)")

    val = _clean_part(frames["validation"], cfg, wheres["validation"], note)
    if id2label is None:
        names = class_names or cfg.label_names
        raw = list(_labels_of(val))
        if names and all(isinstance(_normalise_label(v), int) for v in raw):
            raw += list(range(len(names)))  # every named class, whether or not the validation data has it
        elif not names and len({_normalise_label(v) for v in raw}) < 2:
            raise DataError(f"with data.streaming=true the label set is read from the validation data "
                            f"({wheres['validation']}), which has only one class; give validation data with every "
                            f"class, or name the integer classes in data.label_names")
        id2label = build_label_map(raw, names, cfg.max_labels)
    val = _encode_part(val, id2label, wheres["validation"])
    test = None
    if frames.get("test") is not None:
        test = _encode_part(_clean_part(frames["test"], cfg, wheres["test"], note), id2label, wheres["test"])
    note(f"train: streamed from {where}, shuffled in a buffer of {cfg.shuffle_buffer_size:,} rows; "
         f"label set {', '.join(id2label.values())}")
    return Splits(train, _to_dataset(val), _to_dataset(test) if test is not None else None, id2label, notes,
                  _int_labels(frames["validation"], cfg))


def train_stream(source, tokenizer, cfg: DataConfig, id2label: dict[int, str], seed: int, epoch: int, skip: int = 0):
    """One pass (epoch) over the training stream: shuffled through a buffer of data.shuffle_buffer_size rows with
    seed + epoch, cleaned by the rules of the other paths, labels encoded, tokenized as it is read.

    skip: rows of this pass already trained on (a resumed run); they are read and cleaned, not tokenized.
    """
    where = _stream_where(cfg)
    cols = _text_columns(cfg)
    label_col = cfg.label_column
    text_cfg = DataConfig(text_column=cfg.text_column)
    max_chars, max_length = cfg.max_text_chars, cfg.max_length

    def clean(batch):
        text = select_text(pd.DataFrame({c: batch[c] for c in cols}), text_cfg, where)
        lab = pd.Series(batch[label_col], dtype=object)
        empty = (text.isna() | lab.isna() | lab.map(lambda v: isinstance(v, str) and not v.strip())).to_numpy(dtype=bool)
        if empty.any() and cfg.empty_text == "error":
            raise DataError(f"{where} has an empty or NaN text/label in the stream; set data.empty_text=drop to "
                            f"skip such rows")
        keep = ~empty
        return {"text": [t[:max_chars] for t in text[keep]],
                "label": encode_labels(lab[keep], id2label, where, streamed=True).tolist()}

    def tok(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    ds = source.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer_size)
    ds = ds.map(clean, batched=True, batch_size=STREAM_MAP_BATCH, remove_columns=list(dict.fromkeys(cols + [label_col])))
    if skip:
        # not skip(): in the datasets chain it freezes the shard order, which set_epoch would otherwise reshuffle,
        # so a multi-file source would resume a later epoch in another order than the uninterrupted run
        ds = ds.filter(lambda b, idx: [i >= skip for i in idx], with_indices=True, batched=True,
                       batch_size=STREAM_MAP_BATCH)
    ds = ds.map(tok, batched=True, batch_size=STREAM_MAP_BATCH, remove_columns=["text"])
    ds.set_epoch(epoch)
    return ds


def stream_loader(source, tokenizer, cfg: DataConfig, id2label: dict[int, str], per_device_batch_size: int, seed: int,
                  epoch: int, skip: int = 0):
    """Batches of one pass over the training stream, prepared by Accelerate for every process.

    Process 0 reads the stream and Accelerate hands each process its slice of every global batch
    (dispatch_batches with split_batches). Accelerate's default for an IterableDataset (process 0 reads one batch
    per process and concatenates them) fails when dynamic padding gives batches different lengths, and
    split_dataset_by_node gives processes different row counts at the end of a pass, which leaves them in step
    only by luck; one global order also makes N processes train on exactly what one process would, and lets a
    checkpoint written by N processes resume in M. The last partial global batch of a pass is dropped.
    """
    import torch
    from accelerate.data_loader import prepare_data_loader
    from accelerate.state import PartialState
    from torch.utils.data import DataLoader

    n_proc = PartialState().num_processes
    stream = train_stream(source, tokenizer, cfg, id2label, seed, epoch, skip)
    loader = DataLoader(stream, batch_size=per_device_batch_size * n_proc, collate_fn=_Collate(tokenizer),
                        drop_last=True)
    loader = prepare_data_loader(loader, put_on_device=True, dispatch_batches=True, split_batches=True)
    loader.set_epoch(epoch)  # else the dispatcher sets the stream's epoch to its own count of passes, 0
    # Accelerate rebuilds the loader without a generator when it dispatches, and the rebuilt one draws its base seed
    # (unused without workers) from the global RNG at every pass: once more in a resumed run than in an
    # uninterrupted one, which would shift every later dropout mask
    loader.base_dataloader.generator = torch.Generator().manual_seed(seed + epoch)
    return loader


def read_texts(path: str | Path, cfg: DataConfig, allow_pickle: Optional[bool] = None) -> tuple[list[str], Optional[list], pd.DataFrame]:
    """Texts (and IDs when present) of an input file for predict/evaluate; empty texts are kept as ''."""
    df = read_table(path, cfg.allow_pickle if allow_pickle is None else allow_pickle, cfg.max_file_mb)
    if isinstance(cfg.text_column, str) and cfg.text_column not in df.columns and len(df.columns) == 1:
        text = select_text(df.rename(columns={df.columns[0]: cfg.text_column}), cfg, str(path))
    elif isinstance(cfg.text_column, str) and cfg.text_column not in df.columns and "text" in df.columns:
        text = select_text(df.rename(columns={"text": cfg.text_column}), cfg, str(path))
    else:
        text = select_text(df, cfg, str(path))
    texts = [("" if t is None else t[: cfg.max_text_chars]) for t in text]
    id_col = cfg.id_column or next((c for c in ID_COLUMNS if c in df.columns), None)
    if cfg.id_column and cfg.id_column not in df.columns:
        raise DataError(f"{path} has no ID column '{cfg.id_column}'; columns are: {', '.join(df.columns)}")
    ids = df[id_col].tolist() if id_col else None
    if ids is None and Path(path).suffix.lower() == ".txt":
        # read_table skips blank lines; the IDs stay the (0-based) line numbers, so an ID always points at its line
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        ids = [i for i, line in enumerate(lines) if line.strip()]
    return texts, ids, df


# ------------------------------------------------------------------------------------------ tokenize


def cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else sources.cache_root() / "tokenized"


def _fingerprint(ds, tokenizer, max_length: int) -> str:
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    h.update(str(len(tokenizer)).encode())
    h.update(str(max_length).encode())
    h.update(str(getattr(ds, "_fingerprint", "")).encode())
    if ds.cache_files:
        # memory-mapped: datasets' fingerprint already follows the file (path, mtime) and every transform since,
        # and reading the text here would pull the whole file into memory
        return h.hexdigest()[:24]
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    for col in ("text", "label"):
        if col in ds.column_names:
            arr = table.column(col)
            h.update(pd.util.hash_pandas_object(arr.to_pandas(), index=False).values.tobytes())
    return h.hexdigest()[:24]


def tokenize(ds, tokenizer, cfg: DataConfig, cache: bool = True):
    """Tokenize without padding, adding `length` and `index`; cached on disk as Arrow when cache is set."""
    max_length = cfg.max_length

    def fn(batch, idx):
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["length"] = [len(x) for x in enc["input_ids"]]
        enc["index"] = idx
        return enc

    keep = [c for c in ds.column_names if c == "label"]
    remove = [c for c in ds.column_names if c not in keep]
    num_proc = cfg.num_proc
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8) if len(ds) >= 50_000 else None
    kwargs = dict(batched=True, with_indices=True, remove_columns=remove, desc="Tokenizing", num_proc=num_proc)
    if cache:
        d = cache_dir(cfg)
        d.mkdir(parents=True, exist_ok=True)
        key = _fingerprint(ds, tokenizer, max_length)
        kwargs["cache_file_name"] = str(d / f"{key}.arrow")
        kwargs["load_from_cache_file"] = True
        # our key already names tokenizer, max_length and data; without it datasets pickles `fn` (the whole
        # tokenizer) to make one, which is most of a cached re-run's time
        kwargs["new_fingerprint"] = key
    out = ds.map(fn, **kwargs)
    return out


# ------------------------------------------------------------------------------------------ batches


def collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


def train_loader(ds, tokenizer, batch_size: int, group_by_length: bool, seed: int, epoch: int,
                 group_size: Optional[int] = None):
    """Shuffled (seed + epoch) batches; length-grouped when asked, so each batch pads little.

    group_size is the global batch (per-device batch x processes): grouping by it gives every process count the
    same sample order, so N processes see exactly the samples one process would.
    """
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids", "label", "weight", "soft_labels") if c in ds.column_names]
    data = ds.select_columns(cols)
    if group_by_length:
        sampler = _LengthGroupedSampler(column(ds, "length").to_numpy(), group_size or batch_size, g)
    else:
        sampler = RandomSampler(data, generator=g)
    # the loader's own generator: without one, every new iterator draws its base seed from the global RNG,
    # which a resumed run would draw once more than an uninterrupted one (and so change its dropout masks)
    loader_g = torch.Generator()
    loader_g.manual_seed(seed + epoch)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=_Collate(tokenizer), drop_last=False,
                      generator=loader_g)


def eval_loader(ds, tokenizer, batch_size: int):
    """Batches sorted by length (least padding); the `index` column restores input order."""
    from torch.utils.data import DataLoader

    order = np.argsort(column(ds, "length").to_numpy(), kind="stable")
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids", "label", "index") if c in ds.column_names]
    data = ds.select(order.tolist()).select_columns(cols)
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=_Collate(tokenizer))


class _LengthGroupedSampler:
    """transformers' LengthGroupedSampler order (same draws, same result) computed in numpy.

    The original sorts Python lists of every index, which at a million rows costs hundreds of MB; this keeps one
    int64 array.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, generator):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self) -> np.ndarray:
        import torch

        n = len(self.lengths)
        mult = min(n // (self.batch_size * 4), 50) or 1
        indices = torch.randperm(n, generator=self.generator).numpy()
        size = mult * self.batch_size
        # a stable sort on the negated length = Python's sorted(..., reverse=True), which keeps ties in order
        mbs = [mb[np.argsort(-self.lengths[mb], kind="stable")] for mb in
               (indices[i: i + size] for i in range(0, n, size))]
        top = int(np.argmax([self.lengths[mb[0]] for mb in mbs]))  # first maximum, as torch.argmax
        mbs[0][0], mbs[top][0] = mbs[top][0], mbs[0][0]
        return np.concatenate(mbs)

    def __iter__(self):
        return (int(i) for i in self.order())


class _Collate:
    """Dynamic padding to the longest row of the batch; labels renamed to `labels` as models expect."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, rows):
        import torch

        feats = [{k: v for k, v in r.items() if k in ("input_ids", "attention_mask", "token_type_ids")} for r in rows]
        batch = self.tokenizer.pad(feats, return_tensors="pt")
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        if "index" in rows[0]:
            batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        if "weight" in rows[0]:
            batch["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
        if "soft_labels" in rows[0]:
            batch["soft_labels"] = torch.tensor([r["soft_labels"] for r in rows], dtype=torch.float32)
        return batch


def steps_per_epoch(n_rows: int, batch_size: int, accumulation: int, num_processes: int = 1) -> int:
    batches = math.ceil(n_rows / (batch_size * num_processes))
    return max(1, math.ceil(batches / accumulation))
