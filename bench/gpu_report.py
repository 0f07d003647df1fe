"""bench/gpu.py's table: the header (GPU, driver, torch, CUDA, the machine), one table per suite, and issue 39's
targets computed from the numbers (PASS / MISS on a GPU; on a CPU check, "not measured on a GPU")."""

from __future__ import annotations

import common
from gpu_contenders import LABEL
from train_speed_report import time_to

COLUMNS = ("contender", "step ms", "samples/s", "real tokens/s", "share of the matmul rate", "peak GPU MiB",
           "time to the reference's val acc (s)", "train s", "steps", "val acc", "test acc", "process s",
           "peak RSS MiB")
NOT_MEASURED = "not measured on a GPU"
ROWS_X_EPOCHS = 120_000 * 2  # the throughput suite's projection: full AG News, 2 epochs


def _f(x, spec: str = "{:,.0f}", none: str = "-") -> str:
    return none if x is None else spec.format(x)


def _derive(r: dict, target: float | None, floor: dict, rate: float) -> None:
    r["tta_s"] = time_to(r["evals"], target) if target is not None and r.get("evals") else None
    tps = r.get("tokens_s")
    r["share"] = tps * floor["flops_per_token"] / rate if tps else None


def _row(r: dict, accuracy: bool, projected: bool) -> list:
    if "error" in r:
        return [LABEL[r["contender"]], f"**failed**: {r['error']}"] + [""] * (len(COLUMNS) - 2)
    acc = (lambda x: _f(x, "{:.2%}")) if accuracy else (lambda x: _f(x, "{:.2%}") + " (means nothing)")
    if projected:
        tta = _f(ROWS_X_EPOCHS / r["samples_s"] if r.get("samples_s") else None)
    else:
        tta = _f(r["tta_s"], "{:,.1f}", "not reached")
    return [LABEL[r["contender"]], _f(r.get("step_ms"), "{:,.1f}"), _f(r.get("samples_s")), _f(r.get("tokens_s")),
            _f(r.get("share"), "{:.3%}"), _f(r.get("peak_gpu_mb"), none="n/a (no GPU)"), tta,
            _f(r.get("train_s"), "{:,.1f}"), r.get("steps", "-"), acc(r.get("val")), acc(r.get("test")),
            _f(r.get("process_s"), "{:,.0f}"), _f(r.get("peak_rss_mb"))]


def suite_section(suite, rows: list, floor: dict, head: dict) -> list[str]:
    ref = next((r for r in rows if r["contender"] == "stock" and "error" not in r), None)
    target = ref["val"] if ref else None
    for r in rows:
        if "error" not in r:
            _derive(r, target, floor, head["matmul_rate"])
    projected = suite.max_steps is not None
    columns = list(COLUMNS)
    if projected:
        columns[6] = "120,000 rows x 2 epochs (s, projected from samples/s)"
    lines = [f"## {suite.title}", "",
             f"- Model `{suite.model}`; mean length {floor['length']} tokens; forward + backward "
             f"{floor['flops_per_token'] / 1e6:,.1f} MFLOP per token; the reference trains "
             f"{floor['reference_trainable']:,} parameters (loraclf's defaults are capped there).",
             f"- Share of the matmul rate = real tokens/s x FLOPs per token / {head['matmul_rate'] / 1e12:,.2f} "
             f"TFLOP/s ({head['rate_dtype']} square matmul measured in this run)."]
    if projected:
        lines.append(f"- {suite.max_steps} training steps per contender. **Accuracy means nothing here: the encoder "
                     "has random weights**; this suite measures throughput only.")
    else:
        lines.append(f"- Target of the time-to-accuracy column: the reference's final val accuracy "
                     f"({_f(target, '{:.2%}', 'none: the reference failed')}), reached at an evaluation and held at "
                     "the next (the last evaluation counts alone).")
    return lines + [""] + common.md_table(columns, [_row(r, suite.accuracy_means_something, projected) for r in rows],
                                          align="l" + "r" * (len(columns) - 1)) + [""]


