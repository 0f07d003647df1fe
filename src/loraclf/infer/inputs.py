"""The one path from what a caller gives to the texts a model reads: a file (predict, evaluate), a DataFrame or a
list of strings (the Python API) and an HTTP request body (serve) all become (texts, second texts) here, checked
against what the model reads (single texts or sentence pairs), with each text cut at data.max_text_chars."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from .. import data as data_mod
from ..base.errors import DataError, did_you_mean
from ..config import DataConfig
from ..data import read_texts

def check_pair_columns(columns, data: DataConfig, where: str) -> None:
    """A pair model's input must hold its text-pair column(s): one line naming the missing one."""
    columns = [str(c) for c in columns]
    missing = [c for c in data_mod.pair_columns(data) if c not in columns]
    if missing:
        raise DataError(f"{where} has no text-pair column '{missing[0]}'{did_you_mean(missing[0], columns)}; columns "
                        f"are: {', '.join(columns)} (this model reads sentence pairs: give each row its second text "
                        f"in '{missing[0]}', the run's data.text_pair_column)")


def _pair_texts(df: pd.DataFrame, data: DataConfig) -> Optional[list[str]]:
    cols = data_mod.pair_columns(data)
    if not cols:
        return None
    joined = data_mod.join_text([df[c].tolist() for c in cols])
    return [("" if t is None else t[: data.max_text_chars]) for t in joined]


def frame_inputs(df: pd.DataFrame, data: DataConfig, where: str) -> tuple[list[str], Optional[list[str]]]:
    """A DataFrame's texts (and second texts, for a pair model) in row order, empty ones kept as ''."""
    check_pair_columns(df.columns, data, where)
    single = dataclasses.replace(data, text_pair_column=None)
    texts = [("" if t is None else t[: data.max_text_chars]) for t in data_mod.select_text(df, single, where)]
    return texts, _pair_texts(df, data)


def read_inputs(path: str | Path, data: DataConfig, allow_pickle: bool,
                named: bool) -> tuple[list[str], Optional[list[str]], Optional[list]]:
    """An input file's texts, second texts (pair models) and IDs (see data.read_texts)."""
    texts, pairs, ids, _ = read_input_frame(path, data, allow_pickle, named)
    return texts, pairs, ids


def read_input_frame(path: str | Path, data: DataConfig, allow_pickle: bool,
                     named: bool) -> tuple[list[str], Optional[list[str]], Optional[list], pd.DataFrame]:
    """read_inputs, plus the file's DataFrame as read (all its columns, row for row)."""
    texts, ids, df = read_texts(path, dataclasses.replace(data, text_pair_column=None), allow_pickle=allow_pickle,
                                named=named)
    check_pair_columns(df.columns, data, str(path))
    return texts, _pair_texts(df, data), ids, df


# ------------------------------------------------------------------------------------------ texts from callers


@dataclass(frozen=True)
class Wording:
    """How a face names the second texts in its errors: the Python API's text_pair, or HTTP's body keys."""

    missing: str  # the model reads pairs and none came
    extra: str  # the model reads single texts and pairs came


ARGUMENTS = Wording("this model reads sentence pairs (data.text_pair_column={column!r}); give text_pair, one second "
                    "text per text",
                    "this model reads single texts (it was trained without data.text_pair_column); drop text_pair")
HTTP_BODY = Wording('model {name} reads sentence pairs: send "text_pair" with "text" (or "text_pairs" with "texts"), '
                    'one second text per text',
                    'model {name} reads single texts (it was trained without data.text_pair_column); drop "text_pair" '
                    '/ "text_pairs"')


def reads_pairs(data: DataConfig) -> bool:
    """Whether a model trained with these data keys reads sentence pairs."""
    return bool(data_mod.pair_columns(data))


def check_pairs(data: DataConfig, texts: list, pairs: Optional[list], wording: Wording = ARGUMENTS,
                name: str = "") -> Optional[list[str]]:
    """pairs as the model needs them: one second text per text for a pair model, None otherwise."""
    if reads_pairs(data) and pairs is None:
        raise DataError(wording.missing.format(column=data.text_pair_column, name=name))
    if not reads_pairs(data) and pairs is not None:
        raise DataError(wording.extra.format(name=name))
    if pairs is None:
        return None
    pairs = list(pairs)
    if len(pairs) != len(texts):
        raise DataError(f"text_pair has {len(pairs)} texts for {len(texts)} texts; give one second text per text")
    if not all(isinstance(t, str) for t in pairs):
        raise DataError("text_pair must hold strings, one second text per text")
    return pairs


def _strings(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (list, tuple, pd.Series, np.ndarray)) and all(isinstance(t, str) for t in texts):
        return list(texts)
    raise DataError(f"texts must be a list of strings, one string or a DataFrame, got {type(texts).__name__}"
                    + (" holding non-strings" if isinstance(texts, (list, tuple)) else ""))


def from_values(texts, text_pair, data: DataConfig,
                as_frame: Callable[[object, str], pd.DataFrame]) -> tuple[list[str], Optional[list[str]]]:
    """The Python API's inputs: a list of strings, one string, or a DataFrame / datasets.Dataset (its text and pair
    columns as the run reads them); text_pair: the second texts of a pair model (a string with one string)."""
    if isinstance(texts, pd.DataFrame) or type(texts).__name__ == "Dataset":
        if text_pair is not None:
            raise DataError("text_pair goes with a list of texts; a DataFrame brings its own pair column "
                            f"(data.text_pair_column={data.text_pair_column!r})")
        return frame_inputs(as_frame(texts, "texts"), data, "the DataFrame")
    items = _strings(texts)
    pairs = [text_pair] if isinstance(texts, str) and isinstance(text_pair, str) else text_pair
    if pairs is not None and not isinstance(pairs, (list, tuple, pd.Series, np.ndarray)):
        raise DataError(f"text_pair must be a list of strings (one string with one text), got "
                        f"{type(text_pair).__name__}")
    return _cut(items, data), _cut(check_pairs(data, items, None if pairs is None else list(pairs)), data)


def from_request(body, data: DataConfig, name: str) -> tuple[list[str], Optional[list[str]]]:
    """An HTTP request body's texts and second texts ({"texts", "text_pairs"} or {"text", "text_pair"})."""
    texts = body.texts if body.texts is not None else [body.text]
    pairs = body.text_pairs if body.texts is not None else (None if body.text_pair is None else [body.text_pair])
    return texts, check_pairs(data, texts, pairs, HTTP_BODY, name)


def _cut(texts: Optional[list[str]], data: DataConfig) -> Optional[list[str]]:
    """Each text cut at data.max_text_chars, as files and DataFrames are."""
    return None if texts is None else [t[: data.max_text_chars] for t in texts]
