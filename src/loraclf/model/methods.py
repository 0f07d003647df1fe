"""PEFT methods beyond plain LoRA: one PEFT config per `adapter.method`, and the extra steps some methods need.

Every method is PEFT's own implementation; this module only maps loraclf's config onto PEFT's config classes and
returns a `MethodHooks` object holding a method's extra steps, which the training loop and the saver call:

- AdaLoRA: `set_total_steps(n)` (its rank budget is scheduled over all steps), `after_step(step)` (PEFT's
  `update_and_allocate`, called after `optimizer.step()` and before `zero_grad`), `regularizer()` (its
  orthogonality penalty), `after_resume(step)` (restore the final rank pattern from a checkpoint), `finalize()`
  (apply the final rank mask to restored best weights) and `final_report()` (the final rank allocation, written to
  metrics.json as "adapter_report").
- PiSSA: `pissa_initial` keeps the initial adapter so that saving converts the PiSSA adapter into a plain LoRA
  adapter for the *original* base weights (PiSSA changes the base weights it starts from); stock PEFT reloads it.
- head=lora: `head_lora` names the adapted head layer, which saving folds into one plain trained layer.

`hooks_of(model)` gives the hooks a model was built with (a weak mapping, so a model carries no extra attributes
and callers that only hold the model, such as `model.save_adapter(model, tokenizer, out_dir)`, still save right).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .architectures import FAMILIES, num_layers
from ..config import AdapterConfig, Config
from ..base.errors import ModelError

METHODS = ("lora", "dora", "rslora", "pissa", "vera", "ia3", "adalora", "loha", "lokr")
LORA_FAMILY = ("lora", "dora", "rslora", "pissa")
RANKLESS = ("ia3",)  # no size to fit: r is ignored and r=auto does not apply
# AdaLoRA needs a positive total_step to build; counting parameters does not depend on it
_PLACEHOLDER_STEPS = 1000
_PISSA_INIT = "pissa_init"


def adalora_init_r(ad: AdapterConfig) -> int:
    """AdaLoRA's starting rank: adapter.init_r, else 1.5 x r rounded down. The budget counts this rank."""
    r = ad.r if isinstance(ad.r, int) else 1
    return ad.init_r if ad.init_r is not None else max(r, (3 * r) // 2)


def adalora_schedule(ad: AdapterConfig, total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal): warm-up steps before pruning and final steps at fixed ranks; defaults 10% and 20%."""
    tinit = ad.adalora_tinit if ad.adalora_tinit is not None else int(0.1 * total_steps)
    tfinal = ad.adalora_tfinal if ad.adalora_tfinal is not None else int(0.2 * total_steps)
    if tinit + tfinal >= total_steps:
        raise ModelError(
            f"AdaLoRA needs steps left to re-allocate ranks: adapter.adalora_tinit ({tinit}) + adapter.adalora_tfinal "
            f"({tfinal}) must be below the {total_steps} training steps; lower them or train longer")
    return tinit, tfinal


def _layers(cfg: Config, model) -> Optional[list[int]]:
    if not cfg.adapter.layers_to_transform:
        return None
    n = num_layers(model.config)
    k = min(cfg.adapter.layers_to_transform, n)
    return list(range(n - k, n))


def _layer_regex(names: list[str], layers: list[int]) -> str:
    """A PEFT target regex for the named modules inside the given encoder layers (for tuners without
    layers_to_transform). PEFT full-matches it against module paths such as bert.encoder.layer.5.attention.self.query."""
    alt = "|".join(re.escape(n) for n in names)
    idx = "|".join(str(i) for i in layers)
    return rf".*\.layers?\.({idx})\.(.*\.)?({alt})"


def _on_meta(model) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.is_meta


def peft_config_for(cfg: Config, model, targets: list[str], modules_to_save: Optional[list[str]],
                    total_steps: Optional[int] = None):
    """The PEFT config of cfg.adapter.method for this base model.

    targets: PEFT target_modules (already resolved for the architecture); modules_to_save: modules trained in full
    (the head). total_steps: optimizer steps of the run (AdaLoRA schedules over them; set later when unknown here).
    """
    from peft import (AdaLoraConfig, IA3Config, LoHaConfig, LoKrConfig, LoraConfig, TaskType, VeraConfig)

    ad: AdapterConfig = cfg.adapter
    method = ad.method
    if method not in METHODS:
        raise ModelError(f"unknown adapter.method '{method}'; choose from {', '.join(METHODS)}")
    r = ad.r
    if method not in RANKLESS and not isinstance(r, int):
        raise ModelError("adapter.r is 'auto' but was not resolved against the budget")
    layers = _layers(cfg, model)
    common = dict(task_type=TaskType.SEQ_CLS, target_modules=list(targets), modules_to_save=modules_to_save)

    if method in LORA_FAMILY:
        init = True
        if method == "pissa" and not _on_meta(model):  # the SVD changes no shapes; skip it when only counting
            init = "pissa"
        return LoraConfig(r=r, lora_alpha=ad.lora_alpha, lora_dropout=ad.lora_dropout, layers_to_transform=layers,
                          use_dora=method == "dora", use_rslora=method == "rslora", init_lora_weights=init, **common)
    if method == "adalora":
        init_r = adalora_init_r(ad)
        if init_r < r:
            raise ModelError(f"adapter.init_r ({init_r}) must be at least adapter.r ({r}), AdaLoRA's target rank")
        steps = total_steps or max(_PLACEHOLDER_STEPS, (ad.adalora_tinit or 0) + (ad.adalora_tfinal or 0) + 1)
        tinit, tfinal = adalora_schedule(ad, steps)
        return AdaLoraConfig(target_r=r, init_r=init_r, lora_alpha=ad.lora_alpha, lora_dropout=ad.lora_dropout,
                             tinit=tinit, tfinal=tfinal, deltaT=ad.adalora_deltaT, total_step=steps,
                             orth_reg_weight=ad.adalora_orth_reg_weight, layers_to_transform=layers, **common)
    if method == "vera":
        return VeraConfig(r=r, d_initial=ad.vera_d_initial, vera_dropout=ad.lora_dropout,
                          projection_prng_key=ad.vera_projection_prng_key, save_projection=True,
                          layers_to_transform=layers, **common)
    if method == "loha":
        return LoHaConfig(r=r, alpha=ad.lora_alpha, rank_dropout=ad.lora_dropout, layers_to_transform=layers, **common)
    if method == "lokr":
        return LoKrConfig(r=r, alpha=ad.lora_alpha, rank_dropout=ad.lora_dropout,
                          decompose_both=ad.lokr_decompose_both, decompose_factor=ad.lokr_decompose_factor,
                          layers_to_transform=layers, **common)
    # ia3: the FFN's second projection is scaled on its input (as in the paper and PEFT's defaults), the rest on output
    fam = FAMILIES.get(model.config.model_type)
    ff = [t for t in targets if fam is not None and t in fam.ffn[1:]]
    if layers is None:
        return IA3Config(feedforward_modules=ff, **common)
    # IA3Config has no layers_to_transform: select the layers with a regex instead
    common["target_modules"] = _layer_regex(list(targets), layers)
    return IA3Config(feedforward_modules=_layer_regex(ff, layers) if ff else [], **common)


def _noop(*_args) -> None:
    return None


@dataclass
class MethodHooks:
    """A method's extra steps around PEFT's own training; every default does nothing."""

    set_total_steps: Callable[[int], None] = _noop
    after_step: Callable[[int], None] = _noop  # after optimizer.step(), before zero_grad (it reads the gradients)
    regularizer: Optional[Callable[[], torch.Tensor]] = None  # a term added to the loss
    after_resume: Callable[[int], None] = _noop
    finalize: Callable[[], None] = _noop  # after the best weights are restored, before saving
    final_report: Optional[Callable[[], dict]] = None  # metrics.json "adapter_report"
    pissa_initial: Optional[tempfile.TemporaryDirectory] = None  # PiSSA's initial adapter, for the saved conversion
    head_lora: Optional[str] = None  # head=lora: the adapted head layer, folded when saving


_HOOKS: "weakref.WeakKeyDictionary[torch.nn.Module, MethodHooks]" = weakref.WeakKeyDictionary()


def hooks_of(model) -> MethodHooks:
    """The hooks `attach` returned for this model (no-op hooks for a model it did not build)."""
    return _HOOKS.get(model) or MethodHooks()


def attach(model, cfg: Config, total_steps: Optional[int] = None, head_lora: Optional[str] = None) -> MethodHooks:
    """The extra steps a freshly wrapped PeftModel's method needs (see the module docstring)."""
    if cfg.adapter.method == "adalora":
        # ranknum is a constant PEFT keeps as a frozen Parameter; accelerate's init_empty_weights re-registers it as
        # trainable, which would make a meta-device parameter count one too high per adapted module
        for n, p in model.named_parameters():
            if ".ranknum." in n:
                p.requires_grad_(False)
    hooks = MethodHooks(head_lora=head_lora)
    if not _on_meta(model):
        if cfg.adapter.method == "adalora":
            hooks = _adalora_hooks(model, cfg.adapter, head_lora)
            if total_steps:
                hooks.set_total_steps(total_steps)
        elif cfg.adapter.method == "pissa":
            hooks.pissa_initial = _keep_pissa_initial(model)
    _HOOKS[model] = hooks
    return hooks


# ------------------------------------------------------------------------------------------ AdaLoRA


def _adalora_hooks(model, ad: AdapterConfig, head_lora: Optional[str]) -> MethodHooks:
    # the hooks reach the model through a weak reference: hooks_of() maps model -> hooks weakly, and a strong one
    # here would keep every model of a sweep alive
    ref = weakref.ref(model)
    name = model.active_adapter
    pairs = [(n, p) for n, p in model.named_parameters()
             if ("lora_A" in n or "lora_B" in n) and f".{name}" in n and p.requires_grad]

    def set_total_steps(total_steps: int) -> None:
        tinit, tfinal = adalora_schedule(ad, total_steps)
        pc = ref().peft_config[name]
        pc.tinit, pc.tfinal = tinit, tfinal
        ref().base_model.rankallocator.set_total_step(total_steps)  # also sets pc.total_step and the budget

    def regularizer() -> torch.Tensor:
        # PEFT adds this penalty only inside AdaLoraModel.forward when the model computes the loss itself (labels
        # passed); our loop computes its own (weighted / soft-label) loss, so the same term is added here.
        total = 0.0
        for n, p in pairs:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            total = total + torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device))
        return ref().peft_config[name].orth_reg_weight * total / max(len(pairs), 1)

    def finalize() -> None:
        pattern = ref().peft_config[name].rank_pattern
        if pattern:
            ref().base_model.rankallocator.mask_using_rank_pattern(ref().base_model.model, pattern)

    def after_resume(step: int) -> None:
        pc = ref().peft_config[name]
        if pc.rank_pattern is None and step >= pc.total_step - pc.tfinal:
            # resumed past the final allocation: a checkpoint holds weights, not PEFT's rank pattern, but the final
            # mask left exactly the pruned singular values at zero, so the pattern is read back from them. (Resumed
            # earlier, the sensitivity averages restart from the checkpoint's weights: close, not identical.)
            pc.rank_pattern = {n: (p.detach() != 0).view(-1).tolist()
                               for n, p in ref().base_model.model.named_parameters() if f"lora_E.{name}" in n}

    return MethodHooks(set_total_steps=set_total_steps, after_step=lambda step: ref().base_model.update_and_allocate(step),
                       regularizer=regularizer, after_resume=after_resume, finalize=finalize,
                       final_report=lambda: adalora_report(ref()), head_lora=head_lora)


