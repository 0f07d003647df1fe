"""Model cards: every adapter/ folder gets a Hugging Face README.md whose metadata parses offline and whose metric
values are the run's metrics.json."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from loraclf.publish import card
from loraclf import runs
from loraclf.config import load_config
from loraclf.training import train

WORDS = {"sport": "match goal team coach league", "money": "bank shares market profit trade"}


def _rows(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        label = ("sport", "money")[i % 2]
        w = WORDS[label].split()
        rows.append({"text": f"{w[i % 5]} {w[(i + 2) % 5]} news {i}", "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def card_run(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("card")
    for name, n in (("train", 40), ("val", 12), ("test", 10)):
        _rows(n).to_csv(root / f"{name}.csv", index=False)
    cfg = load_config(None, [f"model.name_or_path={tiny_bert}", f"data.train={root / 'train.csv'}",
                             f"data.validation={root / 'val.csv'}", f"data.test={root / 'test.csv'}",
                             "data.max_length=16", "train.max_steps=2", "train.mixed_precision=fp32",
                             "output.report=false", f"output.dir={root / 'runs'}", "output.run_name=carded",
                             f"data.cache_dir={root / 'cache'}", "budget.max_trainable_params=1000000"])
    return train(cfg, quiet=True).run_dir


def _assert_card_metrics_are_the_runs(meta, run) -> dict:
    """Every model-index value equals metrics.json's (val and test: accuracy, macro-F1, loss); returns metrics.json."""
    metrics = json.loads((run / runs.METRICS).read_text())
    got = {(r.dataset_split, r.metric_type): r.metric_value for r in meta.eval_results}
    for key, split in (("val", "validation"), ("test", "test")):
        assert got[(split, "accuracy")] == metrics[key]["accuracy"]
        assert got[(split, "f1")] == metrics[key]["macro_f1"]
        assert got[(split, "loss")] == metrics[key]["loss"]
    return metrics


def test_adapter_card_parses_offline_and_holds_the_runs_metrics(card_run):
    from huggingface_hub import ModelCard

    loaded = ModelCard.load(card_run / runs.ADAPTER / runs.MODEL_CARD)
    meta = loaded.data
    assert meta.library_name == "peft" and meta.pipeline_tag == "text-classification"
    assert meta.base_model == "bert"  # the tiny model is a local folder named bert: its name stands in
    assert "loraclf" in meta.tags
    metrics = _assert_card_metrics_are_the_runs(meta, card_run)
    body = loaded.text
    assert "0: money" in body and "1: sport" in body  # the label map
    assert f"{metrics['trainable_params']:,} trainable parameters" in body
    assert "under a cap of 1,000,000" in body
    assert "loraclf train carded/config.yaml" in body
    assert "Validation 12 rows, test 10 rows" in body


def test_export_card_parses_offline_and_holds_the_runs_metrics(card_run, tmp_path):
    from huggingface_hub import ModelCard

    from loraclf.publish.export import export_run

    folder = tmp_path / "export"
    export_run(card_run, folder)
    loaded = ModelCard.load(folder / runs.MODEL_CARD)
    meta = loaded.data
    assert meta.library_name == "transformers" and meta.pipeline_tag == "text-classification"
    assert meta.base_model == "bert" and "loraclf" in meta.tags
    _assert_card_metrics_are_the_runs(meta, card_run)
    assert "adapter merged in" in loaded.text and "0: money" in loaded.text


def test_base_model_and_dataset_ids():
    assert card.base_model_id("packaged:minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.base_model_id("FacebookAI/roberta-base") == "FacebookAI/roberta-base"
    assert card.base_model_id("/some/local/folder/my-encoder") == "my-encoder"
    assert card.dataset_ids({"name": "packaged:trec6"}) == ["CogComp/trec"]
    assert card.dataset_ids({"name": "ag_news"}) == ["ag_news"]
    assert card.dataset_ids({"name": "ag_news", "train": "/data/train.csv"}) == []


def test_push_stages_the_exact_adapter_folder(card_run, tmp_path):
    from loraclf.publish import push

    folder = push.stage(card_run, tmp_path / "upload", "adapter")
    names = sorted(p.name for p in folder.iterdir())
    expected = sorted({p.name for p in (card_run / runs.ADAPTER).iterdir()} |
                      {p.name for p in (card_run / runs.TOKENIZER).iterdir()})
    assert names == expected
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer_config.json"} <= set(names)
    assert (folder / "README.md").read_text() == (card_run / runs.ADAPTER / runs.MODEL_CARD).read_text()


def test_push_fails_offline_with_one_line(card_run, monkeypatch):
    from loraclf.publish import push
    from loraclf.base.errors import RunError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RunError) as e:
        push.push(card_run, "someone/loraclf-test")
    msg = str(e.value)
    assert msg.startswith("cannot push adapter to the Hugging Face Hub repo someone/loraclf-test:")
    assert "\n" not in msg
    with pytest.raises(RunError, match="not a Hugging Face repo id"):
        push.push(card_run, "no slash")
