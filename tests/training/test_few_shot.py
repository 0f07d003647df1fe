"""The few-shot recipe (train.few_shot): when auto switches on, every row training and the schedule, the
too-small-run warnings, and one real run of the packaged MiniLM on 8 rows per class of AG News."""

from __future__ import annotations

import json
import math

import datasets
import pandas as pd
import pytest

from loraclf import cli, runs
from loraclf.config import Config, load_config
from loraclf.data import Splits
from loraclf.task import MULTI, REGRESSION, SINGLE
from loraclf.training import few_shot
from loraclf.training.few_shot import (FEW_SHOT_BATCH, FEW_SHOT_EPOCHS, FEW_SHOT_MIN_STEPS, FEW_SHOT_ROWS_PER_CLASS,
                                       FEW_SHOT_TARGETS,
                                       TOO_FEW_STEPS, TOO_FEW_VAL_ROWS)

from conftest import tiny_rows


def _splits(labels, problem_type=SINGLE, n_labels=None) -> Splits:
    labels = list(labels)
    n_labels = n_labels or (len(labels[0]) if problem_type == MULTI else int(max(labels)) + 1)
    ds = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(len(labels))], "label": labels})
    return Splits(ds, ds, None, {i: str(i) for i in range(n_labels)}, problem_type=problem_type,
                  validation_is_train=True)


def _cfg(**train) -> Config:
    return load_config(None, [f"train.{k}={v}" for k, v in train.items()])


# ------------------------------------------------------------------------------------------ when it is on


def test_auto_switches_on_under_the_threshold_of_rows_per_class():
    under = _splits([c for c in range(3) for _ in range(FEW_SHOT_ROWS_PER_CLASS - 1)])
    at = _splits([c for c in range(3) for _ in range(FEW_SHOT_ROWS_PER_CLASS)])
    why = few_shot.decide(_cfg(), under)
    assert why is not None and f"threshold of {FEW_SHOT_ROWS_PER_CLASS}" in why and f"{FEW_SHOT_ROWS_PER_CLASS - 1}.0" in why
    assert few_shot.decide(_cfg(), at) is None
    assert few_shot.decide(_cfg(few_shot="true"), at).startswith("train.few_shot=true")
    assert few_shot.decide(_cfg(few_shot="false"), under) is None


def test_multi_label_counts_positives_per_label_and_regression_never_switches():
    rows = [[1, 0], [0, 1], [1, 1]] * 10  # 20 positives per label
    assert "positive rows per label" in few_shot.decide(_cfg(), _splits(rows, MULTI))
    cfg = load_config(None, [f"model.problem_type={REGRESSION}"])
    assert few_shot.decide(cfg, _splits([0.5, 1.5, 2.0], REGRESSION, 1)) is None


def test_plan_logs_why_trains_on_every_row_and_sets_the_schedule(tmp_path):
    n = 40  # 10 per class: under the threshold
    pd.DataFrame(tiny_rows(n, 0)).to_csv(tmp_path / "few.csv", index=False)
    said = []
    cfg, splits, why = few_shot.plan(load_config(None, [f"data.train={tmp_path / 'few.csv'}"]), None, said.append)
    assert why is not None
    line = next(s for s in said if s.startswith("few-shot recipe on:"))
    assert "10.0 labelled training rows per class" in line and "train.few_shot=false" in line
    assert len(splits.train) == n and splits.validation_is_train and len(splits.validation) == n
    steps = max(FEW_SHOT_EPOCHS * math.ceil(n / FEW_SHOT_BATCH), FEW_SHOT_MIN_STEPS)
    assert cfg.train.max_steps == steps and cfg.eval.eval_steps == steps
    assert cfg.train.per_device_train_batch_size == FEW_SHOT_BATCH and cfg.adapter.target_modules == FEW_SHOT_TARGETS
    # keys the user set are kept; off (false): the usual validation split from train, no line
    cfg2, splits2, _ = few_shot.plan(load_config(None, [f"data.train={tmp_path / 'few.csv'}", "train.max_steps=7",
                                                        "data.validation_split=8"]), None, lambda m: None)
    assert cfg2.train.max_steps == 7 and len(splits2.validation) == 8 and not splits2.validation_is_train
    # under a budget cap the adapter keeps the config's targets: the cap was sized for them
    cfg_cap, _, why_cap = few_shot.plan(load_config(None, [f"data.train={tmp_path / 'few.csv'}",
                                                           "budget.max_trainable_params=5000"]), None, lambda m: None)
    assert why_cap is not None and cfg_cap.adapter.target_modules == load_config(None, []).adapter.target_modules
    said.clear()
    cfg3, splits3, why3 = few_shot.plan(load_config(None, [f"data.train={tmp_path / 'few.csv'}",
                                                           "train.few_shot=false"]), None, said.append)
    assert why3 is None and not splits3.validation_is_train and len(splits3.train) + len(splits3.validation) == n
    assert not any("few-shot" in s for s in said) and cfg3.train.max_steps is None


