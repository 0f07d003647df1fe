"""data.streaming: the training split read as a `datasets` stream (shuffle buffer, per-epoch reshuffle, tokenized on
the fly), with its label set from the validation data, required step counts, one-line errors for bad rows met
mid-stream, and resume by rows consumed that continues the uninterrupted run exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import loraclf.data as data
from loraclf import runs
from loraclf.config import load_config
from loraclf.base.errors import ConfigError, DataError

# one torch thread: on a small shared machine more threads than free cores make the tiny model several times slower
STREAM = ["data.streaming=true", "data.shuffle_buffer_size=64", "train.num_threads=1"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """train.num_threads sets torch's process-wide thread count; give the next test file the count it had."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _stream_cfg(*overrides):
    return load_config(None, ["train.max_steps=10", "eval.eval_steps=5", *STREAM, *overrides])


def _pass(splits, tok, cfg, epoch: int, skip: int = 0, batch: int = 16) -> list[tuple[tuple[int, ...], int]]:
    """One pass of the training stream as (token ids without padding, label) rows, in the order trained on."""
    loader = data.stream_loader(splits.train, tok, cfg.data, splits.id2label, batch, cfg.train.seed, epoch, skip=skip)
    rows = []
    for b in loader:
        for ids, mask, label in zip(b["input_ids"].tolist(), b["attention_mask"].tolist(), b["labels"].tolist()):
            rows.append((tuple(i for i, m in zip(ids, mask) if m), label))
    return rows


