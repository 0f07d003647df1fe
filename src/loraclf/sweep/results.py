"""What a sweep leaves in its folder, from the study storage alone: the summary CSV, best.yaml and plots.

Trial states in sweep_summary.csv: COMPLETE, PRUNED (stopped early by the pruner), REJECTED (over
budget.max_trainable_params, never trained; an Optuna PRUNED trial with user attr `rejected`), FAIL (crashed or
killed), SKIPPED (started after the study already had n_trials; an Optuna FAIL with user attr `skipped`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import yaml

from .. import runs
from ..config import diff_from_defaults
from .spec import SweepSpec, trial_config

PLOT_DPI = 110
USER_ATTRS = ("trainable_params", "run_dir", "worker")


def test_attr(metric: str) -> str:
    """The user attr (and sweep_summary.csv column) of a complete trial's test score on the sweep's metric."""
    return f"test_{metric}"


def trial_state(t) -> str:
    if t.state.name == "PRUNED" and "rejected" in t.user_attrs:
        return "REJECTED"
    if t.state.name == "FAIL" and "skipped" in t.user_attrs:
        return "SKIPPED"
    return t.state.name


def write_results(spec: SweepSpec, study) -> None:
    """sweep_summary.csv, best.yaml and plots/ in the sweep folder, from the study storage alone."""
    import optuna

    optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats
    # Workers sharing a folder each write at the end; one that read the storage just before another's last trial
    # finished could overwrite a final summary with a stale one. So write, look again, and rewrite if it moved.
    for _ in range(5):
        seen = _states(study)
        _write_results(spec, study)
        if _states(study) == seen:
            return


def _states(study) -> list:
    return [(t.number, t.state) for t in study.get_trials(deepcopy=False)]


def _write_results(spec: SweepSpec, study) -> None:
    trials = study.get_trials(deepcopy=False)
    if not trials:
        return
    runs.atomic_write_text(spec.output / runs.SWEEP_SUMMARY, summary_frame(spec, study, trials).to_csv(index=False))
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        runs.atomic_write_text(spec.output / runs.SWEEP_BEST, best_yaml(spec, complete))
    write_plots(spec, study, len(complete))


def summary_frame(spec: SweepSpec, study, trials: list):
    """One row per trial in trial order: the columns of sweep_summary.csv."""
    import pandas as pd

    df = study.trials_dataframe(attrs=("number", "value", "duration", "params", "user_attrs"))
    # a param or user attr that no trial has yet still gets its (empty) column
    attrs = (*USER_ATTRS, test_attr(spec.metric))
    wanted = ["value", "duration", *(f"params_{p.key}" for p in spec.space), *(f"user_attrs_{a}" for a in attrs)]
    df = df.set_index("number").reindex(index=[t.number for t in trials], columns=wanted)
    # the last reported value and step come from intermediate values, which trials_dataframe leaves out
    last = pd.Series([t.last_step for t in trials], index=df.index, dtype="Int64")
    reported = pd.Series([t.intermediate_values[t.last_step] if t.last_step else None for t in trials],
                         index=df.index, dtype="float64")
    complete = pd.Series([t.state.name == "COMPLETE" for t in trials], index=df.index)
    out = pd.DataFrame({
        "trial": df.index,
        "state": [trial_state(t) for t in trials],
        f"val_{spec.metric}": df["value"].astype("float64").where(complete, reported),
        **{p.key: df[f"params_{p.key}"] for p in spec.space},
        "trainable_params": df["user_attrs_trainable_params"],
        "run_time_s": pd.to_timedelta(df["duration"]).dt.total_seconds().round(2),
        "last_step": last,
        test_attr(spec.metric): df[f"user_attrs_{test_attr(spec.metric)}"],
        "run_dir": df["user_attrs_run_dir"],
        "worker": df["user_attrs_worker"],
        "note": [t.user_attrs.get("rejected") or t.user_attrs.get("skipped") or "" for t in trials],
    })
    for col in ("trainable_params", *(p.key for p in spec.space if p.type == "int")):
        out[col] = out[col].astype("Int64")  # whole numbers stay whole next to empty cells
    return out


def best_yaml(spec: SweepSpec, complete: list) -> str:
    """The best complete trial as a config file of differences from the defaults, headed by how to train it."""
    pick = max if spec.direction == "maximize" else min
    best = pick(complete, key=lambda t: t.value)
    body = yaml.safe_dump(diff_from_defaults(trial_config(spec, best.params)), sort_keys=False)
    key = test_attr(spec.metric)
    test = f", test {spec.metric} {best.user_attrs[key]:.4f}" if key in best.user_attrs else ""
    return (f"# loraclf train {spec.output / runs.SWEEP_BEST}\n"
            f"# best of {len(complete)} complete trials of study {spec.study!r} ({spec.path}): trial {best.number}, "
            f"val {spec.metric} {best.value:.4f}{test}\n"
            f"# run folder of that trial: {best.user_attrs.get('run_dir')}\n") + body


def write_plots(spec: SweepSpec, study, n_complete: int) -> list[Path]:
    """Optimisation history, parameter importances and the metric against each searched key, as Optuna draws them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    target = f"val {spec.metric}"
    plots = {"history.png": lambda: optuna_plots.plot_optimization_history(study, target_name=target)}
    if n_complete >= 2:
        plots["importances.png"] = lambda: optuna_plots.plot_param_importances(study, target_name=target)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    for p in spec.space:
        if any(p.key in t.params for t in complete):
            plots[f"metric_vs_{runs.safe_run_name(p.key)}.png"] = \
                lambda key=p.key: optuna_plots.plot_slice(study, params=[key], target_name=target)
    out = spec.output / runs.SWEEP_PLOTS
    out.mkdir(parents=True, exist_ok=True)
    written = []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "There are no complete trials." is no news in a summary
    # Optuna's plots switch matplotlib to its ggplot style globally; rc_context puts the caller's style back
    try:
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore")  # ExperimentalWarning; "importances will be equal" on a handful of trials
            for name, draw in plots.items():
                try:
                    fig = draw().figure
                except (RuntimeError, ValueError, ZeroDivisionError):  # e.g. importances of trials that all scored alike
                    continue
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=PLOT_DPI, bbox_inches="tight")
                plt.close(fig)
                runs.atomic_write_bytes(out / name, buf.getvalue())
                written.append(out / name)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return written