def adalora_report(model) -> dict:
    """AdaLoRA's rank allocation: per adapted module, the ranks kept (all init_r until the first re-allocation)."""
    name = model.active_adapter
    pc = model.peft_config[name]
    modules = sorted({n.split(".lora_E")[0] for n, _ in model.named_parameters() if ".lora_E." in n})
    pattern = pc.rank_pattern or {}
    ranks = {}
    for m in modules:
        short = m.replace("base_model.model.", "", 1)
        # PEFT keys the pattern by parameter name, with or without the adapter name depending on where it was set
        kept = next((pattern[k] for k in (f"{short}.lora_E.{name}", f"{short}.lora_E", f"{m}.lora_E.{name}",
                                          f"{m}.lora_E") if k in pattern), None)
        ranks[short] = int(sum(bool(x) for x in kept)) if kept is not None else pc.init_r
    return {
        "method": "adalora", "init_r": pc.init_r, "target_r": pc.target_r, "total_step": pc.total_step,
        "tinit": pc.tinit, "tfinal": pc.tfinal, "deltaT": pc.deltaT, "reallocated": bool(pattern),
        "total_rank_initial": pc.init_r * len(modules), "total_rank_budget": pc.target_r * len(modules),
        "total_rank_final": sum(ranks.values()), "ranks": ranks,
    }


