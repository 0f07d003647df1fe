"""Tiny models whose outputs vary from text to text, so that a test comparing two computations can fail.

make_tiny_model draws weights at transformers' std of 0.02: in a 32-wide model the [CLS] state is then nearly its own
embedding, and the logits are about 0.008 and the same for every text. Here every weight is drawn at std
1/sqrt(32) instead (`initializer_range`, which the task head added at build time follows too).
"""

from __future__ import annotations

from pathlib import Path

from conftest import make_tiny_model

VARIED_STD = 32 ** -0.5  # 1/sqrt(hidden): a layer's output is as large as its input


def varied_model(folder: Path, tokenizer_src: Path, model_type: str = "bert", dropout: bool = True) -> Path:
    """make_tiny_model's encoder re-drawn at VARIED_STD (seeded); dropout=False turns every dropout off."""
    import torch
    from transformers import AutoConfig, AutoModel

    make_tiny_model(folder, tokenizer_src, model_type)
    cfg = AutoConfig.from_pretrained(folder)
    cfg.initializer_range = VARIED_STD
    if not dropout:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                    "seq_classif_dropout", "classifier_dropout"):
            if hasattr(cfg, key):
                setattr(cfg, key, 0.0)
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(folder)
    cfg.save_pretrained(folder)
    return folder
