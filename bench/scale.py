"""Benchmark: large training files. Tokenization time, cached re-run time, and training peak RSS at 10k-1M rows.

The rows are SYNTHETIC (files named synthetic_ag_<n>.csv): words drawn from the AG News training texts of the same
label, with AG News' own distribution of words per text, 4 labels. Only their size and shape matter here.

For each size, each step runs in a fresh Python process, with a fresh cache folder (LORACLF_CACHE) per size:

    tokenize (first)   data.load_splits + data.tokenize on the packaged MiniLM tokenizer, cache empty
    tokenize (cached)  the same again in a new process: reads the Arrow caches
    train (cached)     `loraclf train` for --steps steps (packaged MiniLM, batch 8, LoRA defaults), caches warm;
                       peak RSS of that process (os.wait4's ru_maxrss, its workers included)

`--impls new,old` also runs the same steps with data.py as it was at --baseline-rev (pandas in memory,
Python-list lengths) in place of the current one: the baseline, in the same run. Validation is a fixed synthetic
200-row file, so only the training file grows.

Run (from the repository root):
    flock /tmp/loraclf-cpu.lock python bench/scale.py                            # writes bench/results/scale.md
    python bench/scale.py --sizes 2000 --steps 2 --out /tmp/scale.md           # check the script quickly
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common

ROOT = common.ROOT
AG_TRAIN = common.DATA / "ag_news" / "train.csv"
BASELINE_REV = "597484e"  # data.py before the memory-mapped path


def generate(n: int, out: Path, seed: int = 0) -> Path:
    """Write n SYNTHETIC AG-like rows (text,label) to out."""
    import numpy as np
    import pandas as pd

    if out.exists():
        return out
    df = pd.read_csv(AG_TRAIN)
    rng = np.random.default_rng(seed)
    words = [t.split() for t in df["text"]]
    lens = np.array([len(w) for w in words])
    pools = {k: np.array([w for t, lab in zip(words, df["label"]) if lab == k for w in t]) for k in range(4)}
    tmp = out.with_suffix(".part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            for lab, k in zip(rng.integers(0, 4, m), rng.choice(lens, m)):
                w.writerow([" ".join(rng.choice(pools[int(lab)], k)), int(lab)])
    tmp.replace(out)
    return out


# ------------------------------------------------------------------------------------------ child processes


def _use_impl(impl: str, work: Path) -> None:
    """Put the baseline data.py in place of loraclf.data before anything imports it."""
    if impl == "new":
        return
    import importlib.util

    import loraclf

    old = work / f"data_{BASELINE_REV}.py"
    if not old.exists():
        old.write_text(subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE_REV}:src/loraclf/data.py"],
                                      check=True, capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location("loraclf.data", old)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["loraclf.data"] = mod
    spec.loader.exec_module(mod)
    loraclf.data = mod


def child(impl: str, job: str, train: str, val: str, steps: int, work: Path) -> None:
    _use_impl(impl, work)
    overrides = [f"data.train={train}", f"data.validation={val}"]
    if job == "tokenize":
        from loraclf import data
        from loraclf.base import sources
        from loraclf.config import load_config
        from transformers import AutoTokenizer

        cfg = load_config(None, overrides)
        tok = AutoTokenizer.from_pretrained(sources.resolve_model(cfg.model.name_or_path))
        t0 = time.perf_counter()
        splits = data.load_splits(cfg.data, log=lambda m: None)
        t1 = time.perf_counter()
        ds = data.tokenize(splits.train, tok, cfg.data)
        t2 = time.perf_counter()
        print("RESULT " + json.dumps({"load_s": t1 - t0, "tokenize_s": t2 - t1, "rows": len(ds)}))
    else:
        from loraclf.cli import main

        t0 = time.perf_counter()
        rc = main(["train", *overrides, f"train.max_steps={steps}", "train.per_device_train_batch_size=8",
                   "train.mixed_precision=fp32", f"output.dir={work / 'runs'}", f"output.run_name={impl}",
                   "output.overwrite=true", "--quiet"])
        print("RESULT " + json.dumps({"train_s": time.perf_counter() - t0, "rc": rc}))


def run_child(impl: str, job: str, train: Path, val: Path, steps: int, work: Path, cache: Path) -> dict:
    env = {"LORACLF_CACHE": str(cache), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "_child", impl, job, str(train), str(val), str(steps), str(work)]
    p = common.run_child(cmd, env=env, cwd=ROOT, stderr="stdout")
    out = p.stdout
    if p.returncode != 0 or "RESULT " not in out:
        raise SystemExit(f"{impl} {job} on {train.name} failed (rc {p.returncode}):\n{out[-3000:]}")
    res = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    # peak RSS: os.wait4's ru_maxrss, its workers included
    res.update(wall_s=p.wall_s, peak_rss_mb=p.peak_rss_mb, other_cpu_s=round(p.other_cpu_s, 1))
    return res


# ------------------------------------------------------------------------------------------ report


def size_name(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def render(results: list[dict], args, commands: str) -> str:
    cells = [r[k] for r in results for k in ("tok_first", "tok_cached", "train")]
    lines = [
        "# Large training files: tokenization cache and training peak memory",
        "",
        *common.machine_lines([common.Load(c["other_cpu_s"], c["wall_s"]) for c in cells if "other_cpu_s" in c],
                              what="cell"),
        "",
        f"Command: `{commands}`",
        "",
        "Data: SYNTHETIC AG-like rows (`synthetic_ag_<n>.csv`: AG News words of the same label, AG News' words-per-text "
        "distribution, 4 labels); validation a fixed synthetic 200-row file. Model and tokenizer: packaged MiniLM-L6. "
        f"Training: {args.steps} steps, batch 8, fp32, LoRA defaults. Each cell is one fresh process.",
        "",
        "`new` is the current data path (files >= 16 MB read as memory-mapped Arrow through `datasets`, cleaned in "
        "cached batched maps; lengths as a numpy array); `old` is data.py at " + BASELINE_REV + " (pandas in memory).",
        "",
        *common.md_table(["data path", "rows", "file MB", "load, first (s)", "tokenize, first (s)", "load, cached (s)",
                          "tokenize, cached (s)", "cached speed-up: tokenize / load+tokenize",
                          "tokenize peak RSS (MB)", "train peak RSS (MB)", "train RSS vs smallest"], align="l" + "r" * 10),
    ]
    for impl in dict.fromkeys(r["impl"] for r in results):
        rows = [r for r in results if r["impl"] == impl]
        base = rows[0]["train"]["peak_rss_mb"]
        for r in rows:
            first = r["tok_first"]["load_s"] + r["tok_first"]["tokenize_s"]
            cached = r["tok_cached"]["load_s"] + r["tok_cached"]["tokenize_s"]
            lines.append(
                f"| {impl} | {r['rows']:,} | {r['file_mb']:.0f} | {r['tok_first']['load_s']:.1f} | "
                f"{r['tok_first']['tokenize_s']:.1f} | {r['tok_cached']['load_s']:.2f} | {r['tok_cached']['tokenize_s']:.2f} | "
                f"{r['tok_first']['tokenize_s'] / r['tok_cached']['tokenize_s']:.0f}x / {first / cached:.0f}x | "
                f"{r['tok_first']['peak_rss_mb']:,.0f} | {r['train']['peak_rss_mb']:,.0f} | "
                f"{r['train']['peak_rss_mb'] / base:.2f}x |")
    if args.note:
        lines += ["", args.note]
    lines += ["", "Raw results (JSON):", "", "```", json.dumps(results, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _, _, impl, job, train, val, steps, work = sys.argv
        return child(impl, job, train, val, int(steps), Path(work))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--impls", default="new,old")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--work", default="/tmp/loraclf-scale")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.md"))
    ap.add_argument("--json", default=None, help="append results here and render the table from all of them")
    ap.add_argument("--render", default=None, help="only write the table, from these comma-separated results files")
    ap.add_argument("--note", default="", help="Markdown appended under the table (how the run went)")
    args = ap.parse_args()
    if args.render:
        merged = {}
        for f in args.render.split(","):
            for r in json.loads(Path(f).read_text()):
                merged[(r["impl"], r["rows"])] = r
        results = sorted(merged.values(), key=lambda r: (r["impl"] != "new", r["rows"]))
        cmd = f"python bench/scale.py --render {args.render} --note <the notes below> --out {args.out}"
        common.write_text(Path(args.out), render(results, args, cmd))
        return print(f"wrote {args.out}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    val = generate(200, work / "synthetic_ag_val_200.csv", seed=1)
    store = Path(args.json) if args.json else work / "results.json"
    results = json.loads(store.read_text()) if args.json and store.exists() else []
    for n in (int(s) for s in args.sizes.split(",")):
        train = generate(n, work / f"synthetic_ag_{size_name(n)}.csv")
        for impl in args.impls.split(","):
            cache = work / "cache" / f"{impl}-{size_name(n)}"
            shutil.rmtree(cache, ignore_errors=True)
            r = {"impl": impl, "rows": n, "file_mb": train.stat().st_size / 1e6}
            r["tok_first"] = run_child(impl, "tokenize", train, val, args.steps, work, cache)
            r["tok_cached"] = run_child(impl, "tokenize", train, val, args.steps, work, cache)
            r["train"] = run_child(impl, "train", train, val, args.steps, work, cache)
            print(json.dumps(r), flush=True)
            results = [x for x in results if not (x["impl"] == impl and x["rows"] == n)] + [r]
            store.write_text(json.dumps(results, indent=1))
            results.sort(key=lambda r: (r["impl"] != "new", r["rows"]))
            cmd = common.command("scale.py")
            common.write_text(Path(args.out), render(results, args, cmd.strip()))  # after every cell: a cut-off run still reports
            print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