# ------------------------------------------------------------------------------------------ too small to learn


def test_too_small_runs_warn_with_what_to_change():
    lines = few_shot.warn_too_small(_cfg(), TOO_FEW_STEPS - 1, TOO_FEW_VAL_ROWS - 1, False, False, lambda m: None)
    assert len(lines) == 2
    assert f"only {TOO_FEW_STEPS - 1} optimizer steps" in lines[0] and "train.few_shot=true" in lines[0]
    assert f"validation has only {TOO_FEW_VAL_ROWS - 1} rows" in lines[1] and "data.validation" in lines[1]
    assert few_shot.warn_too_small(_cfg(), TOO_FEW_STEPS, TOO_FEW_VAL_ROWS, False, False, lambda m: None) == []
    # the training rows standing in for validation (few-shot) are not a small validation split
    assert few_shot.warn_too_small(_cfg(), TOO_FEW_STEPS, 4, True, True, lambda m: None) == []


def test_a_tiny_default_run_warns_and_a_few_shot_run_does_not(tiny_bert, tmp_path, capfd):
    pd.DataFrame(tiny_rows(40, 0)).to_csv(tmp_path / "few.csv", index=False)
    base = [f"model.name_or_path={tiny_bert}", f"data.train={tmp_path / 'few.csv'}", "data.max_length=32",
            "output.report=false", f"output.dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}"]
    assert cli.main(["train", *base, "train.few_shot=false", "output.run_name=old"]) == 0
    err = capfd.readouterr().err
    assert "warning: only 6 optimizer steps" in err and "warning: validation has only 4 rows" in err
    assert cli.main(["train", *base, "output.run_name=few", "train.max_steps=30"]) == 0
    err = capfd.readouterr().err
    assert "few-shot recipe on" in err and "warning: only" not in err and "warning: validation" not in err
    metrics = json.loads((tmp_path / "runs" / "few" / runs.METRICS).read_text())
    assert metrics["global_step"] == 30 and metrics["best_step"] == 30  # fixed schedule: the last step is kept


# ------------------------------------------------------------------------------------------ real: MiniLM, AG News


def test_minilm_learns_from_8_rows_per_class_of_ag_news(minilm_path, ag_news, tmp_path):
    train = pd.read_csv(ag_news / "train.csv")
    few = train.loc[[i for _, g in train.groupby("label") for i in g.sample(8, random_state=0).index]]
    test = pd.read_csv(ag_news / "test.csv").iloc[:200]
    few[["text", "label"]].to_csv(tmp_path / "few.csv", index=False)
    test[["text", "label"]].to_csv(tmp_path / "test.csv", index=False)
    assert cli.main(["train", f"model.name_or_path={minilm_path}", f"data.train={tmp_path / 'few.csv'}",
                     # half the recipe's 50 steps and short texts keep this test near 20 s on one thread; the
                     # recipe's other parts (every row trains, the last step kept) are as they are
                     f"data.test={tmp_path / 'test.csv'}", "data.max_length=48", "train.max_steps=24",
                     "output.report=false",
                     f"output.dir={tmp_path / 'runs'}", "output.run_name=few", f"data.cache_dir={tmp_path / 'c'}",
                     "--quiet"]) == 0
    run = tmp_path / "runs" / "few"
    assert len(pd.read_csv(run / runs.VAL_PREDICTIONS)) == len(few)  # every row trained: none was held out
    acc = json.loads((run / runs.METRICS).read_text())["test"]["accuracy"]
    chance = 1 / 4
    assert acc >= 2 * chance, f"test accuracy {acc:.3f} from 8 rows per class is not well above chance ({chance})"


@pytest.mark.parametrize("args,cause", [
    (["model.problem_type=regression"], "train.few_shot=true is for classification"),
    (["data.train=x.csv", "data.streaming=true", "train.max_steps=5", "eval.eval_steps=5"],
     "needs the training rows counted up front, which data.streaming=true does not allow")])
def test_validate_refuses_few_shot_where_the_recipe_cannot_apply(args, cause, capsys):
    from loraclf.cli.commands import main

    assert main(["validate", *args, "train.few_shot=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and cause in err[0]
