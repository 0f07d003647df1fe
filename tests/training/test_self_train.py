"""Self-training (loraclf.training.self_train): pseudo-label selection, per-round records, model selection, bad unlabeled input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loraclf import cli, runs
from loraclf.training.pseudo_labels import agreement, select_pseudo_labels, student_train_set
from loraclf.training.self_train import self_train
from loraclf.config import load_config
from loraclf.base.errors import ConfigError, DataError, LoraclfError
from loraclf.runs import ADAPT, PSEUDO_LABELS

# ------------------------------------------------------------------------------------------ selection (exact)


def _probs(rows):
    return np.asarray(rows, dtype=np.float32)


def test_threshold_keeps_exactly_the_confident_ones():
    probs = _probs([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9], [0.45, 0.55], [0.02, 0.98]])
    assert select_pseudo_labels(probs, threshold=0.9).tolist() == [0, 2, 4]
    assert select_pseudo_labels(probs, threshold=0.0).tolist() == [0, 1, 2, 3, 4]
    assert select_pseudo_labels(probs, threshold=0.99).tolist() == []


def test_per_class_quota_balances_a_flooding_class():
    # 8 texts, 2 classes: class 0 is predicted 6 times, class 1 twice; quota = ceil(1.0 * 8 / 2) = 4 per class
    conf0 = [0.99, 0.7, 0.95, 0.8, 0.6, 0.9]
    probs = _probs([[c, 1 - c] for c in conf0] + [[0.3, 0.7], [0.2, 0.8]])
    kept = select_pseudo_labels(probs, top_fraction_per_class=1.0)
    assert kept.tolist() == [0, 2, 3, 5, 6, 7]  # class 0's four most confident, then both of class 1
    # half the quota (2 per class): the two most confident of each class
    assert select_pseudo_labels(probs, top_fraction_per_class=0.5).tolist() == [0, 2, 6, 7]


def test_threshold_applies_before_the_quota():
    conf0 = [0.99, 0.7, 0.95, 0.8, 0.6, 0.9]
    probs = _probs([[c, 1 - c] for c in conf0] + [[0.3, 0.7], [0.2, 0.8]])
    # threshold 0.75 leaves class 0: 0.99, 0.95, 0.8, 0.9 and class 1: 0.8; quota 2 keeps 0.99 and 0.95 of class 0
    assert select_pseudo_labels(probs, threshold=0.75, top_fraction_per_class=0.5).tolist() == [0, 2, 7]


def test_agreement_between_rounds():
    prev = _probs([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    cur = _probs([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    a = agreement(prev, np.array([0, 1, 2]), cur, np.array([1, 2, 3]))
    assert a["all"] == 0.5 and a["kept_in_both"] == 2 and a["kept"] == 0.5 and a["kept_jaccard"] == 0.5


def test_student_train_set_weights_and_soft_labels():
    import datasets

    labelled = datasets.Dataset.from_dict({"text": ["a b", "c d"], "label": [0, 1]})
    probs = _probs([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    cfg = load_config(None, ["adapt.weighting=confidence", "data.unlabeled=x.csv"])
    ds, n_aug = student_train_set(labelled, ["x y", "z w", "q r"], probs, np.array([0, 1]), cfg, seed=0)
    assert n_aug == 0 and ds["text"] == ["a b", "c d", "x y", "z w"] and ds["label"] == [0, 1, 0, 1]
    assert np.allclose(ds["weight"], [1, 1, 0.9, 0.7])
    cfg = load_config(None, ["adapt.weighting=soft", "data.unlabeled=x.csv"])
    ds, _ = student_train_set(labelled, ["x y", "z w", "q r"], probs, np.array([1]), cfg, seed=0)
    assert np.allclose(ds["soft_labels"], [[1, 0], [0, 1], [0.3, 0.7]]) and ds["label"] == [0, 1, 1]


def test_consistency_adds_augmented_views_carrying_their_pseudo_label():
    import datasets

    from loraclf.data.wordnet import get_wordnet

    try:
        get_wordnet()
    except LoraclfError as e:
        from conftest import IN_CI

        if IN_CI:
            pytest.fail(f"WordNet is needed under CI: {e}")
        pytest.skip(f"WordNet not installed: {e}")
    labelled = datasets.Dataset.from_dict({"text": ["a b"], "label": [0]})
    texts = ["Stocks rise sharply after the central bank cuts interest rates",
             "The team wins the championship game in overtime"]
    probs = _probs([[0.2, 0.8], [0.95, 0.05]])
    cfg = load_config(None, ["adapt.weighting=soft", "adapt.consistency=true", "augment.synonym_p=0.3",
                             "augment.num_copies=2", "data.unlabeled=x.csv"])
    ds, n_aug = student_train_set(labelled, texts, probs, np.array([0, 1]), cfg, seed=3)
    assert n_aug == 4 and len(ds) == 1 + 2 + 4
    aug = ds.select(range(3, 7))
    assert aug["label"] == [1, 0, 1, 0]
    assert np.allclose(aug["soft_labels"], [[0.2, 0.8], [0.95, 0.05]] * 2)
    assert any(a != t for a, t in zip(aug["text"], texts * 2))  # the views really differ from the originals


# ------------------------------------------------------------------------------------------ real runs (tiny model)


@pytest.fixture(scope="module")
def base_overrides(tiny_bert, tiny_data, tmp_path_factory) -> list[str]:
    cache = tmp_path_factory.mktemp("adapt_cache")
    return [
        f"model.name_or_path={tiny_bert}", f"data.train={tiny_data['train']}", f"data.validation={tiny_data['val']}",
        f"data.unlabeled={tiny_data['test']}", "adapt.target_text_column=title",
        "data.max_length=32", "train.max_steps=6", "train.per_device_train_batch_size=16", "train.learning_rate=5e-3",
        "train.mixed_precision=fp32", "train.logging_steps=2", "eval.eval_steps=2", "output.report=false",
        f"data.cache_dir={cache}", "output.run_name=adapt",
    ]


@pytest.fixture(scope="module")
def two_rounds(base_overrides, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_rounds")
    cfg = load_config(None, base_overrides + [
        f"output.dir={out}", f"data.target_eval={tiny_data['test']}", f"data.test={tiny_data['test']}",
        "adapt.rounds=2", "adapt.threshold=0.0", "adapt.top_fraction_per_class=0.5", "adapt.weighting=confidence"])
    return self_train(cfg, quiet=True)


def test_every_round_is_recorded(two_rounds, tiny_data):
    run = two_rounds.run_dir
    summary = runs.read_json(run / ADAPT)
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and [r["role"] for r in rounds] == ["teacher", "student", "student"]
    n_unlabeled = len(pd.read_csv(tiny_data["test"]))
    assert summary["unlabeled"]["rows"] == n_unlabeled and summary["final_round"] == 2
    for r, rec in enumerate(rounds):
        round_dir = runs.Run.open(run / rec["run"]).path  # each round is a complete run folder
        pl = pd.read_csv(round_dir / PSEUDO_LABELS)
        assert len(pl) == n_unlabeled
        stats = rec["pseudo_labels"]
        assert stats["kept"] == int(pl["kept"].sum()) == sum(stats["kept_per_class"].values())
        assert stats["kept_per_class"] == {k: int(v) for k, v in pl[pl["kept"]]["pseudo_label"].astype(str).value_counts().items()} | {
            k: 0 for k in stats["kept_per_class"] if k not in set(pl[pl["kept"]]["pseudo_label"].astype(str))}
        # the record holds val and target metrics, and the val ones are that round's own metrics.json
        metrics = runs.read_json(round_dir / runs.METRICS)
        assert rec["val"]["accuracy"] == metrics["val"]["accuracy"] and rec["best_step"] == metrics["best_step"]
        assert 0 <= rec["target"]["accuracy"] <= 1 and rec["target"]["n"] == n_unlabeled
        assert rec["test"]["n"] == n_unlabeled
        if r == 0:
            assert stats["agreement_with_previous"] is None and rec["train_rows"]["pseudo"] == 0
        else:
            prev = rounds[r - 1]
            assert rec["train_rows"]["pseudo"] == prev["pseudo_labels"]["kept"]
            assert rec["train_rows"]["total"] == rec["train_rows"]["labelled"] + rec["train_rows"]["pseudo"]
            a = stats["agreement_with_previous"]
            prev_pl = pd.read_csv(run / prev["run"] / PSEUDO_LABELS)
            assert a["all"] == pytest.approx(float((prev_pl["label_id"] == pl["label_id"]).mean()))
            assert a["kept_in_both"] == int((prev_pl["kept"] & pl["kept"]).sum())


def test_kept_pseudo_labels_follow_the_selection(two_rounds):
    for rec in runs.read_json(two_rounds.run_dir / ADAPT)["rounds"]:
        pl = pd.read_csv(two_rounds.run_dir / rec["run"] / PSEUDO_LABELS)
        probs = pl[[c for c in pl.columns if c.startswith("prob_")]].to_numpy(np.float32)
        assert np.array_equal(probs.argmax(-1), pl["label_id"].to_numpy())
        expected = select_pseudo_labels(probs, 0.0, 0.5)
        assert np.flatnonzero(pl["kept"].to_numpy()).tolist() == expected.tolist()
        quota = int(np.ceil(0.5 * len(pl) / 4))
        assert max(rec["pseudo_labels"]["kept_per_class"].values()) <= quota
        assert rec["pseudo_labels"]["kept"] == sum(min(quota, n) for n in rec["pseudo_labels"]["predicted_per_class"].values())


def test_final_run_folder_is_the_last_student(two_rounds):
    run = two_rounds.run_dir
    last = run / runs.ROUNDS / "round-2"
    runs.Run.open(run)
    assert (run / runs.ADAPTER / "adapter_model.safetensors").read_bytes() == \
        (last / runs.ADAPTER / "adapter_model.safetensors").read_bytes()
    metrics = runs.read_json(run / runs.METRICS)
    assert metrics["val"] == runs.read_json(last / runs.METRICS)["val"]
    assert metrics["target"]["accuracy"] == runs.read_json(run / ADAPT)["rounds"][2]["target"]["accuracy"]
    assert not (run / runs.CHECKPOINTS).exists() and not any(p.name.endswith(".tmp") for p in run.parent.iterdir())
    # and it serves predict like any run
    from loraclf.infer.files import predict_file

    out = run.parent / "pred.csv"
    assert predict_file(run, run / runs.ROUNDS / "round-0" / PSEUDO_LABELS, out, quiet=True)["rows"] == 80


def _target_with_labels(src: Path, dst: Path, label) -> Path:
    df = pd.read_csv(src)
    df["label"] = label
    df.to_csv(dst, index=False)
    return dst


def test_unlabeled_and_target_data_never_select_the_model(base_overrides, tiny_data, tmp_path, monkeypatch):
    """Validation is always the labelled val split; changing the target labels changes no weight and no choice."""
    import loraclf.training.self_train as adapt_mod  # self_train calls the train() it imported
    from safetensors.torch import load_file

    seen = []
    real_train = adapt_mod.train

    def spy(cfg, **kw):
        seen.append((list(kw["splits"].validation["text"]), list(kw["splits"].train["text"])))
        return real_train(cfg, **kw)

    monkeypatch.setattr(adapt_mod, "train", spy)
    val_texts = pd.read_csv(tiny_data["val"])["text"].str.strip().tolist()
    titles = set(pd.read_csv(tiny_data["test"])["title"])
    results = []
    for name, label in (("true", pd.read_csv(tiny_data["test"])["label"]), ("wrong", 0)):
        target = _target_with_labels(tiny_data["test"], tmp_path / f"target_{name}.csv", label)
        out = tmp_path / name
        args = ["train", *base_overrides, f"output.dir={out}", f"data.target_eval={target}", "adapt.rounds=1",
                "adapt.threshold=0.0", "adapt.weighting=soft", "--quiet", "--json"]
        assert cli.main(args) == 0
        results.append(out / "adapt")
    assert len(seen) == 4
    for val, train in seen:
        assert val == val_texts  # selection data: the labelled val split, every round
        assert not titles & set(val)
    assert titles <= set(seen[1][1])  # the student did train on the pseudo-labelled titles
    a, b = (runs.read_json(r / ADAPT)["rounds"] for r in results)
    assert a[0]["target"]["loss"] != b[0]["target"]["loss"]  # the target labels did differ ...
    for ra, rb in zip(a, b):  # ... yet nothing that selects or trains moved
        assert ra["best_step"] == rb["best_step"] and ra["val"] == rb["val"]
        assert (results[0] / ra["run"] / PSEUDO_LABELS).read_text() == (results[1] / rb["run"] / PSEUDO_LABELS).read_text()
    wa, wb = (load_file(str(r / runs.ADAPTER / "adapter_model.safetensors")) for r in results)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    # inside every round the kept checkpoint is the best on val
    for r in results:
        for rec in runs.read_json(r / ADAPT)["rounds"]:
            evals = [h for h in runs.read_jsonl(r / rec["run"] / runs.HISTORY) if h["type"] == "eval"]
            best = max(evals, key=lambda h: h["accuracy"])  # first of equal bests, as train.py keeps
            assert rec["best_step"] == best["step"]


# ------------------------------------------------------------------------------------------ bad input


def _fails(args: list[str], capsys, *needles: str) -> str:
    assert cli.main(["train", *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("content, needle", [
    ("", "is empty"),
    ("title,source\n", "no rows"),
    ("headline,source\nStocks rise,wire\n", "has no text column 'title'"),
    ("title,source\n ,wire\n,wire\n", "has no usable texts"),
])
def test_bad_unlabeled_file_is_one_clear_error(base_overrides, tmp_path, capsys, content, needle):
    bad = tmp_path / "unlabeled.csv"
    bad.write_text(content)
    err = _fails([*base_overrides, f"output.dir={tmp_path / 'runs'}", f"data.unlabeled={bad}"], capsys, needle)
    assert "data.unlabeled" in err
    if "text column" in needle:
        assert "adapt.target_text_column" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_other_bad_settings_fail_before_training(base_overrides, tmp_path, capsys):
    out = tmp_path / "runs"
    base = [*base_overrides, f"output.dir={out}"]
    _fails([*base, "adapt.threshold=null"], capsys, "keep every pseudo-label")
    _fails([*base, "adapt.consistency=true", "augment.synonym_p=0"], capsys, "all 0")
    _fails([*base, "data.unlabeled=/nonexistent/u.csv"], capsys, "not found")
    _fails([*base, "data.target_eval=/nonexistent/t.csv"], capsys, "not found")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / runs.CONFIG).write_text(load_config(None, base).to_yaml())
    _fails(["--resume", str(saved)], capsys, "--resume does not apply to self-training")
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(ConfigError, match="needs data.unlabeled"):
        load_config(None, ["adapt.rounds=2"])


def test_target_eval_labels_must_be_known(base_overrides, tiny_data, tmp_path):
    target = _target_with_labels(tiny_data["test"], tmp_path / "t.csv", 7)
    cfg = load_config(None, [*base_overrides, f"output.dir={tmp_path}", f"data.target_eval={target}"])
    with pytest.raises(DataError, match="never seen in training"):
        self_train(cfg, quiet=True)


def test_fp16_training_precision_also_serves_the_teachers_predictions(tiny_bert, tmp_path):
    """train.mixed_precision=fp16 is one precision for training and for pseudo-labelling (it failed after the
    teacher had trained, when predict knew only fp32/bf16)."""
    import torch

    from helpers_infer import load_run_model
    from loraclf.infer.forward import predict_texts

    topics = {"sports": "the team won the match in the final minute", "business": "shares fell as the bank cut rates"}
    rows = [{"text": f"{t} number {i}", "label": name} for i in range(12) for name, t in topics.items()]
    pd.DataFrame(rows[:16]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[16:]).to_csv(tmp_path / "val.csv", index=False)
    pd.DataFrame({"text": [r["text"] + " today" for r in rows[:10]]}).to_csv(tmp_path / "unlabeled.csv", index=False)
    cfg = load_config(None, [
        f"model.name_or_path={tiny_bert}", f"data.train={tmp_path / 'train.csv'}",
        f"data.validation={tmp_path / 'val.csv'}", f"data.unlabeled={tmp_path / 'unlabeled.csv'}",
        "data.max_length=16", "train.max_steps=2", "train.per_device_train_batch_size=8", "eval.eval_steps=2",
        "train.mixed_precision=fp16", "adapt.rounds=1", "adapt.threshold=0.0", "output.report=false",
        f"output.dir={tmp_path / 'runs'}", "output.run_name=fp16", f"data.cache_dir={tmp_path / 'cache'}"])
    result = self_train(cfg, quiet=True)
    teacher = result.run_dir / runs.ROUNDS / "round-0"
    pl = pd.read_csv(teacher / PSEUDO_LABELS)
    assert len(pl) == 10 and pl["kept"].all()
    assert [r["pseudo_labels"]["kept"] for r in result.rounds] == [10, 10]
    # the pseudo-labels are the teacher's fp16 predictions: close to fp32, but really computed in half precision
    model, tok, _, _ = load_run_model(teacher)
    texts = pl["text"].tolist()
    p16 = predict_texts(model, tok, texts, max_length=16, precision="fp16")
    p32 = predict_texts(model, tok, texts, max_length=16, precision="fp32")
    probs = pl[[c for c in pl.columns if c.startswith("prob_")]].to_numpy(np.float32)
    np.testing.assert_allclose(probs, p16, atol=1e-6)
    assert np.abs(p16 - p32).max() < 0.01 and not np.array_equal(p16, p32)
    assert next(model.parameters()).dtype == torch.float32
