"""--write-clean FILE: the training file again, without the rows the audit flagged, or with the suggested labels
(--relabel). The original file is never written; FILE may not be any of the config's data files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .. import runs
from ..base.errors import ConfigError, DataError
from ..config import Config
from ..data import clean as clean_mod
from ..data import read_table
from ..task import MULTI

WRITERS = {".csv": lambda df, f: df.to_csv(f, index=False), ".tsv": lambda df, f: df.to_csv(f, index=False, sep="\t"),
           ".jsonl": lambda df, f: df.to_json(f, orient="records", lines=True, force_ascii=False),
           ".parquet": lambda df, f: df.to_parquet(f, index=False)}


def check_target(cfg: Config, path: Path, relabel: bool) -> None:
    """Refuse, before any work, a --write-clean that would overwrite an input or cannot be written."""
    if not cfg.data.train:
        raise ConfigError(["--write-clean rewrites the training file, but the data comes from "
                           f"data.name={cfg.data.name}; set data.train to a file"])
    inputs = [Path(p).resolve() for p in (cfg.data.train, cfg.data.validation, cfg.data.test) if p]
    if path.resolve() in inputs:
        raise ConfigError([f"--write-clean {path} is one of the config's data files; the original is never "
                           f"touched: give another path"])
    if path.suffix.lower() not in WRITERS:
        raise ConfigError([f"--write-clean {path}: unknown format {path.suffix or '(none)'!r}; use one of "
                           f"{', '.join(WRITERS)}"])
    if relabel and cfg.model.problem_type == MULTI:
        raise ConfigError(["--relabel applies to single-label data; for multi-label data drop the flagged rows "
                           "(leave --relabel out)"])
    runs.check_output_file(path, "--write-clean")


def _file_rows(cfg: Config, raw: pd.DataFrame, n_train: int) -> np.ndarray:
    """The file row of each audited training row: the rows the cleaner keeps, in order."""
    d = cfg.data
    label_col = d.label_column if clean_mod.drops_empty_labels(d, cfg.model.problem_type) else None
    texts, pairs = clean_mod.text_columns(d), clean_mod.pair_columns(d)
    cols = list(dict.fromkeys(texts + pairs + ([label_col] if label_col else [])))
    kept = clean_mod.clean_batch({c: raw[c].tolist() for c in cols}, texts, label_col, d.max_text_chars,
                                 tuple(pairs), str(d.train))["keep"]
    rows = np.flatnonzero(kept)
    if len(rows) != n_train:
        raise DataError(f"cannot match the {n_train} audited rows to the {len(rows)} usable rows of {d.train}; "
                        f"--write-clean needs the training file as the audit read it")
    return rows


def write_clean(cfg: Config, path: Path, n_train: int, drop: set[int], relabel: dict[int, object]) -> dict:
    """Write the cleaned file: audited rows in drop left out, relabel {row: label value} applied. Returns counts."""
    raw = read_table(cfg.data.train, allow_pickle=cfg.data.allow_pickle)
    rows = _file_rows(cfg, raw, n_train)
    out = raw.copy()
    for i, value in relabel.items():
        out.loc[out.index[rows[i]], cfg.data.label_column] = value
    out = out.drop(index=out.index[rows[sorted(drop)]]) if drop else out
    buf = io.BytesIO()
    text = io.StringIO()
    if path.suffix.lower() == ".parquet":
        WRITERS[".parquet"](out, buf)
    else:
        WRITERS[path.suffix.lower()](out, text)
        buf.write(text.getvalue().encode("utf-8"))
    runs.atomic_write_bytes(path, buf.getvalue())
    return {"path": str(path), "rows_in": len(raw), "rows_out": len(out), "dropped": len(drop),
            "relabelled": len(relabel)}
