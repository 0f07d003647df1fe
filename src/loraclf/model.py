"""Model: base encoder + classification head + PEFT adapter; reload for inference.

Everything adapter-related goes through PEFT. This module only decides *which* modules to adapt and train,
per architecture, and builds the PEFT config from loraclf's config.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import runs, sources
from .config import AdapterConfig, Config
from .errors import ModelError, did_you_mean


@dataclass(frozen=True)
class Family:
    """Module names of one architecture family, as PEFT matches them (suffixes of module paths)."""

    q: str
    k: str
    v: str
    o: str
    ffn: tuple[str, ...]
    head: tuple[str, ...]  # modules trained in full as the "full" head (PEFT modules_to_save)
    head_dense: Optional[str]  # the head's hidden dense layer, for head=lora


_BERT = Family("query", "key", "value", "attention.output.dense", ("intermediate.dense", "output.dense"),
               ("pooler", "classifier"), "pooler.dense")
_ROBERTA = Family("query", "key", "value", "attention.output.dense", ("intermediate.dense", "output.dense"),
                  ("classifier",), "classifier.dense")
FAMILIES: dict[str, Family] = {
    "bert": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "electra": _ROBERTA,
    "mpnet": Family("q", "k", "v", "attn.o", ("intermediate.dense", "output.dense"), ("classifier",), "classifier.dense"),
    "distilbert": Family("q_lin", "k_lin", "v_lin", "out_lin", ("lin1", "lin2"), ("pre_classifier", "classifier"), "pre_classifier"),
    "deberta-v2": Family("query_proj", "key_proj", "value_proj", "attention.output.dense",
                         ("intermediate.dense", "output.dense"), ("pooler", "classifier"), "pooler.dense"),
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


# ------------------------------------------------------------------------------------------ loading


def quiet_transformers() -> None:
    """Silence load reports ("weights not initialized") that are expected for a fresh classification head."""
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _check_model_path(path: str) -> None:
    p = Path(path)
    if p.exists() and not (p / "config.json").is_file():
        raise ModelError(f"{p} is not a model folder (no config.json); give a hub name like roberta-base or a "
                         f"folder saved with save_pretrained")


def load_model_config(cfg: Config, id2label: Optional[dict[int, str]] = None):
    from transformers import AutoConfig

    path = sources.resolve_model(cfg.model.name_or_path)
    _check_model_path(path)
    kwargs = {}
    if id2label is not None:
        kwargs = dict(num_labels=len(id2label), id2label={int(i): n for i, n in id2label.items()},
                      label2id={n: int(i) for i, n in id2label.items()})
    try:
        mc = AutoConfig.from_pretrained(path, revision=cfg.model.revision,
                                        trust_remote_code=cfg.model.trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(_load_error(cfg.model.name_or_path, e)) from None
    return path, mc


def _load_error(name: str, e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "trust_remote_code" in str(e):
        return f"model '{name}' needs its own code; set model.trust_remote_code=true only if you trust it"
    return f"cannot load model '{name}': {first[:300]} (check the name, the path, or the network)"


def load_tokenizer(path: str, cfg: Config):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.model.revision, use_fast=True,
                                            trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(_load_error(cfg.model.name_or_path, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_base(cfg: Config, id2label: dict[int, str], path: str, model_config):
    from transformers import AutoModelForSequenceClassification

    kwargs = {}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    try:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, config=model_config, revision=cfg.model.revision,
                trust_remote_code=cfg.model.trust_remote_code, **kwargs)
        except ValueError as e:
            if "attn_implementation" not in str(e) and "sdpa" not in str(e).lower():
                raise
            model = AutoModelForSequenceClassification.from_pretrained(
                path, config=model_config, revision=cfg.model.revision,
                trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(_load_error(cfg.model.name_or_path, e)) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id or 0
    return model


# ------------------------------------------------------------------------------------------ adapters


def head_modules(model_type: str) -> list[str]:
    fam = FAMILIES.get(model_type)
    return list(fam.head) if fam else ["classifier", "score"]


def peft_config(cfg: Config, model, targets: list[str], total_steps: Optional[int] = None):
    """The PEFT config for cfg.adapter on this model; each method's settings are mapped in methods.py."""
    from . import methods

    return methods.peft_config_for(cfg, model, targets, head_modules(model.config.model_type), total_steps)


