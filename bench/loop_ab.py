"""Benchmark: loraclf's training loop on this CPU, this tree against an earlier commit, paired (issue 39's "no CPU
regression": bench/train_speed.py's loop row, loraclf at the reference recipe, must stay within 5%).

Each run is bench/train_speed.py's own child process for the `loraclf-recipe` contender (LORACLF_AT_REFERENCE,
in the reference's precision), once with the working tree and once with --base checked out into a git worktree (its
own src/ and bench/ on PYTHONPATH), alternating A B A B ... so that a drift of the machine hits both alike. Reported:
real (attention-mask) tokens per second of training, evaluation excluded, per run and their medians, and the ratio.
Run it alone: it is a timing benchmark, and its table states the CPU other processes used.

Run:  python bench/loop_ab.py --base 774b507 [--pairs 3] [--suite agnews] [--epochs 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import common

TABLE = common.RESULTS / "loop_ab.md"


def worktree(base: str) -> Path:
    """The base commit checked out beside this checkout, so that its bench finds ../shared/data as this one does."""
    path = common.ROOT.parent / f"loraclf-base-{base}"
    if not path.exists():
        subprocess.run(["git", "-C", str(common.ROOT), "worktree", "add", "--detach", str(path), base], check=True,
                       capture_output=True)
    return path


def one_run(tree: Path, args, tag: str, i: int) -> dict:
    result = args.work / f"{tag}-{i}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(tree / "bench" / "train_speed.py"), "--child", "loraclf-recipe", "--suite", args.suite,
           "--result", str(result), "--model", "packaged:minilm-l6", "--work", str(args.work / tag),
           "--seed", str(args.seed), "--epochs", str(args.epochs), "--threads", str(args.threads),
           "--reference-precision", args.precision]
    env = {**common.OFFLINE_ENV, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree / 'bench'}"}
    job = common.run_child(cmd, env=env, threads=args.threads, timeout=args.timeout)
    if not job.ok or not result.exists():
        return {"tag": tag, "error": job.error()}
    out = json.loads(result.read_text())
    return {"tag": tag, "tokens_s": out["real_tokens"] / out["train_s"], "train_s": out["train_s"],
            "val": out["val"], "other_cpu_s": job.other_cpu_s, "wall_s": job.wall_s}


def write_table(args, runs: list[dict]) -> None:
    ok = [r for r in runs if "error" not in r]
    med = {t: common.median(r["tokens_s"] for r in ok if r["tag"] == t) for t in ("base", "head")}
    lines = [f"# The training loop on this CPU: this tree against {args.base}", "",
             f"- Command: `{common.command('loop_ab.py', args.argv)}`: bench/train_speed.py's `loraclf-recipe` child "
             f"on {args.suite}, {args.epochs} epoch(s), {args.threads} thread(s), {args.precision}, alternating.",
             *common.machine_lines([common.Load(r["other_cpu_s"], r["wall_s"]) for r in ok], "run"), ""]
    lines += common.md_table(["run", "code", "real tokens/s", "train s", "val acc"], align="llrrr")
    for i, r in enumerate(runs):
        code = args.base if r["tag"] == "base" else "this tree"
        if "error" in r:
            lines.append(common.md_row([i + 1, code, "error: " + r["error"], "", ""]))
        else:
            lines.append(common.md_row([i + 1, code, f"{r['tokens_s']:,.0f}", f"{r['train_s']:.1f}",
                                        f"{r['val']:.4f}"]))
    if med["base"] and med["head"]:
        ratio = med["head"] / med["base"]
        lines += ["", f"Medians: {args.base} {med['base']:,.0f} tokens/s, this tree {med['head']:,.0f}: "
                      f"**{ratio:.3f}x**. Target (within 5%): {'PASS' if ratio >= 0.95 else 'MISS'}."]
    common.write_text(args.out, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare with")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--suite", choices=["agnews", "trec6"], default="agnews")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16" if common.bf16_supported() else "fp32")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-loop-ab"))
    p.add_argument("--out", type=Path, default=TABLE)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    trees = {"base": worktree(args.base), "head": common.ROOT}
    runs = []
    for i in range(args.pairs):
        for tag in ("base", "head") if i % 2 == 0 else ("head", "base"):
            runs.append(one_run(trees[tag], args, tag, i))
            print(json.dumps(runs[-1]), flush=True)
    write_table(args, runs)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
