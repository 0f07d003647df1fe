"""Dynamic int8 quantization of a merged model's nn.Linear layers, for CPU inference, by one of two engines.

Dynamic quantization stores each nn.Linear weight as int8 and quantizes the activations per batch at run time;
embeddings, LayerNorm and softmax stay fp32. It needs no calibration data, which is why it is the one int8 mode here.
Two engines do it, chosen by `--int8-engine` (evaluate, predict, serve; the API's `int8_engine=`):

- torch: `torch.ao.quantization.quantize_dynamic` on the merged model in memory, one fp32 scale per tensor.
  Needs nothing else; the saved form is FOLDER/model.int8.safetensors (below, `load_quantized`).
- onnxruntime (loraclf.infer.onnx): the merged model exported to ONNX, its attention, GELU and LayerNorm fused by
  onnxruntime's transformer optimizer (BERT-layout families), then `quantize_dynamic` QInt8 with one scale per output
  channel. Needs the `export` extra (onnx, onnxruntime); the saved form is FOLDER/model.int8.onnx, a plain ONNX file
  any onnxruntime session runs (`loraclf.infer.onnx.load_int8` wraps one as a model).
- auto (the default): onnxruntime where the CPU has int8 dot-product instructions (avx512_vnni, avx_vnni, amx_int8)
  and onnxruntime is installed, torch elsewhere. That is the rule the measurements below give.

Why two, and why that rule. Measured 2026-12-02 on a BUSY 2-core AMD EPYC (AVX2, no AVX512/VNNI/AMX; five other
jobs running, so only the ratios mean anything, and loosely): packaged MiniLM-L6 trained 150 LoRA steps on AG News,
merged and exported; 500 AG News test texts, 1 thread, length-sorted batches of 64, median of 3 alternating rounds;
argmax agreement over all 2,000 test texts:

    contender               time (s)  vs torch fp32  same labels as fp32  test accuracy
    torch fp32                  67.2          1.00x               -              88.40%
    torch int8                  42.4          1.59x          97.55%              89.15%
    onnxruntime fp32            65.8          1.02x         100.00%              88.40%
    onnxruntime int8 (plain)    50.4          1.33x          98.00%              88.60%

On an IDLE 2-core AMD EPYC Zen 4 (avx512_bf16 and avx512_vnni, no AMX), 2 threads, the model of
bench/train_speed.py's loraclf run (471 steps), all 2,000 test texts, batch 64, median of 3 rounds, 2026-12-04
(bench/results/predict_speed_zen4.md; an earlier run, bench/results/predict_speed.md, gave bf16 181, torch int8 207
and unfused onnxruntime int8 244 texts/s):

    contender                              texts/s  vs bf16 autocast  same labels as fp32  test accuracy
    torch fp32                                  99           0.51x              -              89.55%
    bf16 autocast                              196           1.00x         100.00%             89.55%
    torch int8                                 199           1.02x          97.35%             88.70%
    onnxruntime int8, by hand: unfused,
      per-tensor (quantize_dynamic defaults)   253           1.29x          98.35%             89.25%
    onnxruntime int8, fused per-channel        258           1.32x          99.30%             89.60%

At batch 16 (bench/results/predict_speed_zen4_bs16.md, same command with --batch-size 16) bf16 stays at 197
texts/s and int8 speeds up: onnxruntime fused per-channel 291 (1.48x, 89.35%), torch 297 (1.51x, 89.05%), hence
limits.INT8_PREDICT_BATCH.

On an idle 2-core Intel Xeon with AMX (amx_bf16, amx_int8), same command (bench/results/predict_speed_amx.md):

    contender               texts/s  vs bf16 autocast  same labels as fp32  test accuracy
    torch fp32                  176           0.36x              -              89.55%
    bf16 autocast (AMX)         495           1.00x         100.00%             89.55%
    torch int8                  266           0.54x          97.15%             88.80%
    onnxruntime int8 (plain)    314           0.63x          98.20%             89.10%

So torch's won by 1.19x on the AVX2 machine (its fbgemm kernels do well there; onnxruntime's int8 GEMM gains most
from VNNI), onnxruntime's by 1.18x-1.30x on the VNNI and AMX ones. Fusing the graph and one scale per channel took
onnxruntime's from 98.35% to 99.30% agreement with fp32 and to fp32's test accuracy (+0.05 points), at the same
speed. On a CPU with native bf16 neither engine reaches 1.5x the bf16 path: 1.32x on Zen 4, and with AMX both are
slower than bf16, which int8 on such a CPU says once (SLOWER_ON_AMX). onnxruntime's file is also smaller (23 MB against 59 MB for MiniLM:
torch keeps the embeddings fp32 beside the int8 Linear weights).

torch.ao.quantization is deprecated (torch 2.13 warns that it "will be removed in 2.10", and that quantized tensor
types are deprecated; the named migration is torchao's `quantize_`, which loraclf does not depend on). It still works
in the pinned torch; quantize_model silences exactly those two warnings, and the tests fail if it ever stops working.

The saved form (`save_quantized`): FOLDER/model.int8.safetensors beside the fp32 export, plain tensors only:
each quantized Linear as `NAME.weight.int8` (int8), `NAME.weight.scale` and `NAME.weight.zero_point` (its
per-tensor quantization), `NAME.bias` (fp32); every other tensor of the model under its state-dict name. A quantized
model's weights are not those of a stock model, so loading needs the same quantize_dynamic applied to a freshly built
model first; `load_quantized` does exactly that:

    from transformers import AutoTokenizer
    from loraclf.infer.int8 import load_quantized
    model = load_quantized("export/")                # the model built from export/config.json, quantized, loaded
    tokenizer = AutoTokenizer.from_pretrained("export/")

The onnxruntime engine's file, FOLDER/model.int8.onnx, needs no loraclf: its inputs are the tokenizer's tensors
(input_ids, attention_mask, and token_type_ids where the model takes them, int64) and its output is `logits`:

    import onnxruntime, numpy as np
    session = onnxruntime.InferenceSession("export/model.int8.onnx", providers=["CPUExecutionProvider"])
    batch = tokenizer(["some text"], return_tensors="np")
    names = {i.name for i in session.get_inputs()}
    logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in batch.items() if k in names})[0]
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import warnings
from pathlib import Path

import torch

from ..base import device
from . import onnx as onnx_graph
from .. import runs
from ..base.errors import ConfigError, ModelError
from ..base.device import INT8_ENGINES

QUANTIZED_FILE = "model.int8.safetensors"
# CPU flags of int8 dot-product instructions (VNNI, AMX-INT8), where onnxruntime's int8 measured faster than torch's
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# said once per loaded model where bf16 runs on AMX: measured there, int8 was the slower path (the table above)
SLOWER_ON_AMX = ("int8 on this CPU runs slower than bf16, whose matmuls use its AMX units (measured 0.54x the texts/s "
                 "of --precision auto on a Xeon with AMX with torch's int8, 0.63x with onnxruntime's); int8 here only "
                 "saves memory: --precision auto is faster")
_FORMAT = "loraclf dynamic int8: torch.ao quantize_dynamic, nn.Linear, qint8 per-tensor"
# The two warnings torch 2.13 gives on every quantize_dynamic call (see the module docstring).
_KNOWN_WARNINGS = (r"torch\.ao\.quantization is deprecated", r"torch\.quantize_per_tensor, torch\.quantize_per_channel")


def _dynamic_linear():
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


def quantized_linears(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's dynamically quantized Linear layers by module name (empty for a float model)."""
    kind = _dynamic_linear()
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, kind)}


