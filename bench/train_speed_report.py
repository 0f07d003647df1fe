"""bench/train_speed.py's report: each suite's table of medians, the levers, and the targets' PASS / MISS, computed
from the rows (never written by hand); the Markdown beside its .jsonl of raw rows.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import time
from typing import Optional

import common
from train_speed_contenders import EVAL_STEPS, LABEL, LEVERS, REFERENCE, Suite, label

TARGETS = {  # the targets, checked from the numbers in write_report
    "tta_fraction": {"agnews": 1 / 3, "trec6": 1 / 2},  # time to accuracy <= this x the reference's training time
    "test_gain": 0.005,  # final test accuracy >= the reference's + 0.5 points, at no more total wall time
    "loop_speedup": 1.3,  # loraclf at the reference recipe: real tokens/s >= 1.3x the reference's
    "large_ratio_tolerance": 0.10,  # --large: each ratio within 10% of MiniLM's on AG News
}


def time_to(evals: list, target: float) -> Optional[float]:
    """Training time at the first evaluation at or above target whose next evaluation is too (the last counts alone)."""
    ok = [e["accuracy"] >= target - 1e-12 for e in evals]
    for i, e in enumerate(evals):
        if ok[i] and (i + 1 == len(evals) or ok[i + 1]):
            return e["train_s"]
    return None


def fmt(x, spec="{:,.0f}", none="not reached"):
    return none if x is None or x == math.inf else spec.format(x)


def _derive(r: dict, target: Optional[float], floor: dict) -> None:
    rates = floor["rates"][r["precision"]]  # None: bf16 without native support, not measured
    r["tta_s"] = time_to(r["evals"], target) if target is not None else None
    r["real_tps"] = r["real_tokens"] / r["train_s"]
    r["padded_tps"] = r["padded_tokens"] / r["train_s"]
    r["padding"] = 1 - r["real_tokens"] / r["padded_tokens"]
    r["achieved"] = r["real_tps"] * floor["flops_per_token"]
    r["of_square"] = r["achieved"] / rates["2048^3"] if rates else None
    r["of_layer"] = r["achieved"] / rates["layer"] if rates else None


def summarize(rows: list, floor: dict, ref: str) -> tuple[Optional[float], dict]:
    """The target (median final val accuracy of the reference) and each contender's medians over its repetitions."""
    good = [r for r in rows if "error" not in r]
    target = common.median([r["val"] for r in good if r["contender"] == ref])
    for r in good:
        _derive(r, target, floor)
    out = {}
    for name in LABEL:
        rs = [r for r in good if r["contender"] == name]
        if not rs:
            continue
        s = {k: common.median([r[k] for r in rs])
             for k in ("train_s", "eval_s", "wall_s", "real_tps", "padded_tps", "padding", "peak_rss_mb", "val", "test",
                       "achieved", "of_square", "of_layer")}
        tta = [math.inf if r["tta_s"] is None else r["tta_s"] for r in rs]  # never counts as never in the median
        s.update(n=len(rs), tta_s=statistics.median(tta), never=sum(t == math.inf for t in tta),
                 trainable=sorted({r["trainable"] for r in rs}), precision=rs[0]["precision"], shape=rs[0]["shape"])
        out[name] = s
    return target, out


def _table(summary: dict, ref_count: int, ref_name: str) -> list[str]:
    ref = summary.get(ref_name)
    lines = common.md_table(["contender", "runs", "trainable", "train s", "eval s", "total wall s", "time to acc. s",
                             "real tok/s", "padding", "peak RSS MB", "val acc", "test acc", "achieved GFLOP/s",
                             "of 2048³ rate", "of layer-shape rate", "train s vs reference"])
    for name, s in summary.items():
        never = f" ({s['never']}/{s['n']} never)" if s["never"] and s["tta_s"] != math.inf else ""
        count = ", ".join(f"{t:,}" + ("" if t <= ref_count else " (**over the cap**)") for t in s["trainable"])
        lines.append(
            f"| {label(name, ref_name)} | {s['n']} | {count} | {s['train_s']:,.0f} | {s['eval_s']:,.0f} | {s['wall_s']:,.0f} | "
            f"{fmt(s['tta_s'])}{never} | {s['real_tps']:,.0f} | {s['padding']:.1%} | {s['peak_rss_mb']:,.0f} | "
            f"{s['val']:.2%} | {s['test']:.2%} | {s['achieved'] / 1e9:.1f} | {fmt(s['of_square'], '{:.1%}', '-')} "
            f"({s['precision']}) | {fmt(s['of_layer'], '{:.1%}', '-')} | "
            f"{fmt(s['train_s'] / ref['train_s'] if ref else None, '{:.2f}x', '-')} |")
    return lines


