"""curves.png draws like with like (issue 42): a training loss that is not the validation loss's quantity (targets
standardised, focal, class weights, smoothing) is labelled with what it is and gets its own axis. The figure's lines
and labels are read, not its pixels."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraclf import task as problem
from loraclf.report import figures
from loraclf.report.files import RunFiles

HISTORY = ([{"type": "train", "step": s, "loss": 1.0 / s, "learning_rate": 1e-3} for s in (2, 4, 6)]
           + [{"type": "eval", "split": "val", "step": s, "loss": 0.5 + s, "accuracy": 0.8, "macro_f1": 0.7,
               "micro_f1": 0.7, "rmse": 1.0, "mae": 0.8, "pearson": 0.5} for s in (3, 6)])


def _run(problem_type: str, train: dict, decision: dict | None = None, **sections) -> RunFiles:
    config = {"model": {"problem_type": problem_type}, "train": train, **sections}
    metrics = {"val": {}, "problem_type": problem_type, "decision": decision or {}}
    return RunFiles(Path("run"), config, metrics, history=HISTORY)


def _loss_lines(fig):
    """{label: (line, the axis it is on)} for the loss panel's curves (the panel and its twin share the x axis)."""
    loss_axes = [ax for ax in fig.axes if any("loss" in ln.get_label() for ln in ax.get_lines())]
    return {ln.get_label(): (ln, ax) for ax in loss_axes for ln in ax.get_lines() if "loss" in ln.get_label()}


def test_regression_on_standardised_targets_names_both_units_and_splits_the_axes():
    rf = _run(problem.REGRESSION, {"loss": None}, {"target_mean": 2.0, "target_std": 3.0})
    lines = _loss_lines(figures.plot_curves(rf))
    assert set(lines) == {"train loss (MSE, standardised targets)", "validation loss (MSE, target units)"}
    (train, ax_t), (val, ax_v) = lines["train loss (MSE, standardised targets)"], \
        lines["validation loss (MSE, target units)"]
    assert ax_t is not ax_v  # not overlaid on one scale as if comparable
    assert list(val.get_ydata()) == [3.5, 6.5] and list(train.get_xdata()) == [2, 4, 6]
    assert ax_t.get_ylabel() == "train loss" and ax_v.get_ylabel() == "validation loss"


@pytest.mark.parametrize("train, words", [
    ({"loss": "focal", "focal_gamma": 2.0}, ["focal γ=2"]),
    ({"loss": "cross_entropy", "class_weights": "balanced", "label_smoothing": 0.1},
     ["cross-entropy", "class weights", "label smoothing 0.1"]),
    ({"loss": "focal", "focal_gamma": 1.5, "class_weights": {"Sports": 2.0}}, ["focal γ=1.5", "class weights"]),
])
def test_a_weighted_or_focal_training_loss_says_so_and_is_not_on_the_validation_axis(train, words):
    rf = _run(problem.SINGLE, train)
    lines = _loss_lines(figures.plot_curves(rf))
    label = f"train loss ({', '.join(words)})"
    assert set(lines) == {label, "validation loss (cross-entropy)"}
    assert lines[label][1] is not lines["validation loss (cross-entropy)"][1]


def test_multi_label_positive_weights_and_self_training_weights_are_named():
    rf = _run(problem.MULTI, {"loss": "bce", "class_weights": "balanced"}, adapt={"weighting": "soft"})
    assert figures.loss_labels(rf) == (
        "train loss (binary cross-entropy, positive weights, soft-weighted pseudo-labels)",
        "validation loss (binary cross-entropy)", False)


def test_the_same_quantity_shares_one_axis():
    for rf in (_run(problem.SINGLE, {"loss": None, "class_weights": "none", "label_smoothing": 0.0}),
               _run(problem.REGRESSION, {"loss": "mse"}, {"target_mean": 0.0, "target_std": 1.0})):
        fig = figures.plot_curves(rf)
        lines = _loss_lines(fig)
        assert set(lines) == {"train loss", "validation loss"}
        assert lines["train loss"][1] is lines["validation loss"][1]
        assert lines["train loss"][1].get_ylabel() == "loss (validation: " + figures.VAL_LOSS[rf.problem_type] + ")"
