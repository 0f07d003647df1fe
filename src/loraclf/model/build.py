"""Model: base encoder + classification head + PEFT adapter; reload for inference.

Everything adapter-related goes through PEFT. This module only decides *which* modules to adapt and train,
per architecture, and builds the PEFT config from loraclf's config.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from . import methods
from .. import runs
from ..base import sources
from .architectures import FAMILIES, head_modules, resolve_targets
from ..config import Config
from ..base.errors import ModelError, did_you_mean

if TYPE_CHECKING:  # annotations only: the code imports these where it uses them
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


# ------------------------------------------------------------------------------------------ loading


def quiet_transformers() -> None:
    """Silence load reports ("weights not initialized") that are expected for a fresh classification head."""
    import sys
    import warnings

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights" bars: noise, the load takes a second
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _check_model_path(path: str) -> None:
    p = Path(path)
    if p.exists() and not (p / "config.json").is_file():
        raise ModelError(f"{p} is not a model folder (no config.json); give a hub name like roberta-base or a "
                         f"folder saved with save_pretrained")


def load_model_config(cfg: Config, id2label: Optional[dict[int, str]] = None) -> tuple[str, PretrainedConfig]:
    from transformers import AutoConfig

    path = sources.resolve_model(cfg.model.name_or_path)
    _check_model_path(path)
    kwargs = {"problem_type": cfg.model.problem_type}
    if id2label is not None:
        kwargs.update(num_labels=len(id2label), id2label={int(i): n for i, n in id2label.items()},
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


def load_tokenizer(path: str, cfg: Config) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.model.revision, use_fast=True,
                                            trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(_load_error(cfg.model.name_or_path, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_base(cfg: Config, id2label: dict[int, str], path: str, model_config: PretrainedConfig) -> PreTrainedModel:
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


def peft_config(cfg: Config, model, targets: list[str], total_steps: Optional[int] = None):
    """The PEFT config for cfg.adapter on this model; each method's settings are mapped in methods.py."""
    return methods.peft_config_for(cfg, model, targets, head_modules(model.config.model_type), total_steps)


HEADS = ("full", "linear", "lora")


@dataclass(frozen=True)
class HeadPlan:
    """How one head design maps onto PEFT for one model (module paths are full paths in the base model)."""

    modules_to_save: list[str]  # trained in full; PEFT wraps, trains and saves them
    lora_target: Optional[str] = None  # head=lora: the head dense, adapted by the adapter method, its weight frozen
    frozen: Optional[str] = None  # head=linear: the head dense, saved with the head but never trained
    identity: bool = False  # the frozen head dense is set to the identity (it would otherwise stay random)


def _module_path(model, suffix: str) -> str:
    hits = [n for n, _ in model.named_modules() if n == suffix or n.endswith("." + suffix)]
    if len(hits) != 1:
        raise ModelError(f"cannot find the head layer '{suffix}' in this {model.config.model_type} model "
                         f"({len(hits)} matches); use adapter.head=full")
    return hits[0]


def head_plan(model, head: str) -> HeadPlan:
    """The modules each head design trains, freezes or adapts, per architecture family (see docs/budget.md)."""
    model_type = model.config.model_type
    if head == "full":
        return HeadPlan(head_modules(model_type))
    fam = FAMILIES.get(model_type)
    if fam is None or fam.head_dense is None:
        raise ModelError(f"adapter.head={head} needs the head layout of '{model_type}' models, which loraclf does not "
                         f"know (known: {', '.join(sorted(FAMILIES))}); use adapter.head=full")
    dense = _module_path(model, fam.head_dense)
    if head == "linear":
        # the head dense stays in modules_to_save, frozen, so the saved head has the stock architecture and stock
        # PEFT reloads it; a random dense becomes the identity, leaving one linear layer on the (activated) features
        return HeadPlan(list(fam.head), frozen=dense, identity=not fam.head_dense_pretrained)
    if head == "lora":
        clash = [m for m in fam.head_out if dense.endswith(m)]
        if clash:
            # PEFT picks modules_to_save by plain name suffix (key.endswith(name)): distilbert's 'classifier'
            # also picks 'pre_classifier', and PEFT cannot both train a layer in full and adapt it
            raise ModelError(f"adapter.head=lora is not available for {model_type}: PEFT's modules_to_save entry "
                             f"'{clash[0]}' also matches '{dense}', the layer the LoRA head adapts; use "
                             f"adapter.head=full or adapter.head=linear")
        return HeadPlan(list(fam.head_out), lora_target=dense)
    raise ModelError(f"unknown adapter.head '{head}'{did_you_mean(head, HEADS)}; choose from {', '.join(HEADS)}")


