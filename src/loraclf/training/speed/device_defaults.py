"""The training defaults that depend on the device: what `auto` means for train.batch_tokens and optimizer.fused,
and how a GPU is fed (pinned memory, non-blocking copies, padding to a multiple of 8).

A CPU is busy with a 32-row batch; a GPU is not (issue 39: a 32-row MiniLM step leaves an H200 idle most of the
time), so on a CUDA GPU `auto` caps batches by tokens (GPU_BATCH_TOKENS) instead of rows, with the learning rate
scaled by the square root of the batch's growth (lr_scale). On a CPU the defaults stay as measured there
(bench/train_speed.py). `loraclf config` prints these resolutions (describe) so a user sees which applies and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ...base import device
from ...config import Config

# padded tokens a step on a CUDA GPU: ~150 AG News rows (52 tokens each). Chosen by accuracy (bench/batch_tokens.py):
# 8,192 ended 0.20 and 0.55 points under 32-row batches in AG News test accuracy (seeds 42, 43), 16,384 0.60 under
GPU_BATCH_TOKENS = 8_192
MAX_ROWS_FACTOR = 16  # a token-capped batch holds at most per_device_train_batch_size x this many rows
EVAL_TOKENS_FACTOR = 2  # evaluation (no gradients) takes batches of twice the training tokens
GPU_PAD_MULTIPLE = 8  # padded widths a multiple of 8: tensor-core friendly shapes


@dataclass(frozen=True)
class DeviceDefaults:
    device_type: str  # cuda, cpu, mps, xpu
    batch_tokens: Optional[int]  # train.batch_tokens resolved: None = fixed-row batches
    batch_tokens_why: str
    fused: bool  # optimizer.fused resolved
    fused_why: str

    @property
    def cuda(self) -> bool:
        return self.device_type == "cuda"

    @property
    def pin_memory(self) -> bool:
        """Page-locked host batches, copied to the GPU without blocking the host (Accelerate's non_blocking)."""
        return self.cuda

    @property
    def pad_multiple(self) -> Optional[int]:
        return GPU_PAD_MULTIPLE if self.cuda else None

    def max_rows(self, cfg: Config) -> int:
        return cfg.train.per_device_train_batch_size * MAX_ROWS_FACTOR

    def eval_tokens(self) -> Optional[int]:
        return None if self.batch_tokens is None else self.batch_tokens * EVAL_TOKENS_FACTOR


def decide(cfg: Config, device_type: str, few_shot: bool = False) -> DeviceDefaults:
    """The rule alone, from facts passed in (testable without the hardware)."""
    bt = cfg.train.batch_tokens
    if bt is None:
        tokens, why = None, "train.batch_tokens=null: batches of per_device_train_batch_size rows"
    elif bt != "auto":
        tokens, why = int(bt), f"train.batch_tokens={bt}"
    elif cfg.data.streaming:
        tokens, why = None, "auto: off for a stream (its rows are never held to be grouped)"
    elif few_shot:
        tokens, why = None, "auto: off for the few-shot recipe (its fixed schedule counts row batches)"
    elif device_type == "cuda":
        tokens, why = GPU_BATCH_TOKENS, (f"auto: {GPU_BATCH_TOKENS} tokens on a CUDA GPU, which a "
                                         f"{cfg.train.per_device_train_batch_size}-row batch leaves idle")
    else:
        tokens, why = None, f"auto: off on a {device_type} device (row batches, as bench/train_speed.py measures them)"
    fused = cfg.optimizer.fused
    if fused == "auto":
        on = device_type == "cuda" and cfg.optimizer.name == "adamw"
        fused_why = ("auto: fused on a CUDA GPU (one kernel for all parameters)" if on else
                     f"auto: foreach on a {device_type} device" if cfg.optimizer.name == "adamw" else
                     "auto: LoRA+ builds its own optimizer")
    else:
        on, fused_why = bool(fused), f"optimizer.fused={str(fused).lower()}"
    return DeviceDefaults(device_type, tokens, why, on, fused_why)


def training_device_type() -> str:
    """The device a `loraclf train` here would use (Accelerate's choice: the GPU when there is one)."""
    return "cpu" if device.on_cpu_only() else device.default_device_type()


def resolve(cfg: Config, few_shot: bool = False) -> DeviceDefaults:
    return decide(cfg, training_device_type(), few_shot)


def lr_scale(mean_rows: float, batch_size: int) -> float:
    """The learning-rate rule for token-capped batches: the square root of the batch's growth in rows (Adam's
    usual rule), so that train.learning_rate keeps meaning the rate at per_device_train_batch_size rows."""
    return math.sqrt(max(mean_rows, 1.0) / batch_size)


def describe(cfg: Config) -> list[str]:
    """What the device-dependent `auto` keys resolve to on this machine, as YAML comment lines."""
    d = resolve(cfg)
    precision, why = device.resolve_why(cfg.train.mixed_precision, "train.mixed_precision")
    tokens = "off" if d.batch_tokens is None else str(d.batch_tokens)
    given = "null" if cfg.train.batch_tokens is None else cfg.train.batch_tokens
    return [f"# on this machine ({d.device_type}); the few-shot recipe (train.few_shot) may change more when it "
            f"turns on:",
            f"#   train.mixed_precision: {cfg.train.mixed_precision} -> {precision} ({why})",
            f"#   train.batch_tokens: {given} -> {tokens} ({d.batch_tokens_why})",
            f"#   optimizer.fused: {str(cfg.optimizer.fused).lower()} -> {str(d.fused).lower()} ({d.fused_why})"]
