"""The few-shot recipe's contrastive stage (training/contrastive.py): pair targets, class-balanced batches, the pair
loss, and one short stage on a tiny BERT that moves the adapter and nothing frozen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loraclf.config import load_config
from loraclf.training import contrastive, few_shot

from conftest import tiny_rows


def test_pair_targets_same_class_or_a_shared_label():
    t = contrastive.pair_targets(np.array([0, 1, 0, 2]))
    assert t[0, 2] == t[2, 0] == 1 and t[0, 1] == t[1, 3] == 0 and np.all(np.diag(t) == 1)
    multi = contrastive.pair_targets(np.array([[1, 0, 1], [0, 1, 1], [0, 1, 0], [1, 0, 0]]))
    assert multi[0, 1] == 1 and multi[1, 2] == 1 and multi[0, 2] == 0 and multi[2, 3] == 0


def test_batches_are_class_balanced_with_positive_pairs_and_follow_the_seed():
    labels = np.repeat(np.arange(6), 8)  # TREC-6 at 8 rows per class
    batches = contrastive.draw_batches(labels, steps=5, batch=24, seed=3)
    assert len(batches) == 5
    for rows in batches:
        counts = np.bincount(labels[rows], minlength=6)
        assert len(set(rows.tolist())) == len(rows) == 24 and np.all(counts == 4)
    again = contrastive.draw_batches(labels, steps=5, batch=24, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, contrastive.draw_batches(labels, 5, 24, seed=4)))
    # more classes than fit: batch//2 classes a step, two rows each, so every class drawn has a positive pair
    many = contrastive.draw_batches(np.repeat(np.arange(40), 3), steps=3, batch=16, seed=0)
    for rows in many:
        assert len(rows) == 16 and set(np.bincount(np.repeat(np.arange(40), 3)[rows])) <= {0, 2}


def test_the_stage_scores_each_pair_ten_times_on_average_within_bounds():
    per_step = contrastive.CONTRAST_BATCH * (contrastive.CONTRAST_BATCH - 1) / 2
    for rows in (32, 48, 96):
        steps = contrastive.stage_steps(rows, contrastive.CONTRAST_BATCH)
        passes = steps * per_step / (rows * (rows - 1) / 2)
        assert contrastive.CONTRAST_PAIR_EPOCHS <= passes < contrastive.CONTRAST_PAIR_EPOCHS + per_step / (rows * (rows - 1) / 2)
    assert contrastive.stage_steps(4, 4) == contrastive.CONTRAST_MIN_STEPS
    assert contrastive.stage_steps(10_000, contrastive.CONTRAST_BATCH) == contrastive.CONTRAST_MAX_STEPS


def test_pair_loss_is_low_for_class_clusters_and_high_for_mixed_ones():
    labels = np.array([0, 0, 1, 1])
    target = torch.from_numpy(contrastive.pair_targets(labels))
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = clustered[[0, 2, 1, 3]]
    assert contrastive.pair_loss(clustered, target) < 0.05 < contrastive.pair_loss(mixed, target)


def test_the_stage_trains_the_adapter_and_leaves_frozen_weights(tiny_bert):
    import datasets

    from loraclf import data as data_mod
    from loraclf.model import build_model

    cfg = load_config(None, [f"model.name_or_path={tiny_bert}", "adapter.target_modules=all-linear"])
    model, tok = build_model(cfg, {i: str(i) for i in range(4)})
    rows = tiny_rows(24, 0)
    ds = datasets.Dataset.from_dict(dict(tok([r["text"] for r in rows], truncation=True, max_length=32)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    said = []
    losses = contrastive.run(model, ds, np.array([r["label"] for r in rows]), data_mod.collator(tok), lr=1e-3,
                             seed=0, say=said.append, steps=4, batch=8)
    assert len(losses) == 4 and all(np.isfinite(losses))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # the adapter moved, and nothing else: frozen weights stay, and the head (which the mean pool does not read)
    assert moved and all("lora_" in n for n in moved)
    assert any("lora_A" in n for n in moved) and any("lora_B" in n for n in moved)
    assert said and said[0].startswith("contrastive stage: 4 steps of 8-row") and "mean-pooled" in said[0]


def test_plan_says_the_recipe_runs_the_contrastive_stage_and_lowers_the_classifier_rate(tmp_path):
    import pandas as pd

    pd.DataFrame(tiny_rows(40, 0)).to_csv(tmp_path / "few.csv", index=False)
    said = []
    cfg, _, why = few_shot.plan(load_config(None, [f"data.train={tmp_path / 'few.csv'}"]), None, said.append)
    line = next(s for s in said if s.startswith("few-shot recipe on:"))
    assert why and "contrastive stage" in line and f"learning rate {few_shot.FEW_SHOT_LR:g}" in line
    assert cfg.train.learning_rate == few_shot.FEW_SHOT_LR
    cfg2, _, _ = few_shot.plan(load_config(None, [f"data.train={tmp_path / 'few.csv'}", "train.learning_rate=3e-3"]),
                               None, lambda m: None)
    assert cfg2.train.learning_rate == 3e-3  # a rate the config sets is kept


def test_the_stage_stops_at_three_steps_per_pair_of_classes_where_asked():
    per_pair = contrastive.CONTRAST_STEPS_PER_CLASS_PAIR
    batch = contrastive.CONTRAST_BATCH
    assert contrastive.stage_steps(64, batch, 4) == 6 * per_pair < contrastive.stage_steps(64, batch)  # AG News 16
    assert contrastive.stage_steps(96, batch, 6) == 15 * per_pair < contrastive.stage_steps(96, batch)  # TREC-6 16
    for rows, classes in ((32, 4), (48, 6)):  # 8 rows per class: the pair rule is under the cap, so it holds
        assert contrastive.stage_steps(rows, batch, classes) == contrastive.stage_steps(rows, batch)
    assert contrastive.stage_steps(40, batch, 2) == contrastive.CONTRAST_MIN_STEPS  # one pair of classes: the floor


def _tiny_stage_inputs(tiny_bert, labels):
    import datasets

    from loraclf import data as data_mod
    from loraclf.model import build_model

    cfg = load_config(None, [f"model.name_or_path={tiny_bert}", "adapter.target_modules=all-linear"])
    model, tok = build_model(cfg, {i: str(i) for i in range(int(labels.max()) + 1)})
    ds = datasets.Dataset.from_dict(dict(tok([f"row {i}" for i in range(len(labels))], truncation=True, max_length=8)))
    return model, ds, data_mod.collator(tok)


def test_separation_is_leave_one_out_nearest_centroid_accuracy(tiny_bert, monkeypatch):
    labels = np.repeat(np.arange(3), [5, 5, 1])  # class 2 has one row: no centroid without it, so it counts wrong
    vecs = torch.from_numpy(np.random.default_rng(0).normal(size=(len(labels), 6)).astype(np.float32))
    vecs[labels == 1] += 1.5
    model, ds, collate = _tiny_stage_inputs(tiny_bert, labels)
    monkeypatch.setattr(contrastive, "embed", lambda *a, **k: [vecs])
    got = contrastive.separation(model, ds, labels, collate, torch.device("cpu"))
    unit = (vecs / vecs.norm(dim=-1, keepdim=True)).numpy().astype(np.float64)
    right = 0
    for i in range(len(labels)):  # the definition, row by row
        others = np.arange(len(labels)) != i
        cents = {c: unit[others & (labels == c)].mean(0) for c in np.unique(labels) if (others & (labels == c)).any()}
        scores = {c: float(unit[i] @ v / np.linalg.norm(v)) for c, v in cents.items()}
        right += max(scores, key=scores.get) == labels[i]
    assert got == right / len(labels) and 0 < got < 1


def test_the_stage_is_capped_only_where_the_classes_are_already_separated(tiny_bert, monkeypatch):
    labels = np.repeat(np.arange(4), 16)  # AG News at 16 rows per class: the pair rule 74 steps, the cap 18
    model, ds, collate = _tiny_stage_inputs(tiny_bert, labels)
    full, capped = contrastive.stage_steps(64, 24), contrastive.stage_steps(64, 24, 4)
    for sep, want, words in ((contrastive.CONTRAST_SEPARATED, capped, "already separate"),
                             (contrastive.CONTRAST_SEPARATED - 0.01, full, "do not yet separate")):
        monkeypatch.setattr(contrastive, "separation", lambda *a, s=sep, **k: s)
        steps, why = contrastive._stage_length(model, ds, labels, 24, collate, torch.device("cpu"), None, "mean")
        assert steps == want and words in why
    assert capped < full


@pytest.mark.parametrize("steps,said", [(0, "contrastive stage: skipped (train.contrastive_steps=0)"),
                                        (3, "contrastive stage: 3 steps of")])
def test_train_contrastive_steps_skips_or_fixes_the_stage(tiny_bert, tmp_path, capfd, steps, said):
    import pandas as pd

    from loraclf import cli

    pd.DataFrame(tiny_rows(40, 0)).to_csv(tmp_path / "few.csv", index=False)
    assert cli.main(["train", f"model.name_or_path={tiny_bert}", f"data.train={tmp_path / 'few.csv'}",
                     "data.max_length=16", "train.max_steps=2", "output.report=false",
                     f"output.dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                     f"train.contrastive_steps={steps}"]) == 0
    err = capfd.readouterr().err
    assert said in err
    assert ("no contrastive stage (train.contrastive_steps=0)" in err) == (steps == 0)  # the recipe's line says so


def test_contrastive_steps_is_refused_with_the_recipe_off_and_noted_where_auto_leaves_it_off(tmp_path, capsys):
    import pandas as pd

    from loraclf.cli.commands import main

    assert main(["validate", "train.few_shot=false", "train.contrastive_steps=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.contrastive_steps=5 is a step of the few-shot recipe" in err[0]
    pd.DataFrame(tiny_rows(240, 0)).to_csv(tmp_path / "many.csv", index=False)  # 60 rows per class: auto is off
    said = []
    _, _, why = few_shot.plan(load_config(None, [f"data.train={tmp_path / 'many.csv'}", "train.contrastive_steps=5"]),
                              None, said.append)
    assert why is None and any("train.contrastive_steps=5 is not used" in s for s in said)
