"""Benchmark: how long the host takes to build one training batch, before and after PaddedBatches (issue 39).

On a GPU the batch is built on the CPU while the GPU waits (the loader runs in the main process), so the host's
time per batch bounds the step time from below. Two loaders over the same tokenized rows and the same batches:

- 'row dicts' (loraclf before commit b9b68e9, and a stock Trainer script): a torch DataLoader over the datasets
  table, which builds one Python dict per row, padded by transformers' DataCollatorWithPadding (tokenizer.pad);
- 'PaddedBatches' (loraclf now, data/collate.py): the batch's rows gathered as one Arrow table and each column
  padded with one numpy assignment.

Both pad to a multiple of 8, as on a GPU; the tensors must be identical (checked on every batch). Batches: one epoch
of AG News 5k (bench/gpu.py's minilm suite, MiniLM's tokenizer, max_length 128) as loraclf draws it, at 32 rows
(length-grouped, the CPU default) and capped at 8,192 padded tokens (train.batch_tokens=auto on a CUDA GPU). The two
loaders alternate epoch by epoch, ROUNDS rounds; the table gives the median over every batch of every round.

Expected before measuring (an earlier one-off timing on one loaded thread: 31.7 ms for a 294-row batch through row
dicts): at ~150 rows, row dicts ~15-20 ms and PaddedBatches ~1-2 ms, about 10x; at 32 rows the fixed costs weigh
more, so a smaller ratio, about 3-5x.

Run on an otherwise idle machine, one thread (about 1 minute):
    OMP_NUM_THREADS=1 python bench/collate_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import common

DATA = common.DATA / "ag_news"
ROWS = int(__import__("os").environ.get("COLLATE_ROWS", 5000))
ROUNDS = 3
TOKENS = 8192
OUT = common.RESULTS / "collate_speed.md"


def tokenized():
    import datasets
    import pandas as pd

    from loraclf.base import sources
    from loraclf.config import Config
    from loraclf.data.batches import tokenize
    from loraclf.model.build import load_tokenizer

    cfg = Config()
    df = pd.read_csv(DATA / "train.csv").head(ROWS)[["text", "label"]]
    tok = load_tokenizer(sources.resolve_model("packaged:minilm-l6"), cfg)
    ds = tokenize(datasets.Dataset.from_pandas(df, preserve_index=False), tok, cfg.data, cache=False)
    return ds, tok


def loaders(ds, tok, arm: str, epoch: int) -> dict:
    """The two loaders of one epoch's batches (the same batches for both)."""
    from torch.utils.data import DataLoader

    from loraclf.data.batches import TRAIN_COLUMNS, collator, token_sampler, train_loader

    if arm == "tokens":
        batches = [list(b) for b in token_sampler(ds, 42, epoch, TOKENS, 16 * 32)]
    else:
        batches = [list(b) for b in train_loader(ds, tok, 32, True, 42, epoch).batch_sampler]
    new = train_loader(ds, tok, 32, True, 42, epoch, pad_multiple=8)
    new = type(new)(new.dataset, batch_sampler=batches, collate_fn=new.collate_fn)
    old = DataLoader(ds.select_columns([c for c in TRAIN_COLUMNS if c in ds.column_names]), batch_sampler=batches,
                     collate_fn=collator(tok, 8))
    return {"row dicts": old, "PaddedBatches": new}


def timed_epoch(loader) -> tuple[list[float], list]:
    times, out = [], []
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            return times, out
        times.append(time.perf_counter() - t0)
        out.append(b)


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def measure(ds, tok) -> dict:
    res = {}
    for arm in ("rows-32", "tokens"):
        times = {"row dicts": [], "PaddedBatches": []}
        rows = []
        for r in range(ROUNDS):
            got = {}
            for name, loader in loaders(ds, tok, arm, r).items():
                t, got[name] = timed_epoch(loader)
                times[name] += t
            if not all(same(a, b) for a, b in zip(got["row dicts"], got["PaddedBatches"])):
                raise SystemExit(f"{arm}: the two loaders gave different tensors")
            rows += [len(b["input_ids"]) for b in got["PaddedBatches"]]
        res[arm] = {name: statistics.median(t) * 1000 for name, t in times.items()}
        res[arm]["rows"] = statistics.mean(rows)
        res[arm]["batches"] = len(rows) // ROUNDS
    return res


def report(res: dict, load) -> str:
    lines = ["# Building one training batch on the host: row dicts + DataCollatorWithPadding against PaddedBatches",
             "", f"- Command: `{common.command('collate_speed.py')}`",
             f"- Data: the first {ROWS:,} rows of AG News train, MiniLM's tokenizer, max_length 128, padded to a "
             f"multiple of 8; one epoch per loader per round, {ROUNDS} rounds, the loaders alternating; identical "
             "tensors checked on every batch.",
             *common.machine_lines([load], what="run"), "",
             *common.md_table(["batches", "batches / epoch", "mean rows", "row dicts ms", "PaddedBatches ms",
                               "speed-up"], align="lrrrrr")]
    names = {"rows-32": "32 rows, length-grouped", "tokens": f"at most {TOKENS:,} padded tokens"}
    for arm, r in res.items():
        lines.append(common.md_row([names[arm], r["batches"], f"{r['rows']:.1f}", f"{r['row dicts']:.2f}",
                                    f"{r['PaddedBatches']:.2f}", f"{r['row dicts'] / r['PaddedBatches']:.2f}x"]))
    lines += ["", "Median milliseconds to get one batch from the loader (next(iter)), every batch of every round."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    ds, tok = tokenized()
    meter = common.LoadMeter()
    res = measure(ds, tok)
    text = report(res, meter.read())
    common.write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