def _get(rows: list, suite: str, name: str) -> dict | None:
    return next((r for r in rows if r["suite"] == suite and r["contender"] == name and "error" not in r), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(rows: list, on_gpu: bool) -> list[str]:
    """Issue 39's targets, each computed from the rows."""
    stock, bare = _get(rows, "minilm", "stock"), _get(rows, "minilm", "bare")
    recipe, defaults = _get(rows, "minilm", "loraclf-recipe"), _get(rows, "minilm", "loraclf")
    scale = _get(rows, "throughput", "loraclf")
    g = lambda r, k: r.get(k) if r else None
    checks = [
        ("loraclf at the reference recipe: samples/s >= 2x the stock Trainer's",
         _ratio(g(recipe, "samples_s"), g(stock, "samples_s")), lambda x: x >= 2.0, "{:.2f}x"),
        ("loraclf at the reference recipe: step time <= 1.3x the bare loop's",
         _ratio(g(recipe, "step_ms"), g(bare, "step_ms")), lambda x: x <= 1.3, "{:.2f}x"),
        ("loraclf's GPU defaults reach the reference's val accuracy in <= 1/5 of the reference's training time",
         _ratio(g(defaults, "tta_s"), g(stock, "train_s")), lambda x: x <= 0.2, "{:.2f} of it"),
        ("loraclf's GPU defaults: test accuracy >= the reference's - 0.3 points",
         None if not (defaults and stock) else (defaults["test"] - stock["test"]) * 100, lambda x: x >= -0.3,
         "{:+.2f} points"),
        ("roberta-base-cost suite: loraclf >= 4,000 samples/s", g(scale, "samples_s"), lambda x: x >= 4000,
         "{:,.0f} samples/s"),
    ]
    lines = ["## Targets (issue 39)", ""]
    for what, value, ok, spec in checks:
        if not on_gpu:
            verdict = f"{NOT_MEASURED} (CPU check: {_f(value, spec, 'no number')})"
        elif value is None:
            verdict = "MISS (no number: a contender failed or never reached the target)"
        else:
            verdict = f"{'PASS' if ok(value) else 'MISS'}: {spec.format(value)}"
        lines.append(f"- {what}: {verdict}")
    return lines + [""]


def write_report(args, suites: dict, rows: list, head: dict) -> None:
    f = head["facts"]
    on_gpu = f["gpu"] is not None
    lines = ["# loraclf on a GPU against the stock Trainer and a bare loop", ""]
    if args.check or not on_gpu:
        lines += [f"**Not results: {NOT_MEASURED}.** This table comes from `--check` or a machine without a GPU "
                  "(tiny models, a few rows, the CPU); it shows that the script runs, nothing about speed.", ""]
    lines += [f"- `{common.command('gpu.py', args.argv)}`; every contender trains in {head['precision']}.",
              f"- GPU: {f['gpu'] or 'none'}; driver {f['driver'] or 'n/a'}; torch {f['torch']}; CUDA {f['cuda']}.",
              *common.machine_lines([head["load"]], what="benchmark"),
              f"- Total wall time {head['wall_s']:,.0f} s, start-up, data, floors and every child process included.",
              "- Steady state: the first "
              f"{args.warmup} steps and every step whose span holds an evaluation are left out; step time is the "
              "host's time from one training forward's start to the next (no synchronisation added).", ""]
    for key, suite in suites.items():
        if key in head["floors"]:
            lines += suite_section(suite, [r for r in rows if r["suite"] == key], head["floors"][key], head)
    lines += targets(rows, on_gpu and not args.check)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    common.write_text(args.out, "\n".join(lines))


def write_profile(args, rows: list, head: dict) -> None:
    """--profile: each contender's top operators (gpu_contenders.profile_table), one loraclf step set beside the
    bare loop's, to show where loraclf's extra time goes."""
    f = head["facts"]
    on_gpu = f["gpu"] is not None
    lines = ["# Where a training step's time goes: torch.profiler, loraclf against the bare loop and the Trainer", ""]
    if args.check or not on_gpu:
        lines += [f"**Not results: {NOT_MEASURED}.** From `--check` or a machine without a GPU (CPU operators only).",
                  ""]
    lines += [f"- `{common.command('gpu.py', args.argv)}`: {args.profile} steps per contender after a warm-up of "
              f"{args.warmup} (and one profiler warm-up step), MiniLM suite, {head['precision']}.",
              f"- GPU: {f['gpu'] or 'none'}; driver {f['driver'] or 'n/a'}; torch {f['torch']}; CUDA {f['cuda']}.",
              *common.machine_lines([head["load"]], what="benchmark"),
              "- Sorted by each operator's own time on the device that ran it (CUDA on a GPU, else CPU); the step "
              "times below include the profiler's own overhead, so compare them only with each other.", ""]
    for r in rows:
        lines += [f"## {LABEL[r['contender']]}", ""]
        if "error" in r:
            lines += [f"failed: {r['error']}", ""]
            continue
        lines += [f"Steady-state step {_f(r.get('step_ms'), '{:,.1f}')} ms under the profiler.", "", "```",
                  r.get("profile", "(no profile)").rstrip(), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    common.write_text(args.out, "\n".join(lines))
