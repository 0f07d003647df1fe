"""The verbs after training know the problem type: report, compare, card, sweep, budget, evaluate and self-training.

Tiny real runs of each type (the 2-layer tiny_bert, rows made here, 4 steps) are shared by the module; the
assertions compare what each verb writes with the run's own files.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loraclf.model import budget
from loraclf import cli, task as problem, runs
from loraclf.report import html as report
from loraclf.report import figures, files as report_files
from loraclf.report import compare
from loraclf.training.pseudo_labels import Pseudo, pseudo_labels, select_confident, student_train_set
from loraclf.training.self_train import self_train
from loraclf.config import load_config
from loraclf.base.errors import ConfigError, LoraclfError
from loraclf.sweep import load_sweep, trial_config
from loraclf.training import train

WORDS = {"sport": "match goal team coach league score", "money": "bank shares market profit trade price",
         "tech": "chip web data phone code server"}


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Texts of one or two topics: label = the first topic, tags = every topic, score = 2 x topics + noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        names = sorted(rng.sample(sorted(WORDS), rng.choice([1, 1, 2])))
        words = [w for name in names for w in rng.sample(WORDS[name].split(), 3)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" item {i}", "label": names[0], "tags": "|".join(names),
                     "score": round(2.0 * len(names) + rng.random(), 4)})
    return pd.DataFrame(rows)


TYPE_OVERRIDES = {
    "single": ["eval.calibration=temperature"],
    "multi": [f"model.problem_type={problem.MULTI}", "data.label_column=tags", "data.label_delimiter='|'"],
    "regression": [f"model.problem_type={problem.REGRESSION}", "data.label_column=score"],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("problem_data")
    out = {}
    for seed, (name, n) in enumerate((("train", 64), ("val", 24), ("test", 16))):
        out[name] = root / f"{name}.csv"
        _frame(n, seed).to_csv(out[name], index=False)
    out["unlabeled"] = root / "unlabeled.csv"
    _frame(16, 9)[["text"]].to_csv(out["unlabeled"], index=False)
    return out


def _overrides(tiny_bert, files, out: Path, name: str, kind: str, *extra: str) -> list[str]:
    return [f"model.name_or_path={tiny_bert}", f"data.train={files['train']}", f"data.validation={files['val']}",
            f"data.test={files['test']}", "data.max_length=16", "train.max_steps=4",
            "train.per_device_train_batch_size=16", "train.learning_rate=5e-3", "train.mixed_precision=fp32",
            "train.logging_steps=2", "eval.eval_steps=2", "output.report=false", f"output.dir={out}",
            f"output.run_name={name}", f"data.cache_dir={out / 'cache'}", "train.few_shot=false", *TYPE_OVERRIDES[kind],
            *extra]


@pytest.fixture(scope="module")
def trained(tiny_bert, files, tmp_path_factory) -> dict[str, Path]:
    """One run per problem type, and a second regression run (another learning rate) for compare."""
    out = tmp_path_factory.mktemp("problem_runs")
    runs_ = {kind: train(load_config(None, _overrides(tiny_bert, files, out, kind, kind)), quiet=True).run_dir
             for kind in TYPE_OVERRIDES}
    runs_["regression_b"] = train(load_config(None, _overrides(tiny_bert, files, out, "regression_b", "regression",
                                                               "train.learning_rate=1e-3")), quiet=True).run_dir
    return runs_


def _val_rows(run: Path) -> list[dict]:
    with open(run / runs.VAL_PREDICTIONS, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _labelled_lines(fig) -> dict[str, object]:
    return {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}


# ------------------------------------------------------------------------------------------ report


def test_regression_report_has_predicted_vs_true_and_residuals(trained):
    run = trained["regression"]
    page = report.write_report(run).read_text(encoding="utf-8")
    assert sorted(p.name for p in (run / "report").iterdir()) == [
        "curves.png", "predicted_vs_true.png", "report.html", "residuals.png"]
    assert "Predicted vs true (validation)</h2>" in page and "Residuals (validation)</h2>" in page
    assert "Confusion matrix" not in page and "largest residuals" in page
    metrics = runs.read_json(run / runs.METRICS)
    assert f"<td>{metrics['val']['rmse']:.4f}</td>" in page and f"<td>{metrics['test']['pearson']:.4f}</td>" in page

    rows = _val_rows(run)
    y, pred = np.array([float(r["label"]) for r in rows]), np.array([float(r["predicted"]) for r in rows])
    fig = figures.plot_predicted_vs_true(y, pred)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.c_[y, pred])
    diagonal = _labelled_lines(fig)["y = x"]
    np.testing.assert_allclose(diagonal.get_xdata(), diagonal.get_ydata())
    hist = figures.plot_residuals(pred - y)
    assert sum(p.get_height() for p in hist.axes[0].patches) == len(rows)

    lines = _labelled_lines(figures.plot_curves(report_files.load_run(run)))
    history = [r for r in runs.read_jsonl(run / runs.HISTORY) if r["type"] == "eval"]
    assert list(lines["validation RMSE"].get_ydata()) == [r["rmse"] for r in history]
    assert "validation Pearson r" in lines and "validation accuracy" not in lines


def test_multi_label_report_has_per_label_bars_and_thresholds(trained):
    run = trained["multi"]
    page = report.write_report(run).read_text(encoding="utf-8")
    assert sorted(p.name for p in (run / "report").iterdir()) == ["curves.png", "per_label.png", "report.html"]
    assert "Per-label precision, recall, F1 and thresholds (validation)</h2>" in page
    assert "Confusion matrix" not in page and "most label errors" in page
    metrics = runs.read_json(run / runs.METRICS)
    thresholds = metrics["decision"]["thresholds"]
    per_label = metrics["val"]["per_label"]
    assert list(per_label) == ["money", "sport", "tech"]
    for name, t in zip(per_label, thresholds):
        assert f"<td>{name}</td>" in page and f"<td>{t:.3f}</td>" in page

    fig = figures.plot_per_label(per_label)
    bars, threshold_bars = fig.axes[0].patches, fig.axes[1].patches
    assert len(bars) == 3 * len(per_label)
    np.testing.assert_allclose([b.get_height() for b in threshold_bars], thresholds)
    f1 = [b.get_height() for b in bars[2 * len(per_label):]]
    np.testing.assert_allclose(f1, [v["f1"] for v in per_label.values()])
    # the worst example has the most wrong labels of any row
    worst = report.confidently_wrong(report_files.load_run(run))
    errors = [len(set(r["labels"].split("|")) ^ set(filter(None, r["predicted"].split("|")))) for r in _val_rows(run)]
    assert worst and worst[0]["errors"] == max(errors)


def test_calibrated_single_label_report_has_a_reliability_diagram(trained):
    run = trained["single"]
    page = report.write_report(run).read_text(encoding="utf-8")
    assert sorted(p.name for p in (run / "report").iterdir()) == [
        "confusion.png", "curves.png", "reliability.png", "report.html"]
    assert "Reliability diagram (validation, after calibration)</h2>" in page and "Confusion matrix" in page
    cal = runs.read_json(run / runs.METRICS)["calibration"]
    table = page.split('class="calibration"')[1].split("</table>")[0]
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        assert f"<td>{cal['val'][key]:.4f}</td>" in table and f"<td>{cal['test'][key]:.4f}</td>" in table
    rows = _val_rows(run)
    fig = figures.plot_reliability(np.array([float(r["confidence"]) for r in rows]),
                                  np.array([r["label"] == r["predicted"] for r in rows]))
    assert sum(p.get_height() for p in fig.axes[1].patches) == len(rows)
    assert "accuracy per confidence bin" in _labelled_lines(fig)


def test_a_run_from_before_problem_types_renders_as_single_label(trained, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained["single"], old, ignore=shutil.ignore_patterns("report", "checkpoints", "adapter"))
    metrics = runs.read_json(old / runs.METRICS)
    for key in ("problem_type", "decision", "calibration"):
        metrics.pop(key)
    (old / runs.METRICS).write_text(json.dumps(metrics))
    (old / runs.DECISION).unlink()
    page = report.write_report(old).read_text(encoding="utf-8")
    assert sorted(p.name for p in (old / "report").iterdir()) == ["confusion.png", "curves.png", "report.html"]
    assert "single_label_classification" in page and "most confidently wrong" in page


# ------------------------------------------------------------------------------------------ compare, card


def test_compare_two_regression_runs_and_refuse_mixed_types(trained, tmp_path, capsys):
    a, b = trained["regression"], trained["regression_b"]
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(a), str(b), "--output", str(out)]) == 0
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [k for k in rows[0] if k.startswith(("val_", "test_"))] == [
        "val_rmse", "val_mae", "val_pearson", "val_spearman", "val_r2", "val_loss", "test_rmse", "test_mae"]
    for row, run in zip(rows, (a, b)):
        m = runs.read_json(run / runs.METRICS)
        assert float(row["val_rmse"]) == pytest.approx(m["val"]["rmse"])
        assert float(row["test_mae"]) == pytest.approx(m["test"]["mae"])
    assert "| train.learning_rate | 0.005 | 0.001 |" in (out / "compare.md").read_text()
    fig = compare.plot_compare([report_files.load_run(a), report_files.load_run(b)], ["a", "b"])
    assert [ax.get_title() for ax in fig.axes if ax.get_lines()][2:] == ["validation RMSE", "validation MAE"]

    assert cli.main(["compare", str(a), str(trained["multi"]), "--output", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err
    assert err == ("loraclf compare: error: compare needs runs of one problem type, got 2 (regression: regression, "
                   "multi: multi_label_classification); compare the runs of each type separately\n")
    assert not (tmp_path / "mixed").exists()


@pytest.mark.parametrize("kind, expected", [
    ("regression", {"rmse": "rmse", "mae": "mae", "pearsonr": "pearson", "spearmanr": "spearman", "mse": "loss"}),
    ("multi", {"hamming_loss": "hamming_loss", "map": "mean_average_precision", "loss": "loss"}),
])
def test_card_metrics_follow_the_problem_type(trained, kind, expected):
    from huggingface_hub import ModelCard

    run = trained[kind]
    loaded = ModelCard.load(run / runs.ADAPTER / runs.MODEL_CARD)
    metrics = runs.read_json(run / runs.METRICS)
    got = {(r.dataset_split, r.metric_type, r.metric_name): r.metric_value for r in loaded.data.eval_results}
    for mtype, key in expected.items():
        for split, name in (("validation", "val"), ("test", "test")):
            values = [v for (s, t, _), v in got.items() if s == split and t == mtype]
            assert values == [metrics[name][key]], (split, mtype)
    if kind == "multi":
        assert got[("validation", "f1", "val micro-F1")] == metrics["val"]["micro_f1"]
    pt = metrics["problem_type"]
    assert f"- **Problem type:** `{pt}`." in loaded.text
    assert ("regression" if kind == "regression" else "multi-label-classification") in loaded.data.tags


# ------------------------------------------------------------------------------------------ sweep objective


def _sweep(tmp_path: Path, tiny_bert, files, kind: str, **keys) -> Path:
    import yaml

    pairs = (o.split("=", 1) for o in _overrides(tiny_bert, files, tmp_path, "s", kind))
    body = {"overrides": {k: yaml.safe_load(v) for k, v in pairs}, "n_trials": 2,
            "space": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}, **keys}
    path = tmp_path / f"sweep_{kind}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("kind, metric, direction", [
    ("single", "accuracy", "maximize"), ("multi", "micro_f1", "maximize"), ("regression", "rmse", "minimize")])
def test_sweep_objective_defaults_to_the_types_main_metric(tmp_path, tiny_bert, files, kind, metric, direction):
    spec = load_sweep(_sweep(tmp_path, tiny_bert, files, kind))
    assert (spec.metric, spec.direction) == (metric, direction)
    assert trial_config(spec, {"train.learning_rate": 1e-3}).eval.metric_for_best_model == metric
    assert load_sweep(_sweep(tmp_path, tiny_bert, files, kind, metric="loss")).direction == "minimize"


def test_sweep_metric_not_of_the_type_is_one_line(tmp_path, tiny_bert, files, capsys):
    with pytest.raises(ConfigError) as e:
        load_sweep(_sweep(tmp_path, tiny_bert, files, "regression", metric="accuracy"))
    assert ("'metric' 'accuracy' is not a metric of model.problem_type=regression; give one of rmse, mae, pearson, "
            "spearman, r2, loss") in str(e.value)
    path = _sweep(tmp_path, tiny_bert, files, "regression", metric="pearson", direction="minimize")
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'direction: minimize' contradicts metric 'pearson', which is better higher" in err


# ------------------------------------------------------------------------------------------ budget


def test_budget_counts_equal_the_real_models(trained, tiny_bert, files, tmp_path, capsys):
    for kind, outputs in (("regression", 1), ("multi", 3), ("single", 3)):
        cfg = load_config(None, _overrides(tiny_bert, files, tmp_path, "b", kind))
        rep = budget.budget_report(cfg)
        assert rep["num_labels"] == outputs and rep["problem_type"] == cfg.model.problem_type
        assert rep["trainable"] == runs.read_json(trained[kind] / runs.PARAMS)["trainable"]
    assert rep["head_params"] - budget.budget_report(
        load_config(None, _overrides(tiny_bert, files, tmp_path, "b", "regression")))["head_params"] == 2 * (32 + 1)
    reg = [f"model.name_or_path={tiny_bert}", f"model.problem_type={problem.REGRESSION}", "data.name=no-such-data"]
    assert cli.main(["budget", *reg]) == 0  # regression needs no labels, so no data is read
    assert "labels  1 output (from model.problem_type=regression); regression" in capsys.readouterr().out
    assert cli.main(["budget", *reg, "--num-labels", "3"]) == 2
    assert capsys.readouterr().err == ("loraclf budget: error: --num-labels must be 1 with "
                                       "model.problem_type=regression (one output), got 3\n")
    assert cli.main(["budget", f"model.name_or_path={tiny_bert}", "--num-labels", "1"]) == 2
    assert "--num-labels must be at least 2 with model.problem_type=single_label_classification, got 1 (one " \
           "output is model.problem_type=regression)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_prints_the_types_metrics(trained, files, capsys):
    assert cli.main(["evaluate", str(trained["regression"]), "--data", str(files["test"]), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    test = runs.read_json(trained["regression"] / runs.METRICS)["test"]
    # the line's fields in order; each value is the training run's own test metric, recomputed here (float sums
    # in another order can move the 4th decimal of a value that sits on a rounding boundary)
    fields = [f.rsplit(" ", 1) for f in out[0].split(" | ")]
    assert len(out) == 1 and fields[0] == [str(test["n"]), "rows"]
    names = {"RMSE": "rmse", "MAE": "mae", "Pearson r": "pearson", "Spearman ρ": "spearman", "R²": "r2", "loss": "loss"}
    assert [name for name, _ in fields[1:]] == list(names)
    for name, value in fields[1:]:
        assert len(value.split(".")[1]) == 4 and abs(float(value) - test[names[name]]) <= 1.5e-4, (name, value)
    assert cli.main(["evaluate", str(trained["multi"]), "--data", str(files["test"]), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    test = runs.read_json(trained["multi"] / runs.METRICS)["test"]
    assert out[0].startswith(f"{test['n']} rows | micro-F1 {test['micro_f1']:.4f} | macro-F1 {test['macro_f1']:.4f}")
    t = test["per_label"]["money"]["threshold"]
    assert out[1].startswith("  money ") and out[1].endswith(f"threshold {t:.3f}") and len(out) == 4


# ------------------------------------------------------------------------------------------ self-training


def test_pseudo_label_confidence_per_type_on_hand_made_outputs():
    d = problem.Decision(problem.MULTI, thresholds=[0.5, 0.2])
    p = pseudo_labels(np.array([[0.95, 0.05], [0.9, 0.3], [0.55, 0.01]]), d)
    np.testing.assert_allclose(p.labels, [[1, 0], [1, 1], [1, 0]])
    # the least sure label decides: 0.95 and 1-0.05; 0.9 and 0.3 (above its 0.2 threshold); 0.55 and 0.99
    np.testing.assert_allclose(p.confidence, [0.95, 0.3, 0.55])
    assert select_confident(p.confidence, threshold=0.9).tolist() == [0]
    assert select_confident(p.confidence, threshold=0.0, top_fraction=0.5).tolist() == [0, 2]  # ceil(0.5 x 3) = 2
    r = pseudo_labels(np.array([1.0, 2.0, 3.0]), problem.Decision(problem.REGRESSION), np.array([1.25, 2.75, 3.0]),
                      scale=0.5)
    np.testing.assert_allclose(r.confidence, [0.5, 0.0, 1.0])  # 1 - |difference| / std, at least 0
    assert select_confident(r.confidence, threshold=0.5).tolist() == [0, 2]


def test_student_set_multi_label_soft_targets_and_regression_weights():
    import datasets

    cfg = load_config(None, [f"model.problem_type={problem.MULTI}", "adapt.weighting=soft", "data.unlabeled=x.csv"])
    labelled = datasets.Dataset.from_dict({"text": ["a"], "label": [[1.0, 0.0]]})
    pseudo = Pseudo(np.array([[0.9, 0.2], [0.4, 0.7]]), np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.8, 0.6]))
    ds, _ = student_train_set(labelled, ["x", "y"], pseudo.out, np.array([1]), cfg, 0, pseudo)
    assert ds["text"] == ["a", "y"] and np.allclose(ds["label"], [[1.0, 0.0], [0.4, 0.7]])
    cfg = load_config(None, [f"model.problem_type={problem.REGRESSION}", "adapt.weighting=confidence",
                             "data.unlabeled=x.csv"])
    labelled = datasets.Dataset.from_dict({"text": ["a"], "label": [2.5]})
    pseudo = Pseudo(np.array([1.5, 3.0]), np.array([1.5, 3.0]), np.array([0.95, 0.9]), np.array([1.5, 3.1]))
    ds, _ = student_train_set(labelled, ["x", "y"], pseudo.out, np.array([0, 1]), cfg, 0, pseudo)
    assert ds["label"] == [2.5, 1.5, 3.0] and np.allclose(ds["weight"], [1.0, 0.95, 0.9])


@pytest.mark.parametrize("kind", ["multi", "regression"])
def test_self_training_runs_per_type(tiny_bert, files, tmp_path, kind):
    cfg = load_config(None, _overrides(tiny_bert, files, tmp_path, f"adapt_{kind}", kind, "train.max_steps=2",
                                       f"data.unlabeled={files['unlabeled']}", "adapt.threshold=0.0",
                                       "adapt.weighting=confidence"))
    result = self_train(cfg, quiet=True)
    summary = runs.read_json(result.run_dir / runs.ADAPT)
    assert summary["problem_type"] == cfg.model.problem_type and len(summary["rounds"]) == 2
    teacher, student = summary["rounds"]
    assert teacher["pseudo_labels"]["kept"] == 16 and student["train_rows"] == {
        "total": 64 + 16, "labelled": 64, "pseudo": 16, "augmented": 0}
    main = problem.main_metric(cfg.model.problem_type)
    assert student["val"][main] == runs.read_json(result.run_dir / runs.METRICS)["val"][main]
    pseudo = pd.read_csv(result.run_dir / runs.ROUNDS / "round-0" / runs.PSEUDO_LABELS)
    assert len(pseudo) == 16 and pseudo["kept"].all() and pseudo["confidence"].between(0, 1).all()
    if kind == "regression":
        expected = 1 - (pseudo["pseudo_label"] - pseudo["second_view"]).abs() / np.std(_frame(64, 0)["score"])
        np.testing.assert_allclose(pseudo["confidence"], expected.clip(0, 1), atol=1e-4)
    else:
        assert {"prob_money", "prob_sport", "prob_tech"} <= set(pseudo.columns)
        counts = teacher["pseudo_labels"]["kept_per_class"]
        assert counts == {n: int(pseudo["pseudo_label"].fillna("").str.split("|").apply(lambda s: n in s).sum())
                          for n in ("money", "sport", "tech")}


def test_self_training_refusals_are_one_line(tiny_bert, files, tmp_path, capsys):
    base = _overrides(tiny_bert, files, tmp_path, "refused", "regression", f"data.unlabeled={files['unlabeled']}")
    assert cli.main(["train", *base, "adapt.weighting=soft", "--quiet"]) == 2
    assert capsys.readouterr().err == ("loraclf train: error: adapt.weighting=soft needs class probabilities, which "
                                       "regression has none of; use adapt.weighting=none or confidence\n")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(LoraclfError, match=r"^self-training \(data.unlabeled\) reads single texts; drop "
                                           r"data.text_pair_column"):
        self_train(load_config(None, [*base, "data.text_pair_column=tags"]), quiet=True)
