"""The one table reader: local files (pandas, Arrow for large files, or a stream) and hub datasets.

Every branch shares the same path checks (check_file) and the same one-line errors; `role` only changes how a
message names the file ("data" for a config key's file, "input" for a command's --input).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Optional

import pandas as pd

from ..base import sources
from ..config import DataConfig
from ..base.errors import DataError, did_you_mean, first_line

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
# Files at least this large are read through `datasets` (Arrow on disk, memory-mapped, cleaned with cached batched
# maps) instead of pandas, so peak memory stays flat as the file grows; smaller files keep the pandas reader.
ARROW_MIN_MB = 16.0
ARROW_BUILDERS = {"csv": "csv", "tsv": "csv", "jsonl": "json", "parquet": "parquet"}
# data.streaming: the `datasets` builder that streams each kind
STREAM_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}

_MESSAGES = {
    "data": {
        "missing": "data file not found: {p} (check the path; a relative path is read from {cwd})",
        "folder": "{p} is a folder; give a data file (.csv, .tsv, .json, .jsonl, .parquet)",
        "format": "unknown data format '{suffix}' for {p}; use one of {sorted_formats}",
        "pickle": "{p} is a pickle, and unpickling runs code from the file; if you trust it, set "
                  "data.allow_pickle=true (or pass --allow-pickle)",
    },
    "input": {
        "missing": "input file not found: {p}",
        "folder": "input file not found: {p}",
        "format": "unknown input format '{suffix}'{hint} for {p}; use one of {formats}",
        "pickle": "{p} is a pickle file, and unpickling runs code from it; read it only if you trust it, with "
                  "allow_pickle=True (data.allow_pickle)",
    },
}


def _error(role: str, key: str, p: Path) -> DataError:
    suffix = p.suffix or p.name
    return DataError(_MESSAGES[role][key].format(
        p=p, cwd=Path.cwd(), suffix=suffix, hint=did_you_mean(p.suffix.lower(), READERS),
        formats=", ".join(READERS), sorted_formats=", ".join(sorted(set(READERS)))))


def _read_error(p, kind: str, e: BaseException) -> DataError:
    return DataError(f"cannot read {p} as {kind}: {first_line(e)[:300]}; check that the file is well-formed {kind}")


def check_file(path, role: str = "data", allow_pickle: bool = False, max_file_mb: Optional[float] = None,
               streaming: bool = False, contents: bool = True) -> str:
    """Everything about a file that can be checked before reading it; returns its reader kind.

    max_file_mb=None: no size limit (a stream never loads the whole file). contents=False: only what the path and
    its name tell, not the size (augment checks its input that far before it checks its output's name).
    """
    p = Path(path)
    if not p.exists():
        raise _error(role, "missing", p)
    if p.is_dir():
        raise _error(role, "folder", p)
    kind = READERS.get(p.suffix.lower())
    if streaming and kind not in STREAM_BUILDERS:
        raise DataError(f"data.streaming=true streams .csv .tsv .json .jsonl .parquet files, not '{p.suffix or p.name}' "
                        f"({p}); convert the file, or set data.streaming=false")
    if kind is None:
        raise _error(role, "format", p)
    size_mb = p.stat().st_size / 1e6
    if contents and max_file_mb is not None and size_mb > max_file_mb:
        raise DataError(f"{p} is {size_mb:,.0f} MB, over data.max_file_mb={max_file_mb:g}; raise data.max_file_mb if the file is meant to be this large")
    if contents and p.stat().st_size == 0:
        raise DataError(f"{p} is empty; give a file with a header line and at least one row")
    if kind == "pickle" and not allow_pickle:
        raise _error(role, "pickle", p)
    return kind


def read_table(path: str | Path, allow_pickle: bool = False, max_file_mb: float = 2048.0,
               role: str = "data") -> pd.DataFrame:
    """Read one data file into a DataFrame, with one-line errors for everything a user can get wrong."""
    p = Path(path)
    return _pandas(p, check_file(p, role, allow_pickle, max_file_mb))


def read_split(path, cfg: DataConfig, streaming: bool = False, arrow: bool = True):
    """A split's file as load_splits wants it: a DataFrame, a memory-mapped `datasets.Dataset` when it is at least
    ARROW_MIN_MB (and Arrow reads its kind), or a `datasets.IterableDataset` when streaming."""
    p = Path(path)
    kind = check_file(p, "data", cfg.allow_pickle, None if streaming else cfg.max_file_mb, streaming)
    if streaming:
        return _stream(p, kind)
    if arrow and kind in ARROW_BUILDERS and p.stat().st_size >= ARROW_MIN_MB * 1e6:
        return _arrow(p, kind)
    return _pandas(p, kind)


def read_hub(cfg: DataConfig, streaming: bool = False) -> tuple[dict, Optional[list[str]]]:
    """A hub dataset's splits (DataFrames, or streams that download nothing until read) and the ClassLabel names
    of its label column when it has them."""
    import datasets

    try:
        dd = datasets.load_dataset(cfg.name, streaming=streaming)
    except Exception as e:
        raise DataError(f"cannot load dataset '{cfg.name}' from the Hugging Face hub ({first_line(e)}); "
                        f"check the name and network, or point data.train at a local file") from None
    if "train" not in dd:
        raise DataError(f"dataset '{cfg.name}' has no 'train' split; it has {', '.join(dd)}")
    feat = (dd["train"].features or {}).get(cfg.label_column)
    names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else None
    return (dict(dd) if streaming else {k: v.to_pandas() for k, v in dd.items()}), names


def stream_head(stream, n: Optional[int], where: str, kind: str = "data") -> pd.DataFrame:
    """The first n rows of a stream (None: all) as a DataFrame, with a one-line error when it cannot be read."""
    try:
        return pd.DataFrame(list(stream if n is None else stream.take(n)))
    except DataError:
        raise
    except Exception as e:  # the builders raise pandas', pyarrow's and json's own errors on a damaged file
        cause = e.__cause__ or e
        raise DataError(f"cannot read {where}: {first_line(cause)[:300]}; check that the file is well-formed "
                        f"{kind}") from None


def column(ds, name: str):
    """One column of a Dataset as a pyarrow array (honouring select/filter indices), without a Python object per row.

    Behind a select (a split, a shuffle) the rows are taken from the column in one `take`: reading through the
    indices with `ds[:]` gathers one Arrow chunk per row, about 600 bytes each (110 MB for 180k rows)."""
    one = ds.select_columns([name])
    indices = getattr(one, "_indices", None)  # datasets keeps a select as an indices table; it has no public accessor
    if indices is None:
        return one.with_format("arrow")[:][name]
    return one.data.table.column(name).take(indices.column(0))


# ------------------------------------------------------------------------------------------ the branches


def _pandas(p: Path, kind: str) -> pd.DataFrame:
    if kind == "pickle":
        return _read_pickle(p)
    try:
        if kind in ("csv", "tsv"):
            # low_memory=False: one type per column, inferred from the whole file; in chunks pandas may read the
            # same column as integers in one chunk and text in the next, which labels would take as mixed kinds
            df = pd.read_csv(p, sep="\t" if kind == "tsv" else ",", encoding="utf-8", keep_default_na=False,
                             na_values=[""], low_memory=False)
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
    # pandas' ValueError/ParserError/OSError, pyarrow's own types on damaged parquet and _read_json's DataError
    except Exception as e:
        raise _read_error(p, kind, e) from None
    if not isinstance(df, pd.DataFrame) or len(df.columns) == 0:
        raise DataError(f"{p} holds no table")
    if len(df) == 0:
        raise DataError(f"{p} has a header but no rows; add at least one row under the header")
    df.columns = [str(c) for c in df.columns]
    return df


def _read_json(p: Path) -> pd.DataFrame:
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


def _builder_kwargs(kind: str) -> dict:
    if kind in ("csv", "tsv"):  # the same NaN rules as the pandas reader
        return dict(sep="\t" if kind == "tsv" else ",", keep_default_na=False, na_values=[""])
    return {}


def _quiet_builders() -> None:
    """datasets' file builders log each unreadable file as an error line of their own before raising; loraclf reports
    that failure as its one error line, so theirs would be a second one."""
    logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)


def _arrow(p: Path, kind: str):
    """A large file as a memory-mapped `datasets.Dataset` (converted to Arrow once, cached on disk)."""
    import datasets

    _quiet_builders()
    try:
        ds = datasets.load_dataset(ARROW_BUILDERS[kind], data_files=str(p.resolve()), split="train",
                                   cache_dir=str(sources.cache_root() / "datasets"), **_builder_kwargs(kind))
    except Exception as e:
        raise _read_error(p, kind, e.__cause__ or e) from None
    if len(ds) == 0:
        raise DataError(f"{p} has a header but no rows; add at least one row under the header")
    return ds


def _stream(p: Path, kind: str):
    """A local file as a `datasets.IterableDataset`: one pass reads it from disk, nothing is cached."""
    import datasets

    _quiet_builders()
    try:
        return datasets.load_dataset(STREAM_BUILDERS[kind], data_files=str(p.resolve()), split="train",
                                     streaming=True, **_builder_kwargs(kind))
    except Exception as e:
        raise _read_error(p, kind, e) from None
