"""Hard data, mechanically (issue 18): the imbalance losses and sampler, long texts (head_tail, chunks pooled per
document) and the decision fitted on validation (F1 thresholds, temperature). Rows are made in the tests; runs use
the tiny BERT."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_rows
from loraclf import runs, task as problem
from loraclf.config import load_config
from loraclf.infer.forward import pool_windows, predict_logits
from loraclf.training import loss as loss_mod
from loraclf.training import train

SINGLE, MULTI = problem.SINGLE, problem.MULTI


def _spec(**kw) -> loss_mod.LossSpec:
    return loss_mod.LossSpec(kw.pop("problem_type", SINGLE), kw.pop("name", "cross_entropy"), **kw)


def _logits_labels(n=12, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 2, torch.randint(0, k, (n,), generator=g)


# ------------------------------------------------------------------------------------------ losses


def test_class_weighted_loss_is_torchs_weighted_cross_entropy():
    z, y = _logits_labels()
    w = [0.5, 2.0, 1.0, 3.0]
    got = loss_mod.loss_of(z, {"labels": y}, _spec(class_weights=w))
    want = F.cross_entropy(z, y, weight=torch.tensor(w))  # normalised by the sum of the rows' weights
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, F.cross_entropy(z, y), atol=1e-4)  # the weights do change it


def test_label_smoothing_matches_torch():
    z, y = _logits_labels(seed=1)
    got = loss_mod.loss_of(z, {"labels": y}, _spec(label_smoothing=0.1))
    assert torch.allclose(got, F.cross_entropy(z, y, label_smoothing=0.1), atol=1e-6)
    assert not torch.allclose(got, F.cross_entropy(z, y), atol=1e-4)


def test_focal_with_gamma_0_is_cross_entropy_and_gamma_2_down_weights_easy_rows():
    z, y = _logits_labels(seed=2)
    ce = F.cross_entropy(z, y)
    assert torch.allclose(loss_mod.loss_of(z, {"labels": y}, _spec(name="focal", focal_gamma=0.0)), ce, atol=1e-6)
    easy = torch.tensor([[6.0, 0.0, 0.0]])  # p_t ~ 0.995
    hard = torch.tensor([[0.0, 1.0, 0.0]])  # p_t ~ 0.21
    lab = torch.tensor([0])
    ratio = {}
    for name, row in (("easy", easy), ("hard", hard)):
        focal = loss_mod.loss_of(row, {"labels": lab}, _spec(name="focal", focal_gamma=2.0))
        ratio[name] = float(focal / F.cross_entropy(row, lab))
        p_t = float(torch.softmax(row, -1)[0, 0])
        assert ratio[name] == pytest.approx((1 - p_t) ** 2, rel=1e-5)  # (1 - p_t)^gamma
    assert ratio["easy"] < 1e-4 < 0.5 < ratio["hard"]


def test_class_weights_and_per_row_weights_compose():
    z, y = _logits_labels(seed=3)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    r = torch.linspace(0.1, 1.0, len(y))  # self-training's per-row confidence weights
    got = loss_mod.loss_of(z, {"labels": y, "weight": r}, _spec(class_weights=w.tolist()))
    per = F.cross_entropy(z, y, reduction="none")
    assert torch.allclose(got, (per * w[y] * r).sum() / (w[y] * r).sum(), atol=1e-6)
    # per-row weights alone: the weighted mean of the rows
    alone = loss_mod.loss_of(z, {"labels": y, "weight": r}, _spec())
    assert torch.allclose(alone, (per * r).sum() / r.sum(), atol=1e-6)


def test_balanced_class_weights_are_n_over_k_counts_and_multi_label_weights_are_neg_over_pos():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    cfg = load_config(None, ["train.class_weights=balanced"])
    spec = loss_mod.build(cfg, {0: "a", 1: "b", 2: "c"}, labels)
    assert spec.class_weights == pytest.approx([100 / (3 * 60), 100 / (3 * 30), 100 / (3 * 10)])
    assert spec.to_json({0: "a", 1: "b", 2: "c"})["class_weights"] == pytest.approx(
        {"a": 100 / 180, "b": 100 / 90, "c": 100 / 30})
    multi = np.array([[1, 0], [1, 1], [0, 0], [1, 0], [0, 1]])  # label 0: 3 pos 2 neg; label 1: 2 pos 3 neg
    cfg_m = load_config(None, ["train.class_weights=balanced", "model.problem_type=multi_label_classification"])
    spec_m = loss_mod.build(cfg_m, {0: "x", 1: "y"}, multi)
    assert spec_m.class_weights == pytest.approx([2 / 3, 3 / 2])
    z = torch.randn(5, 2)
    got = loss_mod.loss_of(z, {"labels": torch.tensor(multi, dtype=torch.float)}, spec_m)
    want = F.binary_cross_entropy_with_logits(z, torch.tensor(multi, dtype=torch.float),
                                              pos_weight=torch.tensor([2 / 3, 3 / 2]))
    assert torch.allclose(got, want, atol=1e-6)


# ------------------------------------------------------------------------------------------ the balanced sampler


def test_balanced_sampler_draws_classes_equally_and_still_groups_by_length():
    from loraclf.data.batches import BalancedSampler, LengthGroupedSampler

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], [1600, 300, 80, 20])  # 80 : 15 : 4 : 1
    lengths = rng.integers(5, 200, len(labels))
    bs = 32
    orders = [BalancedSampler(labels, lengths, bs, torch.Generator().manual_seed(s)).order() for s in range(3)]
    counts = np.bincount(labels[np.concatenate(orders)], minlength=4)
    expected = counts.sum() / 4
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3, counts  # p = 0.001 for 3 degrees of freedom; the natural mix would give ~10,000

    def mean_padding(order):
        batches = [lengths[order[i: i + bs]] for i in range(0, len(order), bs)]
        return float(np.mean([(b.max() - b).sum() / (b.max() * len(b)) for b in batches]))

    grouped = np.mean([mean_padding(o) for o in orders])
    plain = mean_padding(np.asarray(BalancedSampler(labels, None, bs, torch.Generator().manual_seed(0)).order()))
    unbalanced = mean_padding(LengthGroupedSampler(lengths, bs, torch.Generator().manual_seed(0)).order())
    assert grouped < 0.25 * plain  # random order pads ~50% here
    assert grouped < 2 * unbalanced + 0.02  # about as little as the plain length-grouped order


# ------------------------------------------------------------------------------------------ long texts


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert))


def _long_text(words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    vocab = ("river stone cloud garden market window engine paper silver forest bridge candle harbor planet "
             "winter meadow").split()
    return " ".join(rng.choice(vocab, words))


def test_head_tail_keeps_exactly_the_first_k_and_last_m_tokens(tokenizer):
    from loraclf.data import windows

    text, short = _long_text(300), _long_text(10, 1)
    data = load_config(None, ["data.long_text=head_tail", "data.max_length=64", "data.head_tokens=20"]).data
    enc = windows.encode(tokenizer, [text, short], None, data)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 64
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert enc["input_ids"][0] == [cls, *ids[:20], *ids[-(62 - 20):], sep]  # 64 = [CLS] + 20 + 42 + [SEP]
    assert enc["input_ids"][1] == tokenizer(short)["input_ids"]  # short texts are untouched
    assert enc["doc"] == [0, 1]
    assert len(enc["attention_mask"][0]) == 64


def test_chunks_overlap_by_stride_cover_the_text_and_carry_the_document_label(tokenizer):
    import datasets

    from loraclf.data import tokenize

    texts = [_long_text(250, 0), _long_text(5, 1), _long_text(120, 2)]
    data = load_config(None, ["data.long_text=chunks", "data.max_length=40", "data.stride=8"]).data
    ds = tokenize(datasets.Dataset.from_dict({"text": texts, "label": [2, 0, 1]}), tokenizer, data, cache=False)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for d, text in enumerate(texts):
        rows = [i for i, idx in enumerate(ds["index"]) if idx == d]
        assert {ds["label"][i] for i in rows} == {[2, 0, 1][d]}  # every window carries its document's label
        wins = [ds["input_ids"][i] for i in rows]
        assert all(w[0] == cls and w[-1] == sep and len(w) <= 40 for w in wins)
        body = [w[1:-1] for w in wins]
        for a, b in zip(body, body[1:]):
            assert a[-8:] == b[:8]  # consecutive windows share `stride` tokens
        joined = body[0] + [t for w in body[1:] for t in w[8:]]
        assert joined == tokenizer(text, add_special_tokens=False)["input_ids"]  # the whole text, once
    assert sum(1 for i in ds["index"] if i == 0) > 5


def test_pool_windows_mean_and_max():
    idx = np.array([0, 0, 0, 1, 2, 2])
    z = np.array([[1.0, 0.0], [3.0, -2.0], [2.0, 5.0], [0.5, 0.5], [-1.0, 1.0], [1.0, -3.0]])
    lab = np.array([1, 1, 1, 0, 1, 1])
    u, mean, ml = pool_windows(idx, z, lab, "mean")
    _, mx, _ = pool_windows(idx, z, lab, "max")
    assert u.tolist() == [0, 1, 2] and ml.tolist() == [1, 0, 1]
    assert np.allclose(mean, [[2.0, 1.0], [0.5, 0.5], [0.0, -1.0]])
    assert np.allclose(mx, [[3.0, 5.0], [0.5, 0.5], [1.0, 1.0]])


def _write(rows: list[dict], path) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _tiny_run(tiny_bert, tmp_path, files: dict, extra: list[str]):
    over = [f"model.name_or_path={tiny_bert}", f"data.train={files['train']}", f"data.validation={files['val']}",
            "data.max_length=32", "train.max_steps=8", "train.per_device_train_batch_size=16",
            "train.learning_rate=5e-3", "train.mixed_precision=fp32", "train.num_threads=1", "eval.eval_steps=4",
            "output.report=false", f"output.dir={tmp_path / 'runs'}", "output.run_name=hard",
            f"data.cache_dir={tmp_path / 'cache'}", *extra]
    if "test" in files:
        over.append(f"data.test={files['test']}")
    return train(load_config(None, over), quiet=True)


def test_a_chunked_run_counts_documents_and_pools_its_windows(tiny_bert, tmp_path):
    from loraclf import Classifier
    from loraclf.data import eval_loader, tokenize

    files = {s: _write(tiny_rows(n, seed), tmp_path / f"{s}.csv") for seed, (s, n) in
             enumerate((("train", 96), ("val", 30), ("test", 20)))}
    res = _tiny_run(tiny_bert, tmp_path, files, ["data.long_text=chunks", "data.stride=8"])
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["val"]["n"] == 30 and m["test"]["n"] == 20  # documents, not windows
    assert len(pd.read_csv(res.run_dir / "val_predictions.csv")) == 30

    clf = Classifier.from_run(res.run_dir)
    data = load_config(None, ["data.long_text=chunks", "data.max_length=32", "data.stride=8"]).data
    import datasets

    val = pd.read_csv(files["val"])
    ds = tokenize(datasets.Dataset.from_dict({"text": list(val["text"]), "label": list(val["label"])}),
                  clf.model.tokenizer, data, cache=False)
    assert len(ds) > 45  # most documents are several windows
    model = clf.model.model
    with torch.inference_mode():  # every window's logits, by hand
        win = np.concatenate([model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask]),
                                    token_type_ids=torch.tensor([tt])).logits.numpy()
                              for ids, mask, tt in zip(ds["input_ids"], ds["attention_mask"], ds["token_type_ids"])])
    idx = np.asarray(ds["index"])
    for how, reduce in (("mean", np.mean), ("max", np.max)):
        u, pooled, labels = predict_logits(model, eval_loader(ds, clf.model.tokenizer, 16), pooling=how)
        assert u.tolist() == list(range(30)) and labels.tolist() == list(val["label"])
        want = np.stack([reduce(win[idx == d], axis=0) for d in range(30)])
        assert np.allclose(pooled, want, atol=1e-4), how
    # the API reads the run's own settings: one row per document, in input order, the mean-pooled softmax
    probs = clf.predict_proba(list(val["text"]), quiet=True)
    mean = np.stack([win[idx == d].mean(0) for d in range(30)])
    assert np.allclose(probs, problem.outputs(mean, problem.Decision()), atol=1e-4)


# ------------------------------------------------------------------------------------------ the decision


def test_f1_thresholds_temperature_and_loss_json_on_a_binary_run(tiny_bert, tmp_path):
    from loraclf import Classifier
    from loraclf.infer.metrics import calibration_error

    def binary(n, seed):  # Sports against the rest: 1 in 4 rows positive
        return [{"text": r["text"], "label": int(r["label"] == 1)} for r in tiny_rows(n, seed)]

    files = {"train": _write(binary(160, 0), tmp_path / "train.csv"), "val": _write(binary(80, 1), tmp_path / "val.csv")}
    res = _tiny_run(tiny_bert, tmp_path, files, ["train.class_weights=balanced", "eval.tune_thresholds=f1",
                                                 "eval.calibration=temperature"])
    run = res.run_dir
    lj = json.loads((run / "loss.json").read_text())
    counts = np.bincount([r["label"] for r in binary(160, 0)])
    assert lj["name"] == "cross_entropy"
    assert lj["class_weights"] == pytest.approx({"0": 160 / (2 * counts[0]), "1": 160 / (2 * counts[1])})

    decision = runs.Run.open(run).decision
    saved = json.loads((run / "decision.json").read_text())
    assert saved["thresholds"] == decision.thresholds and len(decision.thresholds) == 1
    assert saved["threshold_metric"] == "f1" and decision.temperature != 1.0

    val = pd.read_csv(files["val"])
    y = val["label"].to_numpy()
    probs = Classifier.from_run(run).predict_proba(list(val["text"]), quiet=True)  # calibrated
    tuned, argmax = problem.predictions(probs, decision), probs.argmax(-1)
    assert (tuned != argmax).any()  # the threshold changes predictions

    def f1(pred):
        tp = int(((pred == 1) & (y == 1)).sum())
        return 2 * tp / max(int((pred == 1).sum()) + int((y == 1).sum()), 1)

    assert f1(tuned) >= f1(argmax)
    m = json.loads((run / "metrics.json").read_text())
    assert m["val"]["per_class"]["1"]["f1"] == pytest.approx(f1(tuned), abs=1e-6)  # metrics use the thresholds

    cal = m["calibration"]["val"]
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9  # fitted on these rows: never worse
    assert calibration_error(y, probs) == pytest.approx(cal["ece_after"], abs=1e-4)  # predict is calibrated
    # the temperature leaves the most probable class alone: the same accuracy as the loop's own (T = 1) eval
    best = [r for r in res.history if r.get("type") == "eval" and r["step"] == m["best_step"]][-1]
    raw_acc = float((probs.argmax(-1) == y).mean())
    assert raw_acc == pytest.approx(best["accuracy"], abs=1e-9)


def test_a_stride_the_tokenizer_cannot_window_is_one_line_and_no_run_folder(tiny_bert, tiny_data, tmp_path):
    import os
    import subprocess
    import sys

    # max_length 32 holds 30 text tokens with [CLS] and [SEP]: config_checks lets stride 30 through (< 32), the
    # tokenizer itself would panic
    cmd = [sys.executable, "-m", "loraclf", "train", f"model.name_or_path={tiny_bert}",
           f"data.train={tiny_data['train']}", f"data.validation={tiny_data['val']}", "data.max_length=32",
           "data.long_text=chunks", "data.stride=30", "train.max_steps=1", "output.report=false",
           f"output.dir={tmp_path / 'runs'}", "output.run_name=stride", f"data.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "'data.stride' (30) must be smaller than the 30 text tokens of a window (data.max_length 32 less this " \
           "tokenizer's 2 special tokens); set data.stride to 29 or less" in lines[0]
    assert not (tmp_path / "runs" / "stride").exists()


def test_soft_targets_take_the_class_weights_and_smoothing_and_one_hot_is_the_hard_loss():
    z, y = _logits_labels(seed=4)
    w = [0.5, 2.0, 1.0, 3.0]
    r = torch.linspace(0.2, 1.0, len(y))
    spec = _spec(class_weights=w, label_smoothing=0.1)
    hard = loss_mod.loss_of(z, {"labels": y, "weight": r}, spec)
    one_hot = loss_mod.loss_of(z, {"soft_labels": F.one_hot(y, 4).float(), "weight": r}, spec)
    assert torch.allclose(one_hot, hard, atol=1e-6)  # self-training's labelled rows: the same loss either way
    q = torch.softmax(torch.randn(len(y), 4, generator=torch.Generator().manual_seed(5)), -1)
    got = loss_mod.loss_of(z, {"soft_labels": q}, _spec(class_weights=w))
    row_w = (q * torch.tensor(w)).sum(-1)
    per = -(q * torch.tensor(w) * torch.log_softmax(z, -1)).sum(-1)  # each class's term by its weight, as torch
    assert torch.allclose(got, per.sum() / row_w.sum(), atol=1e-6)
    assert not torch.allclose(got, loss_mod.loss_of(z, {"soft_labels": q}, _spec()), atol=1e-4)


@pytest.mark.parametrize("setting, message", [
    ("train.class_weights=balanced", "'train.class_weights: balanced' counts the classes of the whole training split, "
                                     "which a stream never holds at once"),
    ("data.sampling=balanced", "'data.sampling: balanced' draws from every class of the whole training split, which "
                               "a stream never holds at once; set data.sampling=random or data.streaming=false"),
])
def test_balanced_weights_or_sampling_on_a_stream_is_refused_in_validation(tmp_path, setting, message):
    from loraclf.base.errors import ConfigError

    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(8, seed=3)))
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"data.train={train_file}", "data.streaming=true", "train.max_steps=4",
                           "eval.eval_steps=2", setting])
    assert message in str(e.value) and "\n" not in str(e.value)