def suite_section(suite: Suite, rows: list, floor: dict, ref: str) -> tuple[list[str], dict]:
    target, summary = summarize(rows, floor, ref)
    rates = floor["rates"]
    bf16 = rates["bf16"] or {}

    def gflops(r, s):
        return fmt(r[s] / 1e9 if s in r else None, "{:,.0f}", "-")

    shapes = ", ".join(f"{s} {gflops(rates['fp32'], s)} / {gflops(bf16, s)}" for s in rates["fp32"] if s != "layer")
    lines = [
        f"## {suite.title}: `{suite.model}`", "",
        f"- Data: `{suite.folder.relative_to(common.ROOT.parent)}` "
        f"({', '.join(f'{n:,} {k}' for k, n in floor['rows'].items())}), "
        f"label column `{suite.label_column}`, {floor['length']} tokens per training text on average. Evaluation "
        f"every {EVAL_STEPS} optimizer steps for every contender.",
        f"- The reference's LoRA shape (r={REFERENCE['r']}, alpha {REFERENCE['lora_alpha']}, query+value, head in "
        f"full): **{floor['reference_trainable']:,} trainable parameters**, loraclf's cap.",
        f"- Floor, GFLOP/s fp32 / bf16 (measured in this run): {shapes}; a layer's matmuls together (4 of the first "
        f"shape, 1 each of the feed-forward ones) **{gflops(rates['fp32'], 'layer')} / {gflops(bf16, 'layer')}**"
        f"{'' if bf16 else ' (bf16 not measured: no native bf16 on this CPU)'}. Forward + backward of the "
        f"reference model (frozen base) = "
        f"{floor['flops_per_token'] / 1e6:.1f} MFLOP per token at length {floor['length']} (torch FlopCounterMode); "
        f"achieved = real tokens/s x that.",
        f"- Target accuracy: {fmt(target, '{:.2%}', '-')} (median final val accuracy of the reference).", ""]
    lines += _table(summary, floor["reference_trainable"], ref) + lever_table(summary)
    lines += ["", "Per run (train s / eval s / total wall s / time to acc. s / val / test; CPU seconds other processes "
              "used meanwhile):", ""]
    for r in rows:
        if "error" in r:
            lines.append(f"- {label(r['contender'], ref)}, rep {r['rep']}: **failed**: {r['error']}")
        else:
            lines.append(f"- {label(r['contender'], ref)}, rep {r['rep']} ({r['shape']}, {r['threads']} threads): "
                         f"{r['train_s']:,.0f} / {r['eval_s']:,.0f} / {r['wall_s']:,.0f} / {fmt(r['tta_s'])} / "
                         f"{r['val']:.2%} / {r['test']:.2%}; other processes {r['other_cpu_s']:,.1f} CPU s")
    return lines + [""], summary


def _verdict(ok: Optional[bool]) -> str:
    return "n/a (rows missing)" if ok is None else ("**PASS**" if ok else "**MISS**")


def lever_table(summary: dict) -> list[str]:
    """Each loop lever against loraclf at the reference recipe without it: real tokens/s and total wall time."""
    base = summary.get("loraclf-recipe")
    rows = [(n, summary[n]) for n in LEVERS if n in summary]
    if not base or not rows:
        return []
    lines = ["", "Levers, one at a time on loraclf at the reference recipe (kept as a default only where they pay "
             "end to end):", ""] + common.md_table(["lever", "runs", "real tok/s", "vs without", "train s",
                                                    "total wall s", "wall vs without", "val acc", "test acc"])
    for n, s in [("loraclf-recipe", base)] + rows:
        lines.append(f"| {LABEL[n]} | {s['n']} | {s['real_tps']:,.0f} | {s['real_tps'] / base['real_tps']:.3f}x | "
                     f"{s['train_s']:,.0f} | {s['wall_s']:,.0f} | {s['wall_s'] / base['wall_s']:.3f}x | "
                     f"{s['val']:.2%} | {s['test']:.2%} |")
    return lines


def _ratios(s: dict, ref_name: str) -> tuple[Optional[float], Optional[float]]:
    """The two ratios --large is held to: loraclf's loop speed-up at the reference recipe, and loraclf's time to
    accuracy over the reference's training time."""
    ref, rec, lc = s.get(ref_name), s.get("loraclf-recipe"), s.get("loraclf")
    speedup = rec["real_tps"] / ref["real_tps"] if ref and rec else None
    tta = lc["tta_s"] / ref["train_s"] if ref and lc else None
    return speedup, tta


