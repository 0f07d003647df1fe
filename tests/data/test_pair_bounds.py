"""Long sentence pairs (issue 42): the fast tokenizers build the product of both sides' overflow windows when a
pair is truncated, so two 20k-character texts cost seconds and hundreds of MB for one kept row. windows.encode
cuts each side before the pair is tokenized; the rows it keeps must not change."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from conftest import SHARED, need
from loraclf.config import DataConfig
from loraclf.data import windows

WORDS = "market shares profit league coach minister election software chip research unaffable".split()


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


def _long_texts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def _uncut(tokenizer, texts, pairs, data: DataConfig) -> list[list[int]]:
    return tokenizer(texts, pairs, truncation=data.truncation, max_length=data.max_length)["input_ids"]


@pytest.mark.parametrize("truncation", ["longest_first", "only_second"])
def test_cutting_long_sides_keeps_the_rows_truncation_keeps(tokenizer, truncation):
    short = ["a short first side"] * 4
    long_first, long_second = _long_texts(4, 2000, 1), _long_texts(4, 2500, 2)
    data = DataConfig(max_length=64, truncation=truncation)
    for texts, pairs in ((long_first, long_second), (short, long_second)):
        if truncation == "only_second" and texts is long_first:
            continue  # only_second cannot fit a long first side: refused elsewhere, not the point here
        got = windows.encode(tokenizer, texts, pairs, data)["input_ids"]
        assert got == _uncut(tokenizer, texts, pairs, data)
        assert all(len(row) == 64 for row in got)


def test_real_pairs_encode_as_before(tokenizer):
    rows = pd.read_csv(need(SHARED / "data" / "ag_pairs", "ag_pairs data") / "val.csv").head(300)
    texts, pairs = rows["title"].astype(str).tolist(), rows["description"].astype(str).tolist()
    # the descriptions repeated to many times the cut length: real words, long sides
    long_pairs = [(p + " ") * 40 for p in pairs[:40]]
    data = DataConfig(max_length=128)
    assert windows.encode(tokenizer, texts, pairs, data)["input_ids"] == _uncut(tokenizer, texts, pairs, data)
    assert (windows.encode(tokenizer, texts[:40], long_pairs, data)["input_ids"]
            == _uncut(tokenizer, texts[:40], long_pairs, data))


def _peak_mb(minilm_path, how: str) -> float:
    """Peak RSS (MB) of a fresh process that encodes 8 pairs of ~20k characters each: how = none (load only), cut
    (windows.encode) or uncut (the tokenizer on the whole pairs)."""
    code = textwrap.dedent(f"""
        import random
        from transformers import AutoTokenizer
        from loraclf.config import DataConfig
        from loraclf.data import windows
        tok = AutoTokenizer.from_pretrained({str(minilm_path)!r})
        rng = random.Random(0)
        words = {WORDS!r}
        texts = [" ".join(rng.choice(words) for _ in range(3500)) for _ in range(8)]
        tok(["warm up"], ["warm up"], truncation=True, max_length=128)
        if {how!r} == "cut":
            assert len(windows.encode(tok, texts, texts, DataConfig(max_length=128))["input_ids"]) == 8
        elif {how!r} == "uncut":
            tok(texts, texts, truncation=True, max_length=128)
        # VmHWM belongs to this process's own address space; ru_maxrss is carried over exec from the forking
        # parent, so a large pytest process would lift all three figures alike
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
        print(int(hwm.split()[1]) / 1024)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return float(r.stdout.strip().splitlines()[-1])


def test_the_cut_bounds_memory_on_long_pairs(minilm_path):
    """Uncut, the overflow product takes ~1.6 GB above a process that only loaded the tokenizer; cut, a few MB.
    The uncut process is the planted case that shows the measure can fail."""
    base, cut, uncut = (_peak_mb(minilm_path, how) for how in ("none", "cut", "uncut"))
    assert uncut - base > 500, (base, cut, uncut)
    assert cut - base < 100, (base, cut, uncut)
