"""Benchmark: does the GPU default recipe (train.batch_tokens) keep accuracy? (issue 39)

On a CUDA GPU `train.batch_tokens: auto` caps training batches at 16,384 padded tokens (~300 AG News rows) instead of
32 rows, with the learning rate x sqrt(mean rows / 32). Fewer, larger steps are where a GPU gains its speed; this
script measures what they cost in accuracy. Accuracy does not depend on the device, so it runs on a CPU too (hours of
CPU time on a GPU's minutes of work): the same data as bench/gpu.py's minilm suite (AG News 5,000 / 600 / 2,000,
MiniLM-L6 real weights), loraclf at the frozen reference recipe (bench/train_speed_contenders.py's
LORACLF_AT_REFERENCE: LoRA r 8 on query + value, lr 1e-3, 3 epochs, batch 32) with batch_tokens off (the reference's
batches) and at each --tokens cap. Each arm is one `loraclf train` child process.

Reported per arm: optimizer steps, mean rows per batch (from the run's log), the learning rate used, final val and
test accuracy, the first step (and share of the run's training rows) at which validation accuracy reached the
rows arm's final validation accuracy (bench/train_speed.py's rule: two evaluations in a row, the last counting
alone), evaluated every --eval-every rows of training. Wall times are not reported: on a CPU they say nothing about a GPU.

Run:  python bench/batch_tokens.py [--tokens 16384 8192] [--threads 1]      # bench/results/batch_tokens.md
Needs: the packaged MiniLM and ../shared/data/ag_news.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import common
from train_speed_contenders import AG_LABELS, LORACLF_AT_REFERENCE, MINILM, model_path

RESULTS = common.RESULTS / "batch_tokens.jsonl"
TABLE = common.RESULTS / "batch_tokens.md"
ROWS_BATCH = 32  # the reference's batch (LORACLF_AT_REFERENCE)


def _split(src: Path, dst: Path) -> None:
    import pandas as pd

    dst.parent.mkdir(parents=True, exist_ok=True)
    pd.read_csv(src)[["text", "label"]].to_csv(dst, index=False)


def overrides(args, name: str, tokens: int | None, eval_steps: int) -> list[str]:
    data = args.work / "agnews"
    return [f"model.name_or_path={model_path(MINILM)}", f"data.train={data / 'train.csv'}",
            f"data.validation={data / 'val.csv'}", f"data.test={data / 'test.csv'}", "data.text_column=text",
            "data.label_column=label", f"data.label_names=[{', '.join(AG_LABELS)}]", f"train.seed={args.seed}",
            *LORACLF_AT_REFERENCE, "train.mixed_precision=auto",
            f"train.batch_tokens={tokens if tokens else 'null'}", f"eval.eval_steps={eval_steps}",
            "output.report=false", f"output.dir={args.work / 'runs'}", f"output.run_name={name}",
            "output.overwrite=true", f"train.num_threads={args.threads}"]


def run_arm(args, name: str, tokens: int | None, eval_steps: int) -> dict:
    cmd = [sys.executable, "-m", "loraclf", "train", *overrides(args, name, tokens, eval_steps), "--json"]
    child = common.run_child(cmd, env=common.OFFLINE_ENV, threads=args.threads, timeout=args.timeout)
    row = {"arm": name, "tokens": tokens, "seed": args.seed, "wall_s": child.wall_s, "other_cpu_s": child.other_cpu_s}
    if not child.ok:
        return {**row, "error": child.error()}
    run = Path(json.loads(child.stdout)["run"])
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines() if x.strip()]
    found = re.search(r"([\d.]+) rows a batch on average.*= ([\d.e-]+) \(x sqrt", child.stderr)
    return {**row, "steps": metrics["global_step"], "val": metrics["val"]["accuracy"],
            "test": metrics["test"]["accuracy"],
            "mean_rows": float(found.group(1)) if found else float(ROWS_BATCH),
            "lr": float(found.group(2)) if found else 1e-3,
            "evals": [(h["step"], h["accuracy"]) for h in history if h.get("type") == "eval"]}


def reached(evals: list, target: float) -> int | None:
    """The first evaluation at or above target whose next one is too (the last counts alone)."""
    for i, (step, acc) in enumerate(evals):
        if acc >= target and (i == len(evals) - 1 or evals[i + 1][1] >= target):
            return step
    return None


PADDING_DATA = {"AG News": ("ag_news", "text"), "TREC-6": ("trec", "text")}


def padding_shares(tokens: list[int]) -> list[list]:
    """The share of padded tokens that are padding, over one epoch of each training file (MiniLM's tokenizer,
    max_length 128, seed 42): 32-row batches grouped by length (the reference), 32 random rows, and each token cap.
    It bounds what padding-free attention could save."""
    import numpy as np
    import pandas as pd
    import torch
    from loraclf.data.batches import LengthGroupedSampler
    from loraclf.data.token_batches import TokenBatchSampler
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path(MINILM))
    out = []
    for title, (folder, col) in PADDING_DATA.items():
        texts = pd.read_csv(common.DATA / folder / "train.csv")[col].astype(str).tolist()
        lengths = np.array([len(x) for x in tok(texts, truncation=True, max_length=128)["input_ids"]])

        def share(batches) -> float:
            return 1 - lengths.sum() / sum(len(b) * lengths[b].max() for b in batches)

        def gen():
            g = torch.Generator()
            g.manual_seed(42)
            return g

        grouped = LengthGroupedSampler(lengths, ROWS_BATCH, gen()).order()
        cuts = range(ROWS_BATCH, len(lengths), ROWS_BATCH)
        row = [title, f"{lengths.mean():.1f}", f"{share(np.array_split(grouped, cuts)):.1%}",
               f"{share(np.array_split(torch.randperm(len(lengths), generator=gen()).numpy(), cuts)):.1%}"]
        for t in tokens:
            g = gen()
            s = TokenBatchSampler(torch.randperm(len(lengths), generator=g).numpy(), lengths, t, 16 * ROWS_BATCH, g)
            row += [f"{share(s.batches):.1%} ({s.mean_rows:.1f} rows)"]
        out.append(row)
    return out


def _bases(rows: list[dict]) -> dict:
    """Each seed's 32-row arm: every token-capped arm is compared with the rows arm of its own seed."""
    return {r["seed"]: r for r in rows if r["tokens"] is None and "error" not in r}