# ------------------------------------------------------------------------------------------ PiSSA


def _keep_pissa_initial(model) -> tempfile.TemporaryDirectory:
    name = model.active_adapter
    # from here on the config says "plain LoRA init": the saved adapter must never redo the SVD on reload
    model.peft_config[name].init_lora_weights = True
    holder = tempfile.TemporaryDirectory(prefix="loraclf-pissa-")  # removed when the hooks are garbage-collected
    model.save_pretrained(str(Path(holder.name) / _PISSA_INIT), safe_serialization=True)
    return holder


def save_pretrained(model, out_dir: str | Path, hooks: MethodHooks) -> None:
    """PEFT's save_pretrained; a PiSSA adapter is converted to a LoRA adapter for the original base weights."""
    holder = hooks.pissa_initial
    if holder is None:
        model.save_pretrained(str(out_dir), safe_serialization=True)
        return
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    model.save_pretrained(str(out_dir), safe_serialization=True,
                          path_initial_model_for_weight_conversion=str(Path(holder.name) / _PISSA_INIT))
    # PEFT's conversion keeps only lora_A/lora_B and drops modules_to_save (our trained head): put it back
    weights = Path(out_dir) / "adapter_model.safetensors"
    saved = load_file(str(weights))
    full = get_peft_model_state_dict(model)
    missing = {k: v.detach().cpu().contiguous() for k, v in full.items() if k not in saved and "lora_" not in k}
    if missing:
        saved.update(missing)
        save_file(saved, str(weights), metadata={"format": "pt"})


@contextlib.contextmanager
def quiet_reload():
    """Reload a saved adapter without PEFT's spurious warning for AdaLoRA: its rank_pattern is keyed by parameter
    name (...lora_E), which PEFT also checks against module names, always in vain; the ranks are applied anyway."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match", category=RuntimeWarning)
        yield
