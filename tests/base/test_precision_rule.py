"""Precision `auto` per device (issue 39): bf16 only where the device computes it natively.

The rule (native_bf16_rule) takes its facts as arguments, so every device class is tested here on a CPU; the tests
below it check that the real code feeds it the real facts: CUDA's count without emulation, the CPU's own flags for a
model placed on the CPU of a machine that has a GPU.
"""

from __future__ import annotations

import pytest
import torch

from loraclf.base import device


@pytest.mark.parametrize("device_type, facts, native", [
    ("cuda", {"cuda_native": True}, True),  # A100, H100, RTX 30xx+
    ("cuda", {"cuda_native": False}, False),  # T4, V100: torch counts their emulated bf16 unless told not to
    ("cpu", {"cpu_flags": {"avx2", "avx512f", "avx512_bf16"}}, True),  # AMD Zen 4, Intel Cooper Lake
    ("cpu", {"cpu_flags": {"avx512f", "amx_tile", "amx_bf16"}}, True),  # Intel Sapphire Rapids
    ("cpu", {"cpu_flags": {"fp", "asimd", "bf16"}}, True),  # ARM with the BF16 extension (Graviton 3)
    # AVX512 without BF16: oneDNN accepts bf16 there (torch's _is_mkldnn_bf16_supported) but emulates it
    ("cpu", {"cpu_flags": {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}}, False),
    ("cpu", {"cpu_flags": set()}, False),  # no /proc/cpuinfo (macOS, Windows)
    ("cpu", {"cuda_native": True}, False),  # a GPU's bf16 says nothing about the CPU
    ("mps", {"cuda_native": True, "cpu_flags": {"amx_bf16"}}, False),
])
def test_native_bf16_rule(device_type, facts, native):
    got, why = device.native_bf16_rule(device_type, **facts)
    assert got is native
    assert {"cuda": "GPU", "cpu": "CPU"}.get(device_type, device_type) in why  # the why names the device asked


@pytest.fixture
def gpu_machine(monkeypatch):
    """A machine whose torch reports one CUDA GPU that only emulates bf16 (a T4): torch.cuda.is_bf16_supported()
    says True by default and False with including_emulation=False, as torch >= 2.3 does on such a card."""
    calls = []

    def is_bf16_supported(including_emulation: bool = True):
        calls.append(including_emulation)
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return calls


def test_auto_on_a_gpu_that_emulates_bf16_is_fp32(gpu_machine):
    assert device.default_device_type() == "cuda"
    assert device.resolve("auto") == "fp32"
    assert gpu_machine and not any(gpu_machine), "torch.cuda.is_bf16_supported was asked to count emulation"
    precision, why = device.resolve_why("auto", "train.mixed_precision")
    assert precision == "fp32" and why.startswith("train.mixed_precision=auto: this GPU has no native bf16")
    assert device.resolve("bf16") == "bf16"  # asked for by name: as set


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_torch_without_the_emulation_argument_goes_by_compute_capability(monkeypatch, capability, expected):
    def is_bf16_supported():  # torch < 2.3: no including_emulation argument
        return True

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    assert device.resolve("auto") == expected


def test_cpu_resolves_with_the_cpus_own_flags(monkeypatch):
    expected = "bf16" if device.CPU_BF16_FLAGS & device.cpu_flags() else "fp32"
    assert device.resolve("auto", device_type="cpu") == expected
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512f", "avx512bw"})
    assert device.resolve("auto", device_type="cpu") == "fp32"
    monkeypatch.setattr(device, "cpu_flags", lambda: {"amx_bf16"})
    assert device.resolve("auto", device_type="cpu") == "bf16"


def _cpu_autocast(precision: str):
    from loraclf.infer.forward import _autocast_dtype

    return _autocast_dtype(torch.nn.Linear(4, 2), precision)  # a model on the CPU, as predict_texts gets it


def test_cpu_inference_on_this_machine_resolves_against_this_cpu():
    native = bool(device.CPU_BF16_FLAGS & device.cpu_flags())
    assert _cpu_autocast("auto") == (torch.bfloat16 if native else None)
    assert _cpu_autocast("fp32") is None and _cpu_autocast("bf16") == torch.bfloat16


def test_cpu_inference_on_a_gpu_machine_resolves_against_the_cpu(monkeypatch):
    """A machine whose GPU computes bf16 natively, with a CPU that does not: a model placed on the CPU predicts in
    fp32 (no autocast); before issue 39 `auto` asked the GPU and ran the CPU in emulated bf16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert device.resolve("auto") == "bf16"  # the GPU, where training would run
    assert _cpu_autocast("auto") is None
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert _cpu_autocast("auto") == torch.bfloat16