def check_merged(model: torch.nn.Module) -> None:
    """One error line for a model whose adapter is not merged: int8 (either engine) quantizes merged weights."""
    if hasattr(model, "peft_config"):
        raise ModelError("int8 quantization needs the merged model (adapter folded into the base weights); merge it "
                         "first (model.merge_adapter) or predict with --precision fp32")


def quantize_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a merged fp32 model with every nn.Linear dynamically quantized to int8, in eval mode, on the CPU."""
    import copy

    check_merged(model)
    if quantized_linears(model):
        return model
    return _quantize(copy.deepcopy(model))


@contextlib.contextmanager
def _known_warnings_silenced():
    with warnings.catch_warnings():
        for message in _KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def _quantize(model: torch.nn.Module) -> torch.nn.Module:
    with _known_warnings_silenced():
        return torch.ao.quantization.quantize_dynamic(model.float().cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def int8_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A quantized model as plain tensors (the saved form described in the module docstring)."""
    linears = quantized_linears(model)
    out: dict[str, torch.Tensor] = {}
    for name, mod in linears.items():
        w, b = mod.weight(), mod.bias()
        if w.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            raise ModelError(f"{name} is quantized {w.qscheme()}; only per-tensor int8 can be saved")
        out[f"{name}.weight.int8"] = w.int_repr().contiguous()
        out[f"{name}.weight.scale"] = torch.tensor(w.q_scale(), dtype=torch.float64)
        out[f"{name}.weight.zero_point"] = torch.tensor(w.q_zero_point(), dtype=torch.int64)
        if b is not None:
            out[f"{name}.bias"] = b.detach().contiguous()
    inside = tuple(f"{name}." for name in linears)
    for key, value in model.state_dict().items():
        if not key.startswith(inside) and isinstance(value, torch.Tensor):
            out[key] = value.detach().contiguous()
    return out


