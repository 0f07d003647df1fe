"""Mean-pooled embeddings of the config's base encoder (no adapter, no head): what near-duplicates are judged on."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..config import Config
from ..model.build import load_model_config, load_tokenizer, quiet_transformers

EMBED_BATCH = 64


def load_encoder(cfg: Config):
    """The base encoder (AutoModel) and its tokenizer, in eval mode on the CPU."""
    from transformers import AutoModel

    quiet_transformers()
    path, model_config = load_model_config(cfg)
    tokenizer = load_tokenizer(path, cfg)
    encoder = AutoModel.from_pretrained(path, config=model_config, revision=cfg.model.revision,
                                        trust_remote_code=cfg.model.trust_remote_code)
    return encoder.eval(), tokenizer


@torch.inference_mode()
def embed(encoder, tokenizer, texts: list[str], pairs: Optional[list[str]], max_length: int) -> np.ndarray:
    """One L2-normalised float32 row per text: the mean of the last hidden states over real tokens."""
    out = []
    for start in range(0, len(texts), EMBED_BATCH):
        batch = texts[start:start + EMBED_BATCH]
        second = pairs[start:start + EMBED_BATCH] if pairs is not None else None
        enc = tokenizer(batch, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        if "token_type_ids" in enc and "token_type_ids" not in _accepts(encoder):  # DistilBERT-like encoders
            del enc["token_type_ids"]
        hidden = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(mean.float(), dim=-1).numpy())
    width = out[0].shape[1] if out else getattr(encoder.config, "hidden_size", 1)
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def _accepts(encoder) -> set[str]:
    import inspect

    return set(inspect.signature(encoder.forward).parameters)