def _target_lines(rows: list[dict], bases: dict) -> list[str]:
    lines = ["", "Target (issue 39): final test accuracy >= the reference's - 0.3 points (each against the 32-row arm "
                 "of its seed; the mean over seeds where there are several):"]
    for t in sorted({r["tokens"] for r in rows if r["tokens"]}, reverse=True):
        diffs = [100 * (r["test"] - bases[r["seed"]]["test"]) for r in rows
                 if r["tokens"] == t and "error" not in r and r["seed"] in bases]
        if diffs:
            mean = sum(diffs) / len(diffs)
            lines.append(f"- tokens-{t}: {', '.join(f'{d:+.2f}' for d in diffs)} points over {len(diffs)} seed(s), "
                         f"mean {mean:+.2f}: {'PASS' if mean >= -0.3 else 'MISS'}")
    base = next(iter(bases.values()))
    n_test = 2000  # ag_news/test.csv
    se = 100 * (base["test"] * (1 - base["test"]) / n_test) ** 0.5
    lines.append(f"- The standard error of one test accuracy near {100 * base['test']:.1f}% on {n_test:,} rows is "
                 f"{se:.1f} points.")
    return lines


def write_table(rows: list[dict]) -> None:
    bases = _bases(rows)
    lines = ["# The GPU default recipe's accuracy: token-capped batches against the reference's 32-row batches", "",
             f"- Command: `{common.command('batch_tokens.py')}` (with --tokens and --seed as the rows say); raw rows "
             f"in [batch_tokens.jsonl](batch_tokens.jsonl).",
             "- Data: AG News 5,000 train / 600 val / 2,000 test (bench/gpu.py's minilm suite), MiniLM-L6, loraclf at "
             "the reference recipe (LORACLF_AT_REFERENCE) but for train.batch_tokens and train.seed.",
             *common.machine_lines([common.Load(r["other_cpu_s"], r["wall_s"]) for r in rows], "arm", timings=False),
             "- Run on a CPU: accuracy does not depend on the device (bf16 here as on an Ampere+ GPU); no time is "
             "reported, since a CPU's time says nothing about a GPU's.", ""]
    lines += common.md_table(["arm", "seed", "steps", "rows / batch", "learning rate", "val %", "test %",
                              "reached its seed's 32-row val at step (share of training)"], align="lrrrrrrl")
    for r in sorted(rows, key=lambda r: (r["seed"], -(r["tokens"] or 10**9))):
        if "error" in r:
            lines.append(common.md_row([r["arm"], r["seed"], "error: " + r["error"], "", "", "", "", ""]))
            continue
        hit = reached(r["evals"], bases[r["seed"]]["val"]) if r["seed"] in bases else None
        share = f"{hit} ({hit / r['steps']:.0%})" if hit else "never"
        lines.append(common.md_row([r["arm"], r["seed"], r["steps"], f"{r['mean_rows']:.1f}", f"{r['lr']:.3g}",
                                    f"{100 * r['val']:.2f}", f"{100 * r['test']:.2f}", share]))
    if bases:
        lines += _target_lines(rows, bases)
    caps = sorted({r["tokens"] for r in rows if r["tokens"]}, reverse=True)
    lines += ["", "## Padding left by length grouping", "",
              "The share of an epoch's padded tokens that are padding (MiniLM's tokenizer, max_length 128, seed 42; "
              "token caps at most 512 rows a batch): what padding-free attention could save at most.", ""]
    lines += common.md_table(["training file", "mean tokens", "32 rows, grouped", "32 random rows",
                              *[f"{t:,} tokens" for t in caps]], align="lrrr" + "r" * len(caps))
    lines += [common.md_row(r) for r in padding_shares(caps)]
    common.write_text(TABLE, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[16384])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=float, default=7200)
    p.add_argument("--data", type=Path, default=common.DATA / "ag_news")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-batch-tokens"))
    p.add_argument("--report", action="store_true", help="rewrite the table from the jsonl only")
    args = p.parse_args(argv)
    if not args.report:
        for s in ("train", "val", "test"):
            _split(args.data / f"{s}.csv", args.work / "agnews" / f"{s}.csv")
        done = {(r["arm"], r["seed"]) for r in common.read_jsonl(RESULTS)} if RESULTS.exists() else set()
        arms = [("rows-32", None)] + [(f"tokens-{t}", t) for t in args.tokens]
        for name, tokens in arms:
            if (name, args.seed) in done:
                continue
            # evaluations every ~800 training rows in every arm: 25 steps of 32 rows, or as many token batches
            eval_steps = 25 if tokens is None else max(1, round(25 * ROWS_BATCH / (tokens / 52)))
            row = run_arm(args, name, tokens, eval_steps)
            common.append_jsonl(RESULTS, row)
            print(json.dumps({k: row.get(k) for k in ("arm", "steps", "val", "test", "error")}), flush=True)
    write_table(common.read_jsonl(RESULTS))
    print(TABLE.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
