"""Cheaper dropout masks for training on CPU (train.fast_dropout).

torch's CPU dropout draws one Bernoulli sample per element (aten::bernoulli_, the top operator of a loraclf training
step in bench/results/train_profile.md). Here one 64-bit random draw makes four 16-bit uniforms, each compared with
a threshold, written straight into the activations' dtype: an element is kept with probability 1 - q,
q = round(p x 65536) / 65536 (p = 0.1 gives q = 0.100006), and scaled by 1 / (1 - q), so the expected output equals
the input exactly, as torch's dropout. Only the random stream differs from torch's.

`swap_for(model).active()` is the scope of one training step: inside it every nn.Dropout of the model (the
encoder's, the adapter's inputs', the head's) draws its mask this way, and so does the attention-probability dropout
of encoders whose attention goes through transformers' attention interface (BERT, RoBERTa, DistilBERT...: registered
there as LORACLF_ATTENTION, the eager computation with this mask, beside the eager attention mask). On leaving it
the modules and the attention implementation are as they were, so evaluation, checkpoints and the saved adapter
are untouched.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from ...config import Config

LORACLF_ATTENTION = "loraclf_fast_dropout"
_LEVELS = 1 << 16


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device) -> tuple[torch.Tensor, float]:
    """A mask of `shape` in `dtype`, 1 where an element is kept (probability 1 - q) and 0 elsewhere, and the scale
    1 / (1 - q) of the kept ones.

    The comparison writes 0 / 1 straight into `dtype` (a bool mask converted afterwards costs about 5x more on CPU).
    The scale stays a float: multiplied in as a scalar it is not rounded to bf16 (1.111 would become 1.109)."""
    n = math.prod(shape)
    dropped = round(p * _LEVELS)
    bits = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    uniform16 = bits.view(torch.int16)[:n].view(shape)  # four signed 16-bit uniforms per draw: -32768..32767
    kept = torch.ge(uniform16, dropped - (_LEVELS // 2), out=torch.empty(shape, dtype=dtype, device=device))
    return kept, _LEVELS / (_LEVELS - dropped)


class _Masked(torch.autograd.Function):
    """x * mask * scale, keeping only the mask (in x's dtype) for the backward pass."""

    @staticmethod
    def forward(ctx, x, kept, scale):
        ctx.save_for_backward(kept)
        ctx.scale = scale
        return torch.mul(x, kept).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (kept,) = ctx.saved_tensors
        return torch.mul(grad, kept).mul_(ctx.scale), None, None


def masked_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout with the cheaper mask; the identity outside training or at p = 0."""
    if not training or p <= 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    kept, scale = keep_mask(x.shape, p, x.dtype, x.device)
    return _Masked.apply(x, kept, scale)


class FastDropout(torch.nn.Dropout):
    """nn.Dropout with the cheaper mask (same p, same train/eval behaviour)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """transformers' eager attention (the attention interface's signature), its probability dropout with the cheaper
    mask; the mask registered beside it is the eager one (0 where attended, the dtype's minimum elsewhere)."""
    if dropout <= 0 or not module.training:  # the bottom of a prefix-cache step, or evaluation: torch's kernel
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=0.0, **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = masked_dropout(torch.nn.functional.softmax(weights, dim=-1), dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(LORACLF_ATTENTION, attention)
    AttentionMaskInterface.register(LORACLF_ATTENTION, eager_mask)


def _interface_configs(model: torch.nn.Module) -> list:
    """The distinct transformers configs of modules whose code picks attention through the attention interface
    (BERT, RoBERTa, DistilBERT...; not MPNet, whose probability dropout is an nn.Dropout module)."""
    found = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        code = sys.modules.get(type(m).__module__)
        if (cfg is not None and getattr(cfg, "_attn_implementation", None) in ("sdpa", "eager")
                and hasattr(code, "ALL_ATTENTION_FUNCTIONS")):
            found[id(cfg)] = cfg
    return list(found.values())


@dataclass
class Swap:
    """The model's nn.Dropout modules and attention configs, switched to the cheaper masks for one training step."""

    modules: list
    configs: list

    @contextlib.contextmanager
    def active(self):
        saved = [c._attn_implementation for c in self.configs]
        for m in self.modules:
            m.__class__ = FastDropout  # a subclass with the same fields (p, inplace): only forward differs
        for c in self.configs:
            c._attn_implementation = LORACLF_ATTENTION
        try:
            yield
        finally:
            for m in self.modules:
                m.__class__ = torch.nn.Dropout
            for c, impl in zip(self.configs, saved):
                c._attn_implementation = impl


def swap_for(model: torch.nn.Module) -> Swap:
    """The swap of this model: every plain nn.Dropout (encoder, adapter inputs, head) and the attention dropout."""
    _register()
    return Swap([m for m in model.modules() if type(m) is torch.nn.Dropout], _interface_configs(model))


def build(cfg: Config, model: torch.nn.Module, device: torch.device, say) -> Optional[Swap]:
    """train.fast_dropout's swap for this run, or None where it is off (or the model has no dropout to swap)."""
    on = cfg.train.fast_dropout
    if on == "auto":
        on = device.type == "cpu" and not cfg.train.torch_compile
    swap = swap_for(model) if on else None
    if swap is None or not (swap.modules or swap.configs):
        return None
    say(f"dropout: cheaper masks (train.fast_dropout) in {len(swap.modules)} dropout modules"
        + (" and the attention probabilities" if swap.configs else ""))
    return swap
