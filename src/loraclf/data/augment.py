"""EDA text augmentation (Wei & Zou, 2019) over real WordNet (data/wordnet.py), offline.

Four operations, each driven by a per-word rate in `AugmentConfig`: synonym replacement, random insertion of a
synonym, random swap and random deletion. A text of n words gets max(1, round(p * n)) of an operation whose rate
p is above 0, as in EDA. Unlike EDA's reference code, which lowercases the text and strips its punctuation, the
operations here keep punctuation attached to words and the case of replaced words, and never touch stopwords,
numbers or URLs.
"""

from __future__ import annotations

import io
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .. import runs
from ..config import AugmentConfig, DataConfig
from . import read as data_read
from .wordnet import get_wordnet, stopwords
from ..base.errors import ConfigError, DataError, did_you_mean

# ---------------------------------------------------------------------------------------------- operations

_SPLIT_RE = re.compile(r"(\W*)(.*?)(\W*)", re.S)
_WORD_RE = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")
_SYNONYM_RE = re.compile(r"[a-z]+(?:[ '-][a-z]+)*")
_URL_RE = re.compile(r"(?i)[a-z][a-z0-9+.-]*://|www\.|@")
_MOVABLE_TRAIL = re.compile(r"[.,;:!?)\]}\"'’”…]+")
_MOVABLE_LEAD = re.compile(r"[(\[{\"'‘“]+")
_SENTENCE_END = (".", "!", "?")
_CLOSING_QUOTES = "\"'’”)"


@dataclass
class _Token:
    lead: str
    core: str
    trail: str

    def __str__(self) -> str:
        return self.lead + self.core + self.trail


def _tokenize(text: str) -> list[_Token]:
    return [_Token(*_SPLIT_RE.fullmatch(t).groups()) for t in text.split()]


def _case(word: str) -> str | None:
    if word.islower():
        return "lower"
    if word.isupper():
        return "upper"
    if word[0].isupper() and word[1:].islower():
        return "title"
    return None  # mixed case (iPhone, McDonald): a name


def _match_case(synonym: str, case: str) -> str:
    if case == "upper":
        return synonym.upper()
    if case == "title":
        return synonym[0].upper() + synonym[1:]
    return synonym


def _rate_count(p: float, n_words: int) -> int:
    return max(1, round(p * n_words)) if p > 0 else 0