@pytest.fixture
def tok(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


@pytest.fixture
def hub_folder(tmp_path, tiny_data) -> Path:
    """A dataset folder read the way a hub dataset is (data.name): the train split in 3 files (3 shards), and a
    validation split."""
    folder = tmp_path / "ag_hub"
    folder.mkdir()
    train = pd.read_csv(tiny_data["train"])
    for i in range(3):
        train.iloc[i * 80:(i + 1) * 80].to_csv(folder / f"train-0000{i}-of-00003.csv", index=False)
    pd.read_csv(tiny_data["val"]).to_csv(folder / "validation.csv", index=False)
    return folder


# ------------------------------------------------------------------------------------------ the stream itself


def test_a_pass_reads_every_row_once_and_the_next_pass_reshuffles(tiny_data, tok):
    cfg = _stream_cfg(f"data.train={tiny_data['train']}", f"data.validation={tiny_data['val']}", "data.max_length=32")
    splits = data.load_splits(cfg.data, log=lambda m: None)
    assert splits.id2label == {0: "0", 1: "1", 2: "2", 3: "3"} and splits.int_labels
    assert len(splits.validation) == 80
    df = pd.read_csv(tiny_data["train"])
    enc = tok(df["text"].tolist(), truncation=True, max_length=32)["input_ids"]
    file_rows = list(zip(map(tuple, enc), df["label"].tolist()))

    first, second = _pass(splits, tok, cfg, 0), _pass(splits, tok, cfg, 1)
    assert len(first) == len(second) == 240  # 15 full batches of 16
    assert Counter(first) == Counter(second) == Counter(file_rows)  # every row once per pass, tokenized as a Dataset is
    assert first != file_rows and second != first  # shuffled, and reshuffled by set_epoch
    assert _pass(splits, tok, cfg, 1) == second  # seeded: the same pass twice is the same order


@pytest.mark.parametrize("epoch", [0, 1])
def test_a_resumed_pass_continues_where_the_uninterrupted_one_was(hub_folder, tok, epoch):
    # 3 shards: datasets' skip() would freeze the shard order that set_epoch reshuffles in epoch 1
    cfg = _stream_cfg(f"data.name={hub_folder}", "data.max_length=32")
    splits = data.load_splits(cfg.data, log=lambda m: None)
    assert len(splits.validation) == 80 and splits.test is None  # the dataset's own validation split
    full = _pass(splits, tok, cfg, epoch)
    assert len(full) == 240
    assert _pass(splits, tok, cfg, epoch, skip=48) == full[48:]
    assert _pass(splits, tok, cfg, epoch, skip=48, batch=32) == full[48:48 + 6 * 32]  # a new global batch


def test_validation_held_out_from_the_head_of_the_stream(tiny_data, tok):
    notes = []
    cfg = _stream_cfg(f"data.train={tiny_data['train']}", "data.validation_split=40", "data.max_length=32")
    splits = data.load_splits(cfg.data, log=notes.append)
    head = pd.read_csv(tiny_data["train"]).head(40)
    assert list(splits.validation["text"]) == head["text"].str.strip().tolist()  # cleaned as every path cleans
    held_out = set(map(tuple, tok(head["text"].tolist(), truncation=True, max_length=32)["input_ids"]))
    for epoch in (0, 1):
        rows = _pass(splits, tok, cfg, epoch, batch=8)
        assert len(rows) == 200 and not held_out & {ids for ids, _ in rows}
    assert any("first 40 rows" in n for n in notes)


def test_label_names_give_classes_the_validation_data_lacks(tiny_data, tmp_path):
    val = pd.read_csv(tiny_data["val"])
    val[val["label"] != 3].to_csv(tmp_path / "val.csv", index=False)
    names = "data.label_names=[World,Sports,Business,Sci/Tech]"
    splits = data.load_splits(_stream_cfg(f"data.train={tiny_data['train']}", f"data.validation={tmp_path / 'val.csv'}",
                                          names).data, log=lambda m: None)
    assert splits.id2label == {0: "World", 1: "Sports", 2: "Business", 3: "Sci/Tech"}
    # without names, the label set is what the validation data has
    splits = data.load_splits(_stream_cfg(f"data.train={tiny_data['train']}",
                                          f"data.validation={tmp_path / 'val.csv'}").data, log=lambda m: None)
    assert splits.id2label == {0: "0", 1: "1", 2: "2"}


def test_streaming_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.streaming=true", "augment.enabled=true"])
    problems = e.value.problems
    assert any("needs train.max_steps" in p for p in problems)
    assert any("needs eval.eval_steps" in p for p in problems)
    assert any("packaged:trec6 is small and read whole" in p for p in problems)
    assert any("'augment.enabled' does not apply to a stream" in p for p in problems)
    assert load_config(None, ["data.name=ag_news", "train.max_steps=5", "eval.eval_steps=5", *STREAM]).data.streaming


@pytest.mark.parametrize("case, match", [
    ("fraction", r"set data.validation to a file, or data.validation_split to a row count .* a fraction \(0.1\)"),
    ("pickle", r"streams \.csv \.tsv \.json \.jsonl \.parquet files, not '\.pkl'"),
    ("column", r"has no text column 'body'; columns are: text, label, title, description"),
    ("one_class", r"label set is read from the validation data .* which has only one class"),
    ("too_few", r"has only 240 rows, none left for training after data.validation_split=300"),
])
def test_bad_streaming_inputs_are_one_line_errors(tiny_data, tmp_path, case, match):
    val = pd.read_csv(tiny_data["val"])
    val[val["label"] == 0].to_csv(tmp_path / "one.csv", index=False)
    (tmp_path / "t.pkl").write_bytes(b"not read")
    overrides = {
        "fraction": [f"data.train={tiny_data['train']}"],
        "pickle": [f"data.train={tmp_path / 't.pkl'}", f"data.validation={tiny_data['val']}"],
        "column": [f"data.train={tiny_data['train']}", f"data.validation={tiny_data['val']}", "data.text_column=body"],
        "one_class": [f"data.train={tiny_data['train']}", f"data.validation={tmp_path / 'one.csv'}"],
        "too_few": [f"data.train={tiny_data['train']}", "data.validation_split=300"],
    }[case]
    with pytest.raises(DataError, match=match) as e:
        data.load_splits(_stream_cfg(*overrides).data, log=lambda m: None)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ training on a stream


def test_streamed_training_writes_a_complete_run_folder(tiny_overrides):
    from loraclf.training import train

    # 240 rows at batch 16 are 15 steps a pass: 20 steps cross into a reshuffled second pass
    result = train(load_config(None, tiny_overrides + [*STREAM, "train.max_steps=20", "eval.eval_steps=5"]), quiet=True)
    run = result.run_dir
    for name in ("config.yaml", "label_map.json", "params.json", "history.jsonl", "metrics.json",
                 "val_predictions.csv", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    assert runs.checkpoint_dirs(run)
    m = json.loads((run / "metrics.json").read_text())
    assert m["global_step"] == 20 and m["effective_batch_size"] == 16
    for split in ("val", "test"):
        assert np.array(m[split]["confusion_matrix"]).sum() == 80 and 0 <= m[split]["accuracy"] <= 1
    hist = runs.read_jsonl(run / "history.jsonl")
    train_recs = [r for r in hist if r["type"] == "train"]
    assert [r["step"] for r in train_recs] == list(range(2, 21, 2))
    assert [r["step"] for r in hist if r["type"] == "eval"] == [5, 10, 15, 20]
    assert [r["epoch"] for r in train_recs] == [0] * 7 + [1] * 3  # the pass index: a stream has no length
    losses = [r["loss"] for r in train_recs]
    assert all(np.isfinite(losses)) and min(losses) < losses[0]
    assert json.loads((run / "label_map.json").read_text())["id2label"] == {"0": "0", "1": "1", "2": "2", "3": "3"}
    assert "streaming: true" in (run / "config.yaml").read_text()


def test_resume_continues_the_stream_like_an_uninterrupted_run(tiny_overrides):
    from loraclf.training import train

    base = tiny_overrides + [*STREAM, "train.max_steps=18", "eval.eval_steps=4", "train.logging_steps=1"]
    ref = train(load_config(None, base + ["output.run_name=ref"]), quiet=True)

    class Stop(Exception):
        pass

    def stop_at_8(step, metrics):
        if step == 8:  # after step 8's evaluation, before its checkpoint: the newest is step-4
            raise Stop

    cfg = load_config(None, base + ["output.run_name=cut"])
    with pytest.raises(Stop):
        train(cfg, quiet=True, on_eval=stop_at_8)
    run = ref.run_dir.parent / "cut"
    state = json.loads((runs.checkpoint_dirs(run)[-1] / "state.json").read_text())
    assert (state["step"], state["epoch"], state["samples_in_epoch"]) == (4, 0, 4 * 16)
    resumed = train(cfg, resume=run, quiet=True)  # continues past the end of the first pass (step 15)

    def trajectory(history, kind):
        return [(r["step"], r["loss"]) for r in history if r["type"] == kind]

    for kind in ("train", "eval"):
        a, b = trajectory(ref.history, kind), trajectory(resumed.history, kind)
        assert [s for s, _ in a] == [s for s, _ in b]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-6, (a, b)
    assert resumed.metrics["test"]["accuracy"] == ref.metrics["test"]["accuracy"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loraclf", "train", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_streaming_without_step_counts_is_a_clear_error(tiny_data, tmp_path):
    r = _cli(["data.streaming=true", f"data.train={tiny_data['train']}", f"output.dir={tmp_path / 'runs'}"], tmp_path)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line
    assert "needs train.max_steps" in line and "needs eval.eval_steps" in line
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def bad_label_train(tiny_data, tmp_path) -> Path:
    """The tiny_data training rows with an unknown label (9) on the last one, which a buffer of 16 yields late."""
    df = pd.read_csv(tiny_data["train"])
    df.loc[len(df) - 1, "label"] = 9
    path = tmp_path / "bad_label.csv"
    df.to_csv(path, index=False)
    return path


def test_an_unknown_label_mid_stream_is_a_clear_error_and_leaves_no_run_folder(tiny_overrides, bad_label_train, tmp_path):
    args = [a for a in tiny_overrides if not a.startswith("data.train=")]
    args += [f"data.train={bad_label_train}", *STREAM, "data.shuffle_buffer_size=16", "train.max_steps=30",
             "eval.eval_steps=100", "--quiet"]  # 30 steps: no too-few-steps warning line before the error
    r = _cli(args, tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line, line
    assert "rows with labels outside the label set read before training: 9" in line
    assert line.endswith("no run folder was kept")
    assert not (tmp_path / "runs" / "tiny").exists()


def test_an_unknown_label_after_a_checkpoint_keeps_the_run_to_resume(tiny_overrides, tiny_data, tmp_path):
    from loraclf.training import train

    # 2,000 rows, the last one with label 9: the stream cleans STREAM_MAP_BATCH rows at a time, so the bad row
    # is met after ~1,000 rows (step ~16 at batch 64), past the checkpoints of steps 5, 10 and 15
    df = pd.read_csv(tiny_data["train_2000"]).head(2 * data.STREAM_MAP_BATCH)
    df.loc[len(df) - 1, "label"] = 9
    df.to_csv(tmp_path / "bad_late.csv", index=False)
    overrides = [a for a in tiny_overrides if not a.startswith("data.train=")]
    cfg = load_config(None, overrides + [f"data.train={tmp_path / 'bad_late.csv'}", *STREAM, "data.shuffle_buffer_size=16",
                                         "train.per_device_train_batch_size=64", "train.max_steps=40", "eval.eval_steps=5"])
    with pytest.raises(DataError, match=r"outside the label set .*keeps its checkpoints: fix the data, then "
                                        r"`loraclf train --resume .*tiny`") as e:
        train(cfg, quiet=True)
    assert "\n" not in str(e.value)
    run = Path(cfg.output.dir) / "tiny"
    assert runs.checkpoint_dirs(run) and not (run / "metrics.json").exists()


# ------------------------------------------------------------------------------------------ two processes


@pytest.mark.slow
def test_two_processes_stream_like_one_and_their_checkpoint_resumes_in_one(no_dropout_bert, tiny_data, tmp_path):
    # a constant schedule, so that a run stopped at step 4 and continued to 8 follows an 8-step run exactly
    base = [f"model.name_or_path={no_dropout_bert}", f"data.train={tiny_data['train']}",
            f"data.validation={tiny_data['val']}", "data.max_length=32", *STREAM, "train.mixed_precision=fp32",
            "train.logging_steps=1", "train.learning_rate=5e-3", "train.lr_scheduler_type=constant_with_warmup",
            "train.warmup_steps=0", "adapter.lora_dropout=0", "eval.eval_steps=4", "output.report=false",
            f"output.dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "--quiet"]
    for args in (["output.run_name=one", "train.per_device_train_batch_size=16", "train.max_steps=8"],
                 ["output.run_name=two", "train.per_device_train_batch_size=8", "train.max_steps=4", "--nproc", "2"],
                 ["--resume", str(tmp_path / "runs" / "two"), "train.per_device_train_batch_size=16",
                  "train.max_steps=8"]):
        r = _cli(base + args, tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert m2["global_step"] == 8 and m2["num_processes"] == 1
    l1 = [(h["step"], h["loss"]) for h in runs.read_jsonl(one / "history.jsonl") if h["type"] == "train"]
    l2 = [(h["step"], h["loss"]) for h in runs.read_jsonl(two / "history.jsonl") if h["type"] == "train"]
    assert [s for s, _ in l1] == [s for s, _ in l2] == list(range(1, 9))
    # stated tolerance: 1e-4 absolute, float rounding of a batch summed in two halves
    assert max(abs(a - b) for (_, a), (_, b) in zip(l1, l2)) < 1e-4, (l1, l2)
    assert abs(m1["val"]["loss"] - m2["val"]["loss"]) < 1e-4