def save_quantized(folder: str | Path, model: torch.nn.Module) -> Path:
    """Write FOLDER/model.int8.safetensors from a merged model (quantized here if it is not yet). Returns its path."""
    from safetensors.torch import save

    model = quantize_model(model)
    path = Path(folder) / QUANTIZED_FILE
    runs.atomic_write_bytes(path, save(int8_tensors(model), metadata={"format": "pt", "quantization": _FORMAT}))
    return path


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("quantization") != _FORMAT:
                raise ModelError(f"{path} is not an int8 model written by loraclf (no '{_FORMAT}' in its metadata); "
                                 f"write one with `loraclf export RUN --output DIR --quantize int8`")
            return {k: f.get_tensor(k) for k in f.keys()}
    except ModelError:
        raise
    except Exception as e:  # safetensors raises its own types for a torn or foreign file
        raise ModelError(f"cannot read the int8 model {path}: {str(e).strip().splitlines()[0][:200]}") from None


def _fill(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Put the saved tensors into a freshly quantized model of the same architecture; a mismatch is one error line."""
    linears = quantized_linears(model)
    inside = tuple(f"{name}." for name in linears)
    state = model.state_dict()  # the quantized layers' own entries stay as built; set_weight_bias fills them below
    own = [k for k in state if not k.startswith(inside)]
    saved = {k for k in tensors if not k.startswith(inside)}
    if set(own) != saved:
        missing, unexpected = sorted(set(own) - saved), sorted(saved - set(own))
        raise ModelError(f"{path} does not fit the model of {path.parent / 'config.json'} "
                         f"({'missing' if missing else 'unexpected'}: {', '.join((missing or unexpected)[:3])}); "
                         f"export the run again")
    try:
        for k in own:  # in place: the state dict's _metadata carries the quantized layers' format version
            state[k] = tensors[k]
        model.load_state_dict(state)
        for name, mod in linears.items():
            want, got = tuple(mod.weight().shape), tuple(tensors[f"{name}.weight.int8"].shape)
            if want != got:
                raise RuntimeError(f"{name} is {list(got)} in the file, {list(want)} in the model")
            w = torch._make_per_tensor_quantized_tensor(tensors[f"{name}.weight.int8"],
                                                        float(tensors[f"{name}.weight.scale"]),
                                                        int(tensors[f"{name}.weight.zero_point"]))
            mod.set_weight_bias(w, tensors.get(f"{name}.bias"))
    except (KeyError, RuntimeError) as e:
        why = re.sub(r"\s+", " ", str(e)).strip()[:200]
        raise ModelError(f"{path} does not fit the model of {path.parent / 'config.json'}: {why}; "
                         f"export the run again") from None


def load_quantized(folder: str | Path) -> torch.nn.Module:
    """The int8 model of an export folder: built from its config.json, quantized as quantize_model does, loaded."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    path = folder / QUANTIZED_FILE
    if not path.is_file():
        raise ModelError(f"{folder} holds no int8 model ({QUANTIZED_FILE}); write one with `loraclf export RUN "
                         f"--output DIR --quantize int8`, or predict with --precision fp32")
    tensors = _read(path)
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {folder / 'config.json'}: {str(e).strip().splitlines()[0][:200]}") from None
    model = _quantize(AutoModelForSequenceClassification.from_config(config))
    with _known_warnings_silenced():
        _fill(model, tensors, path)
    return model.eval()


# ------------------------------------------------------------------------------------------ the engine


def onnxruntime_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def auto_engine() -> str:
    """The int8 engine measured faster on this kind of CPU (the module docstring): onnxruntime's where the CPU has
    int8 dot-product instructions (VNNI, AMX) and onnxruntime is installed, torch's elsewhere."""
    return "onnxruntime" if onnxruntime_installed() and device.cpu_flags() & VNNI_FLAGS else "torch"


def resolve_engine(engine: str, where: str = "--int8-engine") -> str:
    """torch or onnxruntime for an engine name (auto: auto_engine); one error line for a bad or missing one."""
    if engine not in INT8_ENGINES:
        raise ConfigError([f"'{where}' must be one of {', '.join(INT8_ENGINES)}, got '{engine}'"])
    if engine == "auto":
        return auto_engine()
    if engine == "onnxruntime" and not onnxruntime_installed():
        raise ConfigError([f"'{where}' onnxruntime {onnx_graph.NEEDS_ORT}; or use {where} torch"])
    return engine


def int8_model(model: torch.nn.Module, tokenizer, folder: Path | None, max_length: int,
               engine: str = "auto") -> torch.nn.Module:
    """The int8 model of a merged fp32 model, by engine: the folder's saved file of that engine where it has one
    (`export --quantize int8`), else built here (torch: quantized in memory, under a second; onnxruntime: exported,
    fused and quantized in a temporary folder, seconds)."""
    engine = resolve_engine(engine)
    check_merged(model)
    if engine == "onnxruntime":
        if folder is not None and (Path(folder) / onnx_graph.INT8_ONNX_FILE).is_file():
            return onnx_graph.load_int8(Path(folder), model.config)
        texts = onnx_graph.sample_texts(Path(folder)) if folder is not None else list(onnx_graph.FALLBACK_TEXTS)
        return onnx_graph.build_int8(model, tokenizer, texts, max_length)
    if folder is not None and (Path(folder) / QUANTIZED_FILE).is_file():
        return load_quantized(folder)
    return quantize_model(model)