class Augmenter:
    """Applies the EDA operations of an AugmentConfig to one text at a time."""

    def __init__(self, cfg: AugmentConfig):
        if not any((cfg.synonym_p, cfg.insert_p, cfg.swap_p, cfg.delete_p)):
            raise ConfigError(
                ["augment.synonym_p, insert_p, swap_p and delete_p are all 0, so every copy would equal its original; "
                 "set one above 0 (e.g. augment.synonym_p=0.1)"]
            )
        self.cfg = cfg
        uses_wordnet = cfg.synonym_p > 0 or cfg.insert_p > 0
        # Loaded now so that a missing WordNet is reported before any work starts.
        self._wordnet = get_wordnet() if uses_wordnet else None
        self._stopwords = stopwords() if uses_wordnet else frozenset()
        self._synonym_cache: dict[str, tuple[str, ...]] = {}

    def synonyms(self, word: str) -> tuple[str, ...]:
        """Lowercase WordNet synonyms of word (multi-word ones with spaces), sorted, the word itself left out."""
        key = word.lower().replace("’", "'")
        found = self._synonym_cache.get(key)
        if found is None:
            names = set()
            for synset in self._wordnet.synsets(key):
                for lemma in synset.lemmas():
                    name = lemma.name().replace("_", " ")
                    # Capitalised lemmas are proper nouns (a wrong sense for a common word).
                    if name != key and _SYNONYM_RE.fullmatch(name):
                        names.add(name)
            found = self._synonym_cache[key] = tuple(sorted(names))  # sorted: independent of hash order
        return found

    def augment(self, text: str, rng: random.Random) -> str:
        """Apply each operation whose rate is above 0 once, in the order replace, insert, swap, delete."""
        tokens = _tokenize(text)
        if not tokens:
            return text
        before = [str(t) for t in tokens]
        n_words = len(tokens)
        cfg = self.cfg
        if cfg.synonym_p > 0:
            self._replace(tokens, _rate_count(cfg.synonym_p, n_words), rng)
        if cfg.insert_p > 0:
            self._insert(tokens, _rate_count(cfg.insert_p, n_words), rng)
        if cfg.swap_p > 0:
            self._swap(tokens, _rate_count(cfg.swap_p, n_words), rng)
        if cfg.delete_p > 0:
            self._delete(tokens, _rate_count(cfg.delete_p, n_words), rng)
        after = [str(t) for t in tokens]
        return text if after == before else " ".join(after)

    def _replaceable(self, tokens: list[_Token]) -> dict[str, list[int]]:
        """Lowercased word -> positions where it may be replaced, in order of first appearance."""
        slots: dict[str, list[int]] = {}
        for i, tok in enumerate(tokens):
            word = tok.core
            if len(word) < 2 or not _WORD_RE.fullmatch(word) or _URL_RE.search(str(tok)):
                continue  # numbers, URLs, e-mail addresses, symbols and codes never match
            key = word.lower().replace("’", "'")
            if key in self._stopwords:
                continue
            case = _case(word)
            if case is None:
                continue
            # A capitalised word inside a sentence is most likely a name (Bush, Apple): WordNet would give the
            # synonyms of the common noun.
            if case == "title" and i > 0 and not tokens[i - 1].trail.rstrip(_CLOSING_QUOTES).endswith(_SENTENCE_END):
                continue
            slots.setdefault(key, []).append(i)
        return slots

    def _replace(self, tokens: list[_Token], n: int, rng: random.Random) -> None:
        slots = self._replaceable(tokens)
        words = list(slots)
        rng.shuffle(words)
        done = 0
        for word in words:
            if done >= n:
                break
            choices = self.synonyms(word)
            if not choices:
                continue
            synonym = rng.choice(choices)
            for i in slots[word]:  # every occurrence, as in EDA
                tokens[i].core = _match_case(synonym, _case(tokens[i].core))
            done += 1

    def _insert(self, tokens: list[_Token], n: int, rng: random.Random) -> None:
        words = [w for w in self._replaceable(tokens) if self.synonyms(w)]
        if not words:
            return
        for _ in range(n):
            synonym = rng.choice(self.synonyms(rng.choice(words)))
            tokens.insert(rng.randint(0, len(tokens)), _Token("", synonym, ""))

    @staticmethod
    def _swap(tokens: list[_Token], n: int, rng: random.Random) -> None:
        # Words trade places; their punctuation stays where it was ("rose, analysts" -> "analysts, rose").
        words = [i for i, t in enumerate(tokens) if t.core]
        if len(words) < 2:
            return
        for _ in range(n):
            a, b = rng.sample(words, 2)
            tokens[a].core, tokens[b].core = tokens[b].core, tokens[a].core

    @staticmethod
    def _delete(tokens: list[_Token], n: int, rng: random.Random) -> None:
        # EDA deletes each word with probability p; a fixed count has the same mean and always changes the text.
        for _ in range(min(n, len(tokens) - 1)):
            i = rng.randrange(len(tokens))
            gone = tokens.pop(i)
            # Closing punctuation moves to the word before, opening punctuation to the word after.
            if i > 0 and not tokens[i - 1].trail and _MOVABLE_TRAIL.fullmatch(gone.trail):
                tokens[i - 1].trail = gone.trail
            if i < len(tokens) and not tokens[i].lead and _MOVABLE_LEAD.fullmatch(gone.lead):
                tokens[i].lead = gone.lead


# ---------------------------------------------------------------------------------------------- datasets


def _example_rng(seed: int, copy: int, index: int) -> random.Random:
    # One generator per example: a copy depends only on (seed, copy, index), not on the texts before it.
    # String seeds are hashed with SHA-512, so this does not depend on PYTHONHASHSEED.
    return random.Random(f"{seed}/{copy}/{index}")