def _suite_targets(key: str, s: dict, ref_name: str) -> list[str]:
    ref, lc, rec = s.get(ref_name), s.get("loraclf"), s.get("loraclf-recipe")
    if not ref:
        return []
    frac, gain, speed = TARGETS["tta_fraction"].get(key, 1 / 3), TARGETS["test_gain"], TARGETS["loop_speedup"]
    out = []
    if lc:
        limit = frac * ref["train_s"]
        out.append(f"| {key} | loraclf defaults' time to {fmt(ref['val'], '{:.2%}')} ≤ {frac:.2g} x the reference's "
                   f"training time ({limit:,.0f} s) | {fmt(lc['tta_s'], '{:,.0f} s')} | "
                   f"{_verdict(lc['tta_s'] <= limit)} |")
        ok = lc["test"] >= ref["test"] + gain and lc["wall_s"] <= ref["wall_s"]
        out.append(f"| {key} | loraclf defaults' test accuracy ≥ the reference's + {gain * 100:.1f} points "
                   f"({ref['test'] + gain:.2%}) at no more total wall time ({ref['wall_s']:,.0f} s) | "
                   f"{lc['test']:.2%} in {lc['wall_s']:,.0f} s | {_verdict(ok)} |")
    if rec:
        ratio = rec["real_tps"] / ref["real_tps"]
        out.append(f"| {key} | loraclf at the reference recipe: real tokens/s ≥ {speed:g}x the reference's "
                   f"({ref['real_tps']:,.0f}) | {rec['real_tps']:,.0f} = {ratio:.3f}x | {_verdict(ratio >= speed)} |")
    return out


def targets_section(summaries: dict, ref: str) -> list[str]:
    lines = ["## Targets (computed from the medians above)", ""] + common.md_table(["run", "target", "measured",
                                                                                   "verdict"])
    for key in ("agnews", "trec6"):
        if key in summaries:
            lines += _suite_targets(key, summaries[key], ref)
    if "large" in summaries:
        tol = TARGETS["large_ratio_tolerance"]
        small = _ratios(summaries["agnews"], ref) if "agnews" in summaries else (None, None)
        for what, big, base in zip(("loop speed-up (real tokens/s, loraclf at the reference recipe / reference)",
                                    "time to accuracy / reference training time (loraclf defaults)"),
                                   _ratios(summaries["large"], ref), small):
            finite = big is not None and base is not None and math.isfinite(big) and math.isfinite(base)
            ok = abs(big / base - 1) <= tol if finite else (None if big is None or base is None else False)
            lines.append(f"| large | {what} within {tol:.0%} of MiniLM's on AG News | "
                         f"{fmt(big, '{:.3f}', '-')} vs {fmt(base, '{:.3f}', '-')} | {_verdict(ok)} |")
    return lines + [""]


def _header(args, rows: list, head: dict, final: bool) -> list[str]:
    good = [r for r in rows if "error" not in r]
    lines = [
        "# Training speed: loraclf against a frozen stock Trainer + PEFT reference", "",
        f"- {'Final' if final else '**Partial** (still running or interrupted)'} results of "
        + ", then ".join(f"`python bench/train_speed.py{' ' + shlex.join(a) if a else ''}`"
                         for a in head.get("commands", [args.argv]))
        + f", {(time.time() - head['started']) / 60:.0f} min.",
        *common.machine_lines([common.Load(r["other_cpu_s"], r["process_s"]) for r in good], what="contender"),
        f"- Threads per contender: {args.threads or 'each its own default'}.",
        "- Reference recipe, frozen in the script: " + ", ".join(f"{k} {v}" for k, v in REFERENCE.items())
        + "; dynamic padding, length-grouped batches. loraclf defaults: its own, with only the data keys and the "
        "reference's trainable-parameter count as `budget.max_trainable_params`.",
        f"- Medians over {args.reps} repetitions ({'--large and ' if args.large else ''}the seed recipe: one run).",
    ]
    if head["reference"] == "stock-fp32":
        lines.append(f"- **The reference is stock fp32**"
                     f"{'' if common.bf16_supported() else ' (no native bf16 on this CPU)'}: "
                     "the issue's reference is stock bf16, but a CPU without AVX512-BF16/AMX emulates bf16 far slower "
                     "than fp32, so the stock recipe a competent user runs here is fp32. Stock bf16 is not run; "
                     "loraclf at the reference recipe runs in fp32 too, and loraclf's defaults (`auto`) pick fp32 here. "
                     "The bf16 reference needs a CPU with native bf16 (`--reference-precision bf16`).")
    return lines + [""]


def write_report(args, suites: dict, rows: list, head: dict, final: bool) -> None:
    lines = _header(args, rows, head, final)
    summaries = {}
    for key, suite in suites.items():
        rs = [r for r in rows if r["suite"] == key]
        if rs and key in head["floors"]:
            section, summaries[key] = suite_section(suite, rs, head["floors"][key], head["reference"])
            lines += section
    lines += targets_section(summaries, head["reference"])
    common.write_text(args.out, "\n".join(lines))
    common.write_text(args.out.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in [head] + rows))

