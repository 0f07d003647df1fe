"""Hardware facts and the one precision vocabulary, shared by train, predict, serve and adapt.

A precision is one of `auto`, `fp32`, `bf16`, `fp16` everywhere (config keys and CLI flags). `resolve()` turns
`auto` into what this machine runs natively; `accelerate_name()` gives Accelerate's spelling (no/bf16/fp16).
Inference (predict, evaluate, serve, Classifier) also takes `int8`: `resolve_inference()` checks that vocabulary.
"""

from __future__ import annotations

import os
import platform

from .errors import ConfigError

# torch is imported inside the functions that need it: the CLI reads this vocabulary for its --help, which must not
# wait ~3 s for torch

# the one precision vocabulary (train.mixed_precision, and --precision of predict, evaluate and serve)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# inference only (--precision of predict, evaluate, serve; Classifier.predict): int8 runs the merged model with its
# nn.Linear layers dynamically quantized (loraclf.infer.int8), on the CPU, activations in fp32
INT8 = "int8"
INFERENCE_PRECISIONS = (*PRECISIONS, INT8)
# whose int8 (--int8-engine): auto takes the one measured faster on this kind of CPU (loraclf.infer.int8 says why)
INT8_ENGINES = ("auto", "torch", "onnxruntime")


def autocast_dtype(precision: str):
    """torch's dtype for a resolved half precision (bf16, fp16); None for fp32."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def bf16_supported() -> bool:
    """bf16 computed natively: CUDA with bf16, or a CPU with AVX512-BF16/AMX (oneDNN's own check)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def has_other_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool((mps and mps.is_available()) or (xpu and xpu.is_available()))


def on_cpu_only() -> bool:
    import torch

    return not (torch.cuda.is_available() or has_other_accelerator())


def check(precision: str, where: str = "precision") -> str:
    """The precision itself, or a ConfigError naming the choices."""
    if precision not in PRECISIONS:
        raise ConfigError([f"'{where}' must be one of {', '.join(PRECISIONS)}, got '{precision}'"])
    return precision


def resolve(precision: str, where: str = "precision") -> str:
    """fp32, bf16 or fp16: 'auto' is bf16 where the hardware computes it natively, else fp32."""
    check(precision, where)
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def resolve_inference(precision: str, where: str = "precision") -> str:
    """As resolve, for inference, where int8 (dynamically quantized Linear layers on the CPU) is offered too."""
    if precision == INT8:
        return INT8
    if precision not in INFERENCE_PRECISIONS:
        raise ConfigError([f"'{where}' must be one of {', '.join(INFERENCE_PRECISIONS)}, got '{precision}'"])
    return resolve(precision, where)


def accelerate_name(precision: str) -> str:
    """Accelerate's mixed_precision name for a resolved precision."""
    return "no" if precision == "fp32" else precision


def _cpuinfo(key: str) -> str | None:
    """The value of the first /proc/cpuinfo line that starts with key; None where there is no such file or line."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (from /proc/cpuinfo where there is one; empty elsewhere)."""
    return set((_cpuinfo("flags") or "").split())


def has_amx() -> bool:
    """bf16 matmuls run on Intel AMX here: a CPU-only machine whose CPU reports amx_bf16 and that oneDNN accepts."""
    return on_cpu_only() and "amx_bf16" in cpu_flags() and bf16_supported()


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def hardware() -> dict:
    """What a run's metrics.json records about the machine."""
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info
