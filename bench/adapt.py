"""Benchmark: self-training on a shifted, unlabeled target domain (AG News full texts -> headlines alone).

Labelled source: ../shared/data/ag_news/train.csv and val.csv, `text` (title + description).
Unlabeled target: the `title` column of test.csv alone; its labels are hidden from training and used only to score
(data.target_eval, which never selects anything). Arms, per seed, from one `adapt.rounds=3` run:
    no adaptation   = round 0 (the teacher, trained on the labelled data only)
    self-training 1 = round 1 (the student of a 1-round run: identical computation, same seed and teacher)
    self-training 3 = round 3
Every training (teacher and students) runs the same number of optimizer steps; students start from the base model.

Run (from the repository root):
    flock /tmp/loraclf-cpu.lock python bench/adapt.py            # writes bench/results/adapt.md
    python bench/adapt.py --model TINY_FOLDER --steps 4 --eval-steps 2 --seeds 2 --out /tmp/a.md  # check the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import common

AG = common.DATA / "ag_news"
ARMS = (("no adaptation (teacher)", 0), ("self-training, 1 round", 1), ("self-training, 3 rounds", 3))


def overrides(args, seed: int, out_dir: Path) -> list[str]:
    test = AG / "test.csv"
    return [
        f"model.name_or_path={args.model}",
        f"data.train={AG / 'train.csv'}", f"data.validation={AG / 'val.csv'}",
        "data.text_column=text", "data.label_names=[World, Sports, Business, Sci/Tech]",
        f"data.unlabeled={test}", f"data.target_eval={test}", "adapt.target_text_column=title",
        f"data.max_length={args.max_length}",
        f"adapt.rounds={max(r for _, r in ARMS)}", f"adapt.threshold={args.threshold}",
        f"adapt.top_fraction_per_class={args.top_fraction}", f"adapt.weighting={args.weighting}",
        f"train.max_steps={args.steps}", f"eval.eval_steps={args.eval_steps}",
        f"train.per_device_train_batch_size={args.batch_size}", f"train.learning_rate={args.lr}",
        f"train.seed={seed}", f"train.mixed_precision={args.precision}", "train.logging_steps=50",
        "output.report=false", f"output.dir={out_dir}", f"output.run_name=seed-{seed}", "output.overwrite=true",
    ]


def mean_sd(xs: list[float]) -> str:
    m = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * m:.2f} ± {100 * sd:.2f}"


def write_table(args, per_seed: list, started: float, final: bool) -> None:
    total = time.time() - started
    lines = [
        "# Self-training on an unlabeled, shifted target domain",
        "",
        *common.machine_lines([common.Load(s["other_cpu_s"], s["wall_s"]) for s in per_seed], what="seed",
                              timings=False),
        f"- Total wall time {total / 60:.1f} min.",
        "",
        f"Command: `{common.command('adapt.py')}`",
        "",
        "Source (labelled): AG News `train.csv` (5,000) and `val.csv` (600), full `text` (title + description). "
        "Target (unlabeled): the `title` column of `test.csv` alone (2,000 headlines); its labels are used only to "
        "score (`data.target_eval`), never for training or model selection.",
        "",
        f"Recipe: {args.model}, LoRA r=8 on query/value + full head, {args.steps} optimizer steps per training "
        f"(batch {args.batch_size}, lr {args.lr:g}, max_length {args.max_length}, precision {args.precision}), "
        f"best checkpoint of each training by labelled val accuracy (evaluated every {args.eval_steps} steps). "
        f"Pseudo-labels: confidence >= {args.threshold:g}, then at most {args.top_fraction:g} x N/K per predicted "
        f"class (class balance), weighting `{args.weighting}`; every student is trained from the base model on "
        f"labelled + pseudo-labelled rows. One `adapt.rounds=3` run per seed gives all three arms (round 0 = no "
        f"adaptation, round 1 = a 1-round run, which is the same computation, round 3).",
        "",
        f"## Accuracy, mean ± sample standard deviation over {len(per_seed)} seed(s) (points)"
        + ("" if len(per_seed) == args.seeds else f" (PARTIAL: {len(per_seed)} of {args.seeds} seeds finished)"),
        "",
        "| arm | target: test titles | Δ target vs no adaptation | in-domain: val | Δ val vs no adaptation |",
        "| --- | --- | --- | --- | --- |",
    ]
    tgt = {r: [s["rounds"][r]["target"]["accuracy"] for s in per_seed] for _, r in ARMS}
    val = {r: [s["rounds"][r]["val"]["accuracy"] for s in per_seed] for _, r in ARMS}
    for name, r in ARMS:
        dt = [a - b for a, b in zip(tgt[r], tgt[0])]
        dv = [a - b for a, b in zip(val[r], val[0])]
        lines.append(f"| {name} | {mean_sd(tgt[r])} | {'—' if r == 0 else mean_sd(dt)} | {mean_sd(val[r])} | "
                     f"{'—' if r == 0 else mean_sd(dv)} |")
    lines += ["", "Δ is paired per seed (same teacher) before averaging. Ratio of target accuracy, 3 rounds / no "
              f"adaptation: {statistics.mean(tgt[3]) / statistics.mean(tgt[0]):.4f}; 1 round / no adaptation: "
              f"{statistics.mean(tgt[1]) / statistics.mean(tgt[0]):.4f}.", "",
              "## Per seed", "",
              "| seed | target acc. rounds 0/1/2/3 | val acc. rounds 0/1/2/3 | pseudo-labels kept by rounds 0/1/2 | "
              "their accuracy (hidden labels) | agreement with previous round (kept in both) | wall |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in per_seed:
        q = s["quality"]
        agree = [f"{x['agreement']['kept']:.3f}" if x["agreement"] and x["agreement"]["kept"] is not None else "—" for x in q[1:]]
        target_accs = " / ".join(f"{100 * r['target']['accuracy']:.2f}" for r in s["rounds"])
        val_accs = " / ".join(f"{100 * r['val']['accuracy']:.2f}" for r in s["rounds"])
        kept = " / ".join(str(x["kept"]) for x in q)
        kept_acc = " / ".join("—" if x["kept_accuracy"] is None else f"{100 * x['kept_accuracy']:.1f}" for x in q)
        lines.append(f"| {s['seed']} | {target_accs} | {val_accs} | {kept} | {kept_acc} | {' / '.join(agree) or '—'} | "
                     f"{s['wall_s'] / 60:.1f} min |")
    lines += ["", "Kept pseudo-labels per class (World / Sports / Business / Sci/Tech), round 0 of each seed: "
              + "; ".join(f"seed {s['seed']}: " + " / ".join(str(v) for v in s["quality"][0]["kept_per_class"].values())
                          for s in per_seed if s["quality"]), ""]
    common.write_text(args.out, "\n".join(lines) + "\n")
    (args.work / "bench.json").write_text(json.dumps(per_seed, indent=1, default=str))
    if final:
        print("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of every training (teacher and students)")
    p.add_argument("--eval-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--top-fraction", type=float, default=1.0)
    p.add_argument("--weighting", default="none")
    p.add_argument("--precision", default="auto")
    p.add_argument("--model", default="packaged:minilm-l6", help="another model folder, only to check this script")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-adapt"))
    p.add_argument("--out", type=Path, default=common.RESULTS / "adapt.md")
    args = p.parse_args()
    if not AG.is_dir():
        sys.exit(f"AG News not found at {AG} (../shared beside the checkout)")

    import pandas as pd

    from loraclf.training.self_train import self_train
    from loraclf.config import load_config
    truth = pd.read_csv(AG / "test.csv")["label"].to_numpy()
    started = time.time()
    per_seed = []
    for seed in range(args.seeds):
        meter = common.LoadMeter()
        cfg = load_config(None, overrides(args, seed, args.work))
        result = self_train(cfg, quiet=True)
        rounds = result.rounds
        # pseudo-label quality, scored against the hidden labels (the training never sees them)
        quality = []
        for r in range(len(rounds) - 1):
            pl = pd.read_csv(result.run_dir / "rounds" / f"round-{r}" / "pseudo_labels.csv")
            kept = pl["kept"].to_numpy()
            quality.append({"kept": int(kept.sum()),
                            "kept_accuracy": float((pl["label_id"].to_numpy()[kept] == truth[kept]).mean()) if kept.any() else None,
                            "kept_per_class": rounds[r]["pseudo_labels"]["kept_per_class"],
                            "agreement": rounds[r + 1]["pseudo_labels"]["agreement_with_previous"]})
        load = meter.read()
        per_seed.append({"seed": seed, "rounds": rounds, "quality": quality, "wall_s": round(load.wall_s, 1),
                         "other_cpu_s": round(load.other_cpu_s, 1)})
        print(json.dumps({"seed": seed, "target": [r["target"]["accuracy"] for r in rounds],
                          "val": [r["val"]["accuracy"] for r in rounds], "wall_s": per_seed[-1]["wall_s"]}), flush=True)
        write_table(args, per_seed, started, final=seed == args.seeds - 1)  # partial tables survive an interruption
    return 0


if __name__ == "__main__":
    sys.exit(main())
