"""Per-architecture tables: module names of each encoder family, target presets, and the head layout.

A leaf module: it imports nothing of loraclf but the errors, so model, methods and budget all read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ..base.errors import ModelError, did_you_mean


@dataclass(frozen=True)
class Family:
    """Module names of one architecture family, as PEFT matches them (suffixes of module paths)."""

    q: str
    k: str
    v: str
    o: str
    ffn: tuple[str, ...]
    head: tuple[str, ...]  # modules trained in full as the "full" head (PEFT modules_to_save)
    head_dense: Optional[str]  # the head's hidden dense layer: frozen for head=linear, LoRA-adapted for head=lora
    head_out: tuple[str, ...] = ("classifier",)  # the head's final projection, trained in full by linear and lora
    # bert's pooler comes pretrained with the encoder; every other family's head dense starts random
    head_dense_pretrained: bool = False
    # where train.prefix_cache cuts the encoder (paths inside the task model's base_model): the embeddings, and the
    # list of layers the encoder loops over. None where the encoder does more than loop over that list (ELECTRA
    # projects the embeddings, DeBERTa-v2 adds a convolution after layer 0), so it cannot start at layer L
    embeddings: Optional[str] = "embeddings"
    layers: Optional[str] = "encoder.layer"


_BERT = Family("query", "key", "value", "attention.output.dense", ("intermediate.dense", "output.dense"),
               ("pooler", "classifier"), "pooler.dense", head_dense_pretrained=True)
_ROBERTA = Family("query", "key", "value", "attention.output.dense", ("intermediate.dense", "output.dense"),
                  ("classifier",), "classifier.dense", ("classifier.out_proj",))
FAMILIES: dict[str, Family] = {
    "bert": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "electra": dataclasses.replace(_ROBERTA, layers=None),
    "mpnet": Family("q", "k", "v", "attn.o", ("intermediate.dense", "output.dense"), ("classifier",), "classifier.dense",
                    ("classifier.out_proj",)),
    "distilbert": Family("q_lin", "k_lin", "v_lin", "out_lin", ("lin1", "lin2"), ("pre_classifier", "classifier"), "pre_classifier",
                         layers="transformer.layer"),
    "deberta-v2": Family("query_proj", "key_proj", "value_proj", "attention.output.dense",
                         ("intermediate.dense", "output.dense"), ("pooler", "classifier"), "pooler.dense",
                         layers=None),
}
FAMILIES["deberta"] = FAMILIES["deberta-v2"]
PRESETS = ("qv", "qkv", "attention", "all-linear")


def preset_modules(model_type: str, preset: str) -> list[str]:
    fam = FAMILIES.get(model_type)
    if fam is None:
        raise KeyError(model_type)
    return {
        "qv": [fam.q, fam.v],
        "qkv": [fam.q, fam.k, fam.v],
        "attention": [fam.q, fam.k, fam.v, fam.o],
        "all-linear": [fam.q, fam.k, fam.v, fam.o, *fam.ffn],
    }[preset]


def linear_names(model: torch.nn.Module) -> list[str]:
    """Distinct last-two-part names of the encoder's linear layers, to show the user what exists."""
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            parts = name.split(".")
            names.add(parts[-1])
    return sorted(names)


def resolve_targets(model: torch.nn.Module, model_type: str, spec) -> list[str]:
    """Turn a preset or a list of names into PEFT target_modules, checking that each name exists."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ModelError(f"unknown target preset '{spec}'{did_you_mean(spec, PRESETS)}; choose from "
                             f"{', '.join(PRESETS)} or give a list of module names")
        try:
            return preset_modules(model_type, spec)
        except KeyError:
            raise ModelError(
                f"no target preset for model type '{model_type}'; set adapter.target_modules to a list of its "
                f"linear layers: {', '.join(linear_names(model))}"
            ) from None
    module_names = [n for n, _ in model.named_modules()]
    missing = [t for t in spec if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        raise ModelError(
            f"target module(s) {', '.join(missing)} not found in this {model_type} model; its linear layers are: "
            f"{', '.join(linear_names(model))}"
        )
    return list(spec)


def num_layers(model_config) -> int:
    for attr in ("num_hidden_layers", "n_layers", "num_layers"):
        if hasattr(model_config, attr):
            return int(getattr(model_config, attr))
    raise ModelError("cannot tell how many layers this model has; unset adapter.layers_to_transform")


def head_modules(model_type: str) -> list[str]:
    """The modules trained in full as the "full" head (PEFT modules_to_save) of this architecture."""
    fam = FAMILIES.get(model_type)
    return list(fam.head) if fam else ["classifier", "score"]
