"""Benchmark: what dropout costs one loraclf training step, measured in one process by switching it off and on.

bench/results/train_profile.md ranked aten::bernoulli_ (dropout masks) first, at 31% of one step's self CPU time,
yet the no-dropout lever of bench/train_speed.py (a separate process) ran no faster. This settles it in one
process: loraclf's defaults on MiniLM-L6 (its 32 nn.Dropout modules: embeddings, attention probabilities, both
residual branches per layer, the LoRA inputs of query and value, the classifier), real AG News batches, bf16 autocast
where native, forward + backward + AdamW step. Modes alternate within each round, so a slow drift of the machine
hits them alike: 'stock' (every dropout at its p), 'no dropout' (every nn.Dropout's p set to 0 in place) and
'cheaper masks' (train.fast_dropout: the same p, masks from 16-bit uniforms, four per 64-bit draw,
src/loraclf/training/dropout.py).

Expected before building the cheaper masks: they cut the mask draws (about two thirds of dropout's cost in a
micro-benchmark at these shapes) by about 5x, so a step should run about 1.10x faster than 'stock', short of 'no
dropout'. (A first version of this mode set every p to 0 as 'no dropout' does, and its 1.11x measured nothing of
the masks; the table now is from the corrected mode.)

Expected before measuring: if the profile's 31% were wall time, 'no dropout' would run >= 1.4x; a lever that
made masks cheaper (fewer random bits per element) would be worth building only above about 1.15x.

Run (repository root, otherwise idle machine; about 3 minutes):
    python bench/dropout_cost.py
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import common

DATA = common.DATA / "ag_news"
MODES = ("stock", "no dropout", "cheaper masks")


def build(batch_size: int, n_batches: int):
    import pandas as pd
    import torch

    from loraclf.config import load_config
    from loraclf.training.setup import prepare

    cfg = load_config(None, ["model.name_or_path=packaged:minilm-l6", f"data.train={DATA / 'train.csv'}",
                             f"data.validation={DATA / 'val.csv'}", "data.label_names=[World, Sports, Business, Sci/Tech]"])
    cfg, splits, model, tok, _ = prepare(cfg)
    df = pd.read_csv(DATA / "train.csv").head(batch_size * n_batches)
    df = df.iloc[df["text"].str.len().argsort()]  # length-grouped batches, as loraclf trains (little padding)
    batches = []
    for i in range(0, len(df), batch_size):
        b = tok(df["text"].iloc[i:i + batch_size].tolist(), padding=True, truncation=True,
                max_length=cfg.data.max_length, return_tensors="pt")
        b["labels"] = torch.tensor(df["label"].iloc[i:i + batch_size].to_numpy())
        batches.append(b)
    return model, batches


def measure(model, batches, rounds: int, bf16: bool) -> dict:
    import torch

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    ps = [m.p for m in drops]

    from loraclf.training.speed.dropout import swap_for

    swap = swap_for(model)

    def steps(cheap: bool = False) -> float:
        t = time.perf_counter()
        for b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), \
                    (swap.active() if cheap else contextlib.nullcontext()):
                loss = model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        return (time.perf_counter() - t) / len(batches)

    steps()  # warm-up: kernels picked, buffers allocated
    out = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in MODES:
            for m, p in zip(drops, ps):
                m.p = 0.0 if mode == "no dropout" else p  # 'cheaper masks' keeps every p: only the masks differ
            out[mode].append(steps(cheap=mode == "cheaper masks"))
    return {"per_step": out, "dropouts": len(drops), "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
            "padded": sum(b["attention_mask"].numel() for b in batches)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, default=8, help="batches of 32 per mode and round")
    p.add_argument("--out", type=Path, default=common.RESULTS / "dropout_cost.md")
    args = p.parse_args()
    import torch

    model, batches = build(32, args.batches)
    bf16 = common.bf16_supported()
    meter = common.LoadMeter()
    res = measure(model, batches, args.rounds, bf16)
    load = meter.read()
    med = {m: statistics.median(v) for m, v in res["per_step"].items()}
    lines = ["# What dropout costs a loraclf training step (one process, modes alternating)", "",
             f"- `{common.command('dropout_cost.py')}`.",
             *common.machine_lines([load], what="the timed steps"),
             f"- {torch.get_num_threads()} torch threads, precision {'bf16' if bf16 else 'fp32'}.",
             f"- loraclf defaults on `packaged:minilm-l6` ({res['dropouts']} nn.Dropout modules), the first "
             f"{len(batches) * 32} AG News training texts in {len(batches)} batches of 32 ({res['tokens'] / len(batches) / 32:.0f} real "
             f"tokens per text, {res['padded'] / len(batches) / 32:.0f} with padding: "
             "batched in length order, as loraclf's length-grouped training), forward + backward + AdamW; median over "
             f"{args.rounds} rounds.", "",
             *common.md_table(["mode", "ms per step", "rounds (ms)", "vs stock"])]
    for m in MODES:
        rounds = ", ".join(f"{x * 1000:.0f}" for x in res["per_step"][m])
        lines.append(f"| {m} | {med[m] * 1000:.0f} | {rounds} | {med['stock'] / med[m]:.3f}x |")
    lines += ["", f"Dropout costs {1 - med['no dropout'] / med['stock']:.1%} of a step here (with p = 0 the attention "
              f"keeps SDPA's kernel). The cheaper masks cut {1 - med['cheaper masks'] / med['stock']:.1%}: besides the "
              "masks, their training steps run transformers' eager attention computation instead of SDPA's kernel "
              "with dropout, so they can beat 'no dropout'."]
    common.write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