def augment_dataset(texts: list[str], labels: list, cfg: AugmentConfig, seed: int) -> tuple[list[str], list]:
    """The originals followed by cfg.num_copies augmented copies of every text; labels are copied unchanged.

    Values of texts that are not strings (None, NaN) are copied as they are. `cfg.enabled` is the caller's switch:
    this function always augments.
    """
    if len(texts) != len(labels):
        raise DataError(f"augment: got {len(texts)} texts but {len(labels)} labels; give one label per text")
    augmenter = Augmenter(cfg)
    out_texts, out_labels = list(texts), list(labels)
    show = len(texts) > 2000 and sys.stderr.isatty()
    with tqdm(total=len(texts) * cfg.num_copies, desc="augment", unit="text", disable=not show) as bar:
        for copy in range(1, cfg.num_copies + 1):
            for i, text in enumerate(texts):
                out_texts.append(augmenter.augment(text, _example_rng(seed, copy, i)) if isinstance(text, str) else text)
                bar.update()
            out_labels.extend(labels)
    return out_texts, out_labels


# ---------------------------------------------------------------------------------------------- files

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet",
            ".pkl": "pickle", ".pickle": "pickle"}  # output formats; inputs are whatever data.read reads


def _format(path: Path, role: str, formats: dict) -> str:
    fmt = formats.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"unknown {role} format '{path.suffix or path.name}'{did_you_mean(path.suffix.lower(), formats)} "
            f"for {path}; use one of {', '.join(formats)}"
        )
    return fmt


def _table_bytes(df, fmt: str) -> bytes:
    if fmt in ("csv", "tsv"):
        return df.to_csv(index=False, sep="\t" if fmt == "tsv" else ",").encode("utf-8")
    if fmt in ("json", "jsonl"):
        return df.to_json(orient="records", lines=fmt == "jsonl", force_ascii=False).encode("utf-8")
    buf = io.BytesIO()
    if fmt == "parquet":
        df.to_parquet(buf, index=False)
    else:
        df.to_pickle(buf)
    return buf.getvalue()


def _check_output(dst: Path, src: Path) -> None:
    """Refuse, before reading, an --output that cannot be written or that is the --input file."""
    runs.check_output_file(dst, "--output")
    if dst.resolve() == src.resolve() or (dst.exists() and dst.samefile(src)):
        raise DataError(f"--output {dst} is the --input file; writing it would overwrite what is read: give another "
                        f"--output path")


def augment_file(input_path, output_path, cfg: AugmentConfig, seed: int, text_column="text", label_column="label",
                 allow_pickle=False, show=5, max_file_mb: float | None = None) -> dict:
    """Read a table, append cfg.num_copies augmented copies of every row, write it in the output's format.

    Every column of a copied row is kept as it is except the text, so labels never change. Returns
    {"rows_in", "rows_out", "label_column", "examples": [(before, after), ...]} with up to `show` examples;
    label_column is None when the file has no such column (its rows are copied all the same). A label column other
    than the default `label` must exist.
    """
    src, dst = Path(input_path), Path(output_path)
    max_file_mb = DataConfig().max_file_mb if max_file_mb is None else max_file_mb
    data_read.check_file(src, "input", allow_pickle, contents=False)
    out_fmt = _format(dst, "output", _FORMATS)  # before reading, which may take a while
    _check_output(dst, src)
    df = data_read.read_table(src, allow_pickle, max_file_mb, role="input")
    columns = ", ".join(map(str, df.columns))
    if text_column not in df.columns:
        raise DataError(f"{src} has no text column '{text_column}'{did_you_mean(text_column, df.columns)}; "
                        f"its columns are: {columns}")
    if label_column not in (None, "label") and label_column not in df.columns:
        raise DataError(f"{src} has no label column '{label_column}'{did_you_mean(label_column, df.columns)}; "
                        f"its columns are: {columns}")
    has_labels = label_column is not None and label_column in df.columns
    texts = df[text_column].tolist()
    labels = df[label_column].tolist() if has_labels else list(range(len(df)))
    out_texts, _ = augment_dataset(texts, labels, cfg, seed)
    copies = []
    for k in range(1, cfg.num_copies + 1):
        copy = df.copy()
        copy[text_column] = out_texts[k * len(df):(k + 1) * len(df)]
        copies.append(copy)
    out = pd.concat([df, *copies], ignore_index=True)
    runs.atomic_write_bytes(dst, _table_bytes(out, out_fmt))
    examples = [(texts[i], out_texts[len(df) + i]) for i in range(min(show, len(df)))]
    return {"rows_in": len(df), "rows_out": len(out), "label_column": label_column if has_labels else None,
            "examples": examples}