def build_model(cfg: Config, id2label: dict[int, str], total_steps: Optional[int] = None):
    """Load the base encoder with a fresh head and wrap it with the configured adapter. Returns (model, tokenizer)."""
    from peft import get_peft_model

    quiet_transformers()
    path, mc = load_model_config(cfg, id2label)
    tokenizer = load_tokenizer(path, cfg)
    base = load_base(cfg, id2label, path, mc)
    targets = resolve_targets(base, mc.model_type, cfg.adapter.target_modules)
    pc = peft_config(cfg, base, targets, total_steps)
    try:
        model = get_peft_model(base, pc)
    except ValueError as e:
        raise ModelError(f"PEFT cannot apply {cfg.adapter.method} here: {str(e).splitlines()[0]}") from None
    from . import methods

    methods.attach(model, cfg, total_steps)  # per-method hooks (AdaLoRA's rank allocation, PiSSA's initial state)
    return model, tokenizer


def param_breakdown(model) -> dict:
    """Trainable parameters split into adapter, head and other, with the model total."""
    adapter = head = other = 0
    total = 0
    by_group: dict[str, int] = {}
    for name, p in model.named_parameters():
        total += p.numel()
        if not p.requires_grad:
            continue
        n = p.numel()
        if "modules_to_save" in name:
            head += n
            group = "head." + name.split(".modules_to_save.default.")[-1]
        elif any(tag in name for tag in ("lora_", "ia3_", "vera_", "hada_", "lokr_")):
            adapter += n
            parts = [x for x in name.split(".") if x != "default"]
            group = "adapter." + ".".join(parts[-3:-1])  # e.g. adapter.query.lora_A
        else:
            other += n
            group = "other." + name
        by_group[group] = by_group.get(group, 0) + n
    trainable = adapter + head + other
    return {
        "trainable": trainable,
        "adapter": adapter,
        "head": head,
        "other": other,
        "total": total,
        "percent": round(100.0 * trainable / total, 4) if total else 0.0,
        "groups": by_group,
    }


def format_breakdown(b: dict) -> str:
    return (f"trainable params: {b['trainable']:,} ({b['percent']:.4f}% of {b['total']:,}): "
            f"adapter {b['adapter']:,}, head {b['head']:,}" + (f", other {b['other']:,}" if b["other"] else ""))


# ------------------------------------------------------------------------------------------ saving / reloading


def save_adapter(model, tokenizer, out_dir: Path) -> None:
    """Standard PEFT files (safetensors, head included via modules_to_save) plus the tokenizer, atomically."""
    from . import methods

    with runs.atomic_dir(out_dir) as tmp:
        methods.save_pretrained(model, tmp)  # PEFT's; a PiSSA adapter is converted to plain LoRA for stock reloads
    if tokenizer is not None:
        with runs.atomic_dir(out_dir.parent / runs.TOKENIZER) as tmp:
            tokenizer.save_pretrained(tmp)


def load_run_model(run: str | Path, merge: bool = True, device: str = "cpu"):
    """Rebuild the trained classifier from a run folder. Returns (model, tokenizer, id2label, cfg).

    LoRA-family adapters are merged into the base weights for inference (faster, identical outputs).
    """
    from peft import PeftModel

    from .config import from_dict
    import yaml

    run = runs.open_run(run)
    cfg = from_dict(yaml.safe_load((run / runs.CONFIG).read_text(encoding="utf-8")))
    labels = runs.read_json(run / runs.LABEL_MAP)
    id2label = {int(k): v for k, v in labels["id2label"].items()}
    quiet_transformers()
    path, mc = load_model_config(cfg, id2label)
    tok_dir = run / runs.TOKENIZER
    tokenizer = load_tokenizer(str(tok_dir) if tok_dir.is_dir() else path, cfg)
    base = load_base(cfg, id2label, path, mc)
    try:
        model = PeftModel.from_pretrained(base, str(run / runs.ADAPTER))
    except Exception as e:  # safetensors/peft raise many types for a damaged adapter
        raise ModelError(f"cannot load the adapter in {run / runs.ADAPTER}: {str(e).splitlines()[0][:200]}") from None
    if merge and hasattr(model, "merge_and_unload"):
        try:
            model = model.merge_and_unload()
        except Exception:
            pass  # methods that cannot merge still predict correctly unmerged
    model.eval().to(device)
    return model, tokenizer, id2label, cfg
