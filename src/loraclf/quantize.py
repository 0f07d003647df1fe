"""Dynamic int8 quantization of a merged model's nn.Linear layers, for CPU inference.

Dynamic quantization stores each nn.Linear weight as int8 with one fp32 scale per tensor, and quantizes the
activations per batch at run time. Embeddings, LayerNorm and softmax stay fp32. It needs no calibration data, which is
why it is the one int8 mode offered here.

Why torch's `torch.ao.quantization.quantize_dynamic` and not onnxruntime's `quantize_dynamic` on the exported ONNX
(`QuantType.QInt8`). Measured once, 2026-12-02, on a BUSY 2-core AMD EPYC (AVX2, no AVX512/VNNI/AMX; five other jobs
running, so only the ratios mean anything, and loosely): packaged MiniLM-L6 trained 150 LoRA steps on AG News, merged
and exported; 500 AG News test texts, 1 thread, length-sorted batches of 64, median of 3 alternating rounds; argmax
agreement over all 2,000 test texts:

    contender               time (s)  vs torch fp32  same labels as fp32  test accuracy
    torch fp32                  67.2          1.00x               -              88.40%
    torch int8 (chosen)         42.4          1.59x          97.55%              89.15%
    onnxruntime fp32            65.8          1.02x         100.00%              88.40%
    onnxruntime int8            50.4          1.33x          98.00%              88.60%

Both agree with bf16 autocast on 98.5% of the first 200 texts (bf16 is emulated on this CPU, so only 200).

Measured again, 2026-12-02, on an IDLE 2-core AMD EPYC Zen 4 (avx512_bf16 and avx512_vnni, no AMX), 2 threads,
the model of bench/train_speed.py's loraclf run (471 steps), all 2,000 test texts, median of 3 rounds
(bench/results/predict_speed.md):

    contender               texts/s  vs bf16 autocast  same labels as fp32  test accuracy
    torch fp32                   91           0.50x              -              89.55%
    bf16 autocast               181           1.00x          99.90%             89.65%
    torch int8 (chosen)         207           1.15x          97.95%             88.90%
    onnxruntime int8            244           1.35x          98.10%             89.00%

Measured again, 2026-12-04, on an idle 2-core Intel Xeon with AMX (amx_bf16, amx_int8), same command
(bench/results/predict_speed_amx.md):

    contender               texts/s  vs bf16 autocast  same labels as fp32  test accuracy
    torch fp32                  176           0.36x              -              89.55%
    bf16 autocast (AMX)         495           1.00x         100.00%             89.55%
    torch int8 (chosen)         266           0.54x          97.15%             88.80%
    onnxruntime int8            314           0.63x          98.20%             89.10%

So neither is faster everywhere: torch's won by 1.19x on the AVX2 machine, onnxruntime's by 1.18x on the VNNI one,
and on a CPU with native bf16 neither reaches 1.5x the bf16 path (with AMX both are slower than bf16). torch's is
kept because it needs nothing else: it quantizes the merged model in memory, so `predict --precision int8` works
from a run folder as well as an export and goes through the same predict path as fp32, with no ONNX export (seconds) and no onnx/onnxruntime install
(the optional `export` extra). On a VNNI CPU, `export --onnx` then onnxruntime's `quantize_dynamic` on model.onnx is
the faster int8 (`bench/predict_speed.py --onnx` measures both). onnxruntime's file is also smaller (23 MB against
59 MB: torch keeps the embeddings fp32 beside the int8 Linear weights).

torch.ao.quantization is deprecated (torch 2.13 warns that it "will be removed in 2.10", and that quantized tensor
types are deprecated; the named migration is torchao's `quantize_`, which loraclf does not depend on). It still works
in the pinned torch; quantize_model silences exactly those two warnings, and the tests fail if it ever stops working.

The saved form (`save_quantized`): FOLDER/model.int8.safetensors beside the fp32 export, plain tensors only:
each quantized Linear as `NAME.weight.int8` (int8), `NAME.weight.scale` and `NAME.weight.zero_point` (its
per-tensor quantization), `NAME.bias` (fp32); every other tensor of the model under its state-dict name. A quantized
model's weights are not those of a stock model, so loading needs the same quantize_dynamic applied to a freshly built
model first; `load_quantized` does exactly that:

    from transformers import AutoTokenizer
    from loraclf.quantize import load_quantized
    model = load_quantized("export/")                # the model built from export/config.json, quantized, loaded
    tokenizer = AutoTokenizer.from_pretrained("export/")
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path

import torch

from . import runs
from .errors import ModelError

QUANTIZED_FILE = "model.int8.safetensors"
# said once per loaded model where bf16 runs on AMX: measured there, int8 was the slower path (the table above)
SLOWER_ON_AMX = ("int8 on this CPU runs slower than bf16, whose matmuls use its AMX units (measured 0.54x the texts/s "
                 "of --precision auto on a Xeon with AMX); int8 here only saves memory: --precision auto is faster")
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


def quantize_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a merged fp32 model with every nn.Linear dynamically quantized to int8, in eval mode, on the CPU."""
    import copy

    if hasattr(model, "peft_config"):
        raise ModelError("int8 quantization needs the merged model (adapter folded into the base weights); merge it "
                         "first (model.merge_adapter) or predict with --precision fp32")
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