def attach_adapter(base: PreTrainedModel, cfg: Config, total_steps: Optional[int] = None) -> PeftModel:
    """Wrap a base classifier with the configured adapter and head design. Returns the PeftModel.

    The one path from base model to trainable model: train uses it on loaded weights, budget on the meta device
    (no weights), so the budget's count is the count of the model that trains.
    """
    from peft import get_peft_model

    targets = resolve_targets(base, base.config.model_type, cfg.adapter.target_modules)
    plan = head_plan(base, cfg.adapter.head)
    pc = peft_config(cfg, base, targets, total_steps)
    pc.modules_to_save = list(plan.modules_to_save)
    if plan.lora_target:
        if isinstance(pc.target_modules, str):  # a regex (methods without layers_to_transform)
            pc.target_modules = f"(?:{pc.target_modules})|{re.escape(plan.lora_target)}"
        else:  # a full path: PEFT matches it exactly, outside the layers_to_transform filter
            pc.target_modules = [*pc.target_modules, plan.lora_target]
        if re.match(r"(^|.*\.)(classifier|score)\.", plan.lora_target):
            # SEQ_CLS makes PEFT add the whole 'classifier' to modules_to_save, and PEFT never adapts a module
            # inside modules_to_save; without a task type the PeftModel is the same, minus that rule
            pc.task_type = None
    try:
        model = get_peft_model(base, pc)
    except ValueError as e:
        raise ModelError(f"PEFT cannot apply {cfg.adapter.method} here: {str(e).splitlines()[0]}") from None
    if plan.frozen:
        _freeze_head_dense(model, plan)
    # a method's extra steps (AdaLoRA's rank allocation, PiSSA's initial state, the lora head to fold on save);
    # the loop takes them from methods.hooks_of(model)
    methods.attach(model, cfg, total_steps, head_lora=plan.lora_target)
    return model


def _freeze_head_dense(model, plan: HeadPlan) -> None:
    found = False
    for name, mod in model.named_modules():
        if ".modules_to_save." not in name:
            continue
        plain = re.sub(r"\.modules_to_save\.[^.]+", "", name.removeprefix("base_model.model."))
        if plain != plan.frozen:
            continue
        found = True
        for p in mod.parameters():
            p.requires_grad_(False)
        if plan.identity and not mod.weight.is_meta:
            with torch.no_grad():
                torch.nn.init.eye_(mod.weight)
                if mod.bias is not None:
                    mod.bias.zero_()
    if not found:
        raise ModelError(f"head layer {plan.frozen} is not inside the trained head {plan.modules_to_save}")


