"""Data-parallel training in 2 CPU processes (DDP over gloo, started by `loraclf train --nproc 2`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from loraclf import runs


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "loraclf", "train", *args], capture_output=True, text=True, cwd=cwd,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _base(model: Path, tiny_data: dict, tmp_path: Path, val: Path) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={tiny_data['train']}", f"data.validation={val}",
            "data.max_length=32", "train.max_steps=6", "train.mixed_precision=fp32", "train.logging_steps=1",
            "train.learning_rate=5e-3", "adapter.lora_dropout=0", "eval.eval_steps=3", "output.report=false",
            f"output.dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "--quiet"]


@pytest.mark.slow
def test_two_processes_match_one_process_at_the_same_effective_batch(no_dropout_bert, tiny_data, tmp_path):
    val = tmp_path / "val79.csv"  # an odd size, so the last evaluation batch is padded across processes
    pd.read_csv(tiny_data["val"]).head(79).to_csv(val, index=False)
    base = _base(no_dropout_bert, tiny_data, tmp_path, val)
    _train(base + ["output.run_name=one", "train.per_device_train_batch_size=16"], tmp_path)
    _train(base + ["output.run_name=two", "train.per_device_train_batch_size=8", "--nproc", "2"], tmp_path)
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"

    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert (m1["num_processes"], m1["effective_batch_size"]) == (1, 16)
    assert (m2["num_processes"], m2["effective_batch_size"]) == (2, 16)
    # the loss trajectory matches within float rounding (stated tolerance: 1e-4 absolute)
    l1 = [h["loss"] for h in runs.read_jsonl(one / "history.jsonl") if h["type"] == "train"]
    l2 = [h["loss"] for h in runs.read_jsonl(two / "history.jsonl") if h["type"] == "train"]
    assert len(l1) == len(l2) == 6
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-4, (l1, l2)
    assert abs(m1["val"]["loss"] - m2["val"]["loss"]) < 1e-4
    # evaluation gathered across 2 processes counts every row once: 79, not 80
    assert m2["val"]["n"] == 79
    # and equals a 1-process evaluation of the same weights exactly
    r = subprocess.run([sys.executable, "-m", "loraclf", "evaluate", str(two), "--data", str(val), "--quiet",
                        "--output", str(tmp_path / "eval.json")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    single = json.loads((tmp_path / "eval.json").read_text())
    assert single["n"] == 79
    assert single["accuracy"] == m2["val"]["accuracy"]
    assert single["confusion_matrix"] == m2["val"]["confusion_matrix"]


@pytest.mark.slow
def test_checkpoint_from_two_processes_resumes_in_one(no_dropout_bert, tiny_data, tmp_path):
    base = _base(no_dropout_bert, tiny_data, tmp_path, tiny_data["val"])
    _train(base + ["output.run_name=r", "train.per_device_train_batch_size=8", "train.max_steps=3", "--nproc", "2"], tmp_path)
    run = tmp_path / "runs" / "r"
    assert runs.checkpoint_dirs(run)[-1].name == "step-3"
    _train(["--resume", str(run), "train.max_steps=6", "train.per_device_train_batch_size=16", "--quiet"], tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["global_step"] == 6 and m["num_processes"] == 1
    steps = [h["step"] for h in runs.read_jsonl(run / "history.jsonl") if h["type"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # continued, not restarted, and no duplicates
