"""Hardware facts and the one precision vocabulary, shared by train, predict, serve and adapt.

A precision is one of `auto`, `fp32`, `bf16`, `fp16` everywhere (config keys and CLI flags). `resolve()` turns
`auto` into what the device runs natively (native_bf16_rule: bf16 or fp32); `accelerate_name()` gives Accelerate's
spelling (no/bf16/fp16).
Inference (predict, evaluate, serve, Classifier) also takes `int8`: `resolve_inference()` checks that vocabulary.
"""

from __future__ import annotations

import os
import platform
from typing import Iterable, Optional

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


# the CPU flags of native bf16 matmuls: x86's AVX512-BF16 or AMX (/proc/cpuinfo "flags"), ARM's BF16 extension
# ("Features"). Without one, oneDNN still accepts bf16 on any AVX512 CPU (torch's _is_mkldnn_bf16_supported) but
# emulates it: slower than fp32 there (bench/results/train_speed_avx2.md)
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def native_bf16_rule(device_type: str, *, cuda_native: bool = False, cpu_flags: Iterable[str] = ()) -> tuple[bool, str]:
    """Whether a device of this type computes bf16 natively, and why, from facts passed in (the rule alone, testable
    without the hardware). cuda_native: torch.cuda.is_bf16_supported(including_emulation=False) for that GPU;
    cpu_flags: the CPU's feature flags."""
    if device_type == "cuda":
        return (True, "this GPU computes bf16 natively") if cuda_native else (
            False, "this GPU has no native bf16 (it would only emulate it, e.g. a T4 or V100)")
    if device_type == "cpu":
        found = sorted(CPU_BF16_FLAGS & set(cpu_flags))
        if found:
            return True, f"this CPU computes bf16 natively ({', '.join(found)})"
        return False, "this CPU has no native bf16 (no AVX512-BF16, AMX or ARM BF16)"
    return False, f"bf16 is not chosen automatically on a {device_type} device"


def _cuda_bf16_native(index: Optional[int] = None) -> bool:
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.3 has no such argument and counts no emulation: Ampere (8.x) and newer
        major, _ = torch.cuda.get_device_capability(index)
        return major >= 8


def default_device_type() -> str:
    """Where training and inference run when nothing else is said: cuda, mps, xpu or cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps, xpu = getattr(torch.backends, "mps", None), getattr(torch, "xpu", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "xpu" if xpu is not None and xpu.is_available() else "cpu"


def bf16_native(device_type: Optional[str] = None) -> tuple[bool, str]:
    """native_bf16_rule with this machine's facts, for device_type (default: default_device_type())."""
    device_type = device_type or default_device_type()
    return native_bf16_rule(device_type, cuda_native=device_type == "cuda" and _cuda_bf16_native(),
                            cpu_flags=cpu_flags() if device_type == "cpu" else ())


def bf16_supported(device_type: Optional[str] = None) -> bool:
    """bf16 computed natively on device_type (default: where this machine trains): CUDA without emulation, or a CPU
    with AVX512-BF16, AMX or ARM BF16."""
    return bf16_native(device_type)[0]


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


def resolve(precision: str, where: str = "precision", device_type: Optional[str] = None) -> str:
    """fp32, bf16 or fp16: 'auto' is bf16 where device_type (default: where this machine trains) computes it
    natively, else fp32."""
    return resolve_why(precision, where, device_type)[0]


def resolve_why(precision: str, where: str = "precision", device_type: Optional[str] = None) -> tuple[str, str]:
    """resolve(), and one line saying why: what 'auto' found, or that the precision was asked for."""
    check(precision, where)
    if precision != "auto":
        return precision, f"{where}={precision} as set"
    native, why = bf16_native(device_type)
    return ("bf16" if native else "fp32"), f"{where}=auto: {why}"


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
    """The CPU's feature flags (from /proc/cpuinfo where there is one: x86's "flags", ARM's "Features"; empty
    elsewhere)."""
    return set((_cpuinfo("flags") or _cpuinfo("Features") or "").split())


def has_amx() -> bool:
    """bf16 matmuls run on Intel AMX here: a CPU-only machine whose CPU reports amx_bf16."""
    return on_cpu_only() and "amx_bf16" in cpu_flags()


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