def build_model(cfg: Config, id2label: dict[int, str], total_steps: Optional[int] = None
                ) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Load the base encoder with a fresh head and wrap it with the configured adapter. Returns (model, tokenizer)."""
    quiet_transformers()
    path, mc = load_model_config(cfg, id2label)
    tokenizer = load_tokenizer(path, cfg)
    base = load_base(cfg, id2label, path, mc)
    return attach_adapter(base, cfg, total_steps), tokenizer


# ------------------------------------------------------------------------------------------ saving / reloading


def save_adapter(model, tokenizer, out_dir: Path) -> None:
    """Standard PEFT files (safetensors, head included via modules_to_save) plus the tokenizer, atomically."""
    hooks = methods.hooks_of(model)
    with runs.atomic_dir(out_dir) as tmp:
        methods.save_pretrained(model, tmp, hooks)  # PEFT's; PiSSA is converted to plain LoRA for stock reloads
        _fold_head_lora(model, Path(tmp), hooks.head_lora)
    if tokenizer is not None:
        with runs.atomic_dir(out_dir.parent / runs.TOKENIZER) as tmp:
            tokenizer.save_pretrained(tmp)


def _fold_head_lora(model, out_dir: Path, name: Optional[str]) -> None:
    """head=lora: save the adapted head dense as one plain trained layer (W + delta) in modules_to_save.

    Its frozen W is the model's random head init, which a stock base model would draw differently; stored merged,
    the saved adapter is a standard PEFT adapter and stock PeftModel.from_pretrained gives the trained logits.
    """
    if not name:
        return
    import copy

    from safetensors.torch import load_file, save_file

    merged = copy.deepcopy(model.base_model.model.get_submodule(name))
    merged.merge()
    layer = merged.get_base_layer()
    weights = out_dir / "adapter_model.safetensors"
    prefix = f"base_model.model.{name}."
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith(prefix)}
    state[prefix + "weight"] = layer.weight.detach().cpu().contiguous()
    if layer.bias is not None:
        state[prefix + "bias"] = layer.bias.detach().cpu().contiguous()
    save_file(state, str(weights), metadata={"format": "pt"})
    conf_path = out_dir / "adapter_config.json"
    conf = json.loads(conf_path.read_text())
    tm = conf["target_modules"]
    conf["target_modules"] = (tm.removesuffix("|" + re.escape(name)).removeprefix("(?:").removesuffix(")")
                              if isinstance(tm, str) else [t for t in tm if t != name])
    conf["modules_to_save"] = [*(conf.get("modules_to_save") or []), name]
    conf_path.write_text(json.dumps(conf, indent=2, sort_keys=True))


def check_finite(model, where: Path) -> None:
    """An adapter whose weights hold NaN or inf predicts garbage without a word: refuse it, naming the tensor."""
    for name, p in model.named_parameters():
        if ("lora_" in name or "modules_to_save" in name or "ia3_" in name or "vera_" in name or "hada_" in name
                or "lokr_" in name) and not bool(torch.isfinite(p).all()):
            raise ModelError(f"{where} holds NaN or infinite weights ({name.removeprefix('base_model.model.')}); "
                             f"the adapter is damaged or training diverged: train the run again, with a lower "
                             f"train.learning_rate if it diverged")


def load_trained(run: runs.Run, merge: bool = True, device: str = "cpu"):
    """Rebuild the trained classifier of an opened run folder. Returns (model, tokenizer).

    LoRA-family adapters are merged into the base weights for inference (faster, identical outputs).
    """
    from peft import PeftModel

    cfg, id2label = run.config, run.id2label
    quiet_transformers()
    path, mc = load_model_config(cfg, id2label)
    tokenizer = load_tokenizer(str(run.tokenizer_dir) if run.tokenizer_dir.is_dir() else path, cfg)
    base = load_base(cfg, id2label, path, mc)
    try:
        with methods.quiet_reload():
            model = PeftModel.from_pretrained(base, str(run.adapter_dir))
    except Exception as e:  # safetensors/peft raise many types for a damaged adapter
        raise ModelError(f"cannot load the adapter in {run.adapter_dir}: {str(e).splitlines()[0][:200]}") from None
    check_finite(model, run.adapter_dir)
    if merge and hasattr(model, "merge_and_unload"):
        try:
            model = model.merge_and_unload()
        except Exception:
            pass  # methods that cannot merge still predict correctly unmerged
    model.eval().to(device)
    return model, tokenizer


# --- merging an adapter for inference and export


def merge_adapter(model):
    """The plain transformers model with the adapter folded into its weights; the PEFT model itself if it cannot be.

    The trained head copies (PEFT modules_to_save) are put in place first: PEFT's own unload trips over a saved
    module without a `weight` (BERT's pooler) when merging IA3.
    """
    from peft.utils import ModulesToSaveWrapper

    if not hasattr(model, "merge_and_unload"):
        return model
    for name, mod in list(model.named_modules()):
        if isinstance(mod, ModulesToSaveWrapper):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, mod.modules_to_save[mod.active_adapters[0]])
    try:
        return model.merge_and_unload()
    except Exception:  # methods that cannot merge still predict correctly unmerged
        return model
