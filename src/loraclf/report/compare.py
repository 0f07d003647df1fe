"""The comparison of several runs, read only from run-folder files.

    compare_runs([RUN, ...], DIR) -> DIR/{curves.png, compare.md, compare.csv}

The runs must share one problem type (their metrics are not comparable across types); the metric columns and the
curve panels are that type's (problem.SCALARS, main metric first).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .. import task as problem, runs
from ..base.errors import RunError
from .figures import png_bytes, pyplot
from .files import RunFiles, load_run, metric_name

# one colour per run (matplotlib's tab10, cycled)
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
RUN_FACTS = ("best_step", "trainable_params", "train_runtime_s")


def _split_metric(split: str, key: str):
    return lambda m: (m.get(split) or {}).get(key)


def _fact(key: str):
    return lambda m: m.get(key)


def compare_columns(problem_type: str) -> list[tuple]:
    """(column, getter) pairs: the type's validation scalars (without NLL, which is single-label's loss), its two
    main test metrics, then the run facts."""
    scalars = [k for k in problem.SCALARS[problem_type] if k != "nll"]
    return ([(f"val_{k}", _split_metric("val", k)) for k in scalars]
            + [(f"test_{k}", _split_metric("test", k)) for k in scalars[:2]]
            + [(k, _fact(k)) for k in RUN_FACTS])


MISSING = "(unset)"  # a key one run's config has and another's lacks


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def run_labels(paths: list[Path]) -> list[str]:
    """Run folder names; parent/name where two names clash."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def differing_keys(configs: list[dict]) -> dict[str, list]:
    """Flattened config keys whose values are not all equal, in config order, with each run's value."""
    flats = [_flat(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return {k: [f.get(k, MISSING) for f in flats] for k in keys
            if len({repr(f.get(k, MISSING)) for f in flats}) > 1}


def _shared_legend(fig, axes) -> None:
    """One legend below the panels, each run named once."""
    handles, names = [], []
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), fontsize=9, frameon=False)


def plot_compare(rfs: list[RunFiles], labels: list[str]):
    """Four panels (train loss, val loss, the type's two main val metrics), one line per run in each. Returns the
    figure."""
    fig, axes = pyplot().subplots(2, 2, figsize=(12, 8), sharex=True, layout="constrained")
    main, second = problem.SCALARS[rfs[0].problem_type][:2] if rfs else problem.SCALARS[problem.SINGLE][:2]
    panels = [(axes[0, 0], "training loss", "train", "loss"), (axes[0, 1], "validation loss", "eval", "loss"),
              (axes[1, 0], f"validation {metric_name(main)}", "eval", main),
              (axes[1, 1], f"validation {metric_name(second)}", "eval", second)]
    for i, (rf, label) in enumerate(zip(rfs, labels)):
        colour = TAB10[i % len(TAB10)]
        for ax, _, kind, key in panels:
            recs = [r for r in (rf.train if kind == "train" else rf.evals) if isinstance(r.get(key), (int, float))]
            if recs:
                ax.plot([r["step"] for r in recs], [r[key] for r in recs], color=colour, lw=1.6,
                        marker=None if kind == "train" else "o", ms=3.5, label=label)
    for ax, title, _, _ in panels:
        ax.set_title(title, fontsize=11)
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    _shared_legend(fig, [ax for ax, *_ in panels])
    fig.suptitle(f"Comparison of {len(rfs)} run(s)", fontsize=12)
    return fig


def _cell(v) -> str:
    """A config value as the user would write it in an override."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return "null" if v is None else str(v)


def _metric(col: str, v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2f}" if col.endswith("_s") else f"{v:.4f}"
    return str(v)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def compare_csv(rfs: list[RunFiles], labels: list[str], diff: dict[str, list], metrics: list[list]) -> str:
    """One row per run: its label, path, the differing config values, then the final metrics."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "path", *diff.keys(), *(c for c, _ in compare_columns(rfs[0].problem_type))])
    for i, rf in enumerate(rfs):
        w.writerow([labels[i], str(rf.path), *(_cell(v[i]) for v in diff.values()),
                    *("" if x is None else x for x in metrics[i])])
    return buf.getvalue()


def compare_markdown(rfs: list[RunFiles], labels: list[str], diff: dict[str, list], metrics: list[list]) -> str:
    """The differences (keys x runs), then the metrics (runs x metrics)."""
    md = [f"# Comparison of {len(rfs)} run(s)", "", f"![curves]({runs.CURVES_PNG})", "", "## Config keys that differ", ""]
    if diff:
        md += ["| key | " + " | ".join(_md(x) for x in labels) + " |", "|---|" + "---|" * len(labels)]
        md += [f"| {_md(k)} | " + " | ".join(_md(_cell(x)) for x in vals) + " |" for k, vals in diff.items()]
    else:
        md.append("The resolved configs are identical.")
    columns = compare_columns(rfs[0].problem_type)
    md += ["", f"## Final metrics ({rfs[0].problem_type})", "", "| run | " + " | ".join(c for c, _ in columns) + " |",
           "|---|" + "---:|" * len(columns)]
    md += [f"| {_md(labels[i])} | " + " | ".join(_metric(c, x) for (c, _), x in zip(columns, metrics[i])) + " |"
           for i in range(len(rfs))]
    md += ["", "Runs: " + ", ".join(f"`{rf.path}`" for rf in rfs), ""]
    return "\n".join(md)


def _one_problem_type(rfs: list[RunFiles], labels: list[str]) -> None:
    """Runs of different problem types have no metric in common: refused, naming each run's type."""
    types = list(dict.fromkeys(rf.problem_type for rf in rfs))
    if len(types) > 1:
        shown = ", ".join(f"{label}: {rf.problem_type}" for label, rf in zip(labels, rfs))
        raise RunError(f"compare needs runs of one problem type, got {len(types)} ({shown}); compare the runs of "
                       f"each type separately")


def compare_runs(run_paths: list, output: str | Path) -> Path:
    """Overlay several runs' curves and tabulate their differing config keys and final metrics.

    Writes OUTPUT/curves.png, OUTPUT/compare.md and OUTPUT/compare.csv (one row per run); returns compare.md.
    """
    if not run_paths:
        raise RunError("compare needs at least one run folder")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise RunError(f"--output {output} exists and is not a folder; give a folder to write the comparison into")
    rfs = [load_run(p) for p in run_paths]  # every run is checked before anything is written
    labels = run_labels([rf.path for rf in rfs])
    _one_problem_type(rfs, labels)
    diff = differing_keys([rf.config for rf in rfs])
    metrics = [[get(rf.metrics) for _, get in compare_columns(rfs[0].problem_type)] for rf in rfs]
    png = png_bytes(plot_compare(rfs, labels))
    try:
        output.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_bytes(output / runs.CURVES_PNG, png)
        runs.atomic_write_text(output / runs.COMPARE_CSV, compare_csv(rfs, labels, diff, metrics))
        runs.atomic_write_text(output / runs.COMPARE_MD, compare_markdown(rfs, labels, diff, metrics))
    except OSError as e:
        raise RunError(f"cannot write the comparison into {output}: {e.strerror or e}") from None
    return output / runs.COMPARE_MD
