"""ONNX graphs of a merged model: the export (`export --onnx`), onnxruntime's int8 graph, and a session as a model.

`export_onnx` writes the fp32 graph and checks it against PyTorch on real texts. `write_int8` writes the int8
graph that `predict --precision int8 --int8-engine onnxruntime` runs (loraclf.infer.int8 explains the choice):

  1. the merged model exported with eager attention, so that the attention is plain MatMul/Softmax nodes that
     onnxruntime's transformer optimizer can fuse (SDPA exports as one opaque pattern it leaves alone);
  2. `onnxruntime.transformers.optimizer.optimize_model` (model type "bert") fuses the embedding LayerNorm,
     attention, GELU and residual LayerNorms into single kernels; the fused fp32 graph is checked against PyTorch
     and dropped for the unfused one if it disagrees (a family whose graph the optimizer misreads);
  3. `onnxruntime.quantization.quantize_dynamic`: int8 weights, one scale per output channel, activations
     quantized per batch at run time.

The file is a stock ONNX model: `onnxruntime.InferenceSession("model.int8.onnx")` runs it, inputs as the
tokenizer names them (input_ids, attention_mask, token_type_ids where the model takes them), output "logits".
`OnnxClassifier` wraps such a session as a torch module, so loraclf's predict path runs it like the torch model.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import runs
from ..base.errors import ModelError

ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-3
OPSET = 17
INT8_ONNX_FILE = "model.int8.onnx"
NEEDS_ORT = "needs onnx and onnxruntime: pip install 'loraclf[export]'"
# model types whose graphs onnxruntime's "bert" optimizer fuses (the BERT layout: embeddings, post-LayerNorm blocks)
FUSED_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")
INT8_SCHEME = "onnxruntime quantize_dynamic: int8 weights per output channel (QInt8), activations per batch"
FALLBACK_TEXTS = ("The quick brown fox jumps over the lazy dog.", "Stocks fell sharply on Monday.", "A short one.",
                  "Scientists report a new method for measuring ocean temperatures from orbit.")


def onnxruntime():
    """The onnxruntime module; one error line naming the extra where it is not installed."""
    try:
        import onnx  # noqa: F401  (quantization and fusion read and write onnx protos)
        import onnxruntime as ort
    except ImportError:
        raise ModelError(f"the onnxruntime int8 engine and --onnx {NEEDS_ORT}") from None
    return ort


def sample_texts(folder: Path, n: int = 32) -> list[str]:
    """Real texts to check a graph on: a run's validation texts, longest and shortest included; a few fixed ones
    for a folder without them (an export)."""
    import pandas as pd

    path = Path(folder) / runs.VAL_PREDICTIONS
    texts: list[str] = []
    if path.is_file():
        try:
            texts = [t for t in pd.read_csv(path)["text"].astype(str).tolist() if t.strip()]
        except Exception:  # a damaged side file must not block the export; fall back below
            texts = []
    texts = sorted(texts or FALLBACK_TEXTS, key=len)
    return texts[:n // 2] + texts[-(n - n // 2):] if len(texts) > n else texts


class _Logits(torch.nn.Module):
    """ONNX graph input/outputs by name: token tensors in, logits out."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.names, tensors))).logits


def input_names(model, tokenizer) -> list[str]:
    accepted = inspect.signature(model.forward).parameters
    return [k for k in tokenizer.model_input_names if k in accepted]


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session on path, with as many threads as torch uses here."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a torn or foreign graph
        raise ModelError(f"cannot load the ONNX model {path}: {str(e).strip().splitlines()[0][:200]}") from None


def _write_graph(model, tokenizer, path: Path, max_length: int) -> list[str]:
    names = input_names(model, tokenizer)
    example = tokenizer(list(FALLBACK_TEXTS[:2]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    try:
        # The TorchScript exporter: no onnxscript needed, and seconds instead of a minute for an encoder.
        with quiet():
            torch.onnx.export(_Logits(model, names).eval(), tuple(example[n] for n in names), str(path),
                              input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False)
    except Exception as e:  # the exporter raises many types for unsupported operators
        raise ModelError(f"ONNX export failed: {str(e).strip().splitlines()[0][:300]}") from None
    return names


def compare(sess, model, tokenizer, texts: list[str], max_length: int) -> dict:
    """A graph's logits against the torch model's on texts, at two batch shapes (so a graph that baked in the
    example's shape shows here): the largest |difference|, whether every logit is within ONNX_ATOL/RTOL, and how
    many rows have the same argmax."""
    names = [i.name for i in sess.get_inputs()]
    worst, agree, rows, within = 0.0, 0, 0, True
    for chunk in (texts, texts[:3]):
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            ref = model(**{n: enc[n] for n in names}).logits.float().numpy()
        got = sess.run(["logits"], {n: enc[n].numpy().astype(np.int64) for n in names})[0]
        if got.shape != ref.shape:
            return {"max_abs_diff": float("inf"), "argmax_agree": 0, "checked_texts": rows + len(chunk),
                    "within_tolerance": False}
        within = within and bool(np.allclose(got, ref, atol=ONNX_ATOL, rtol=ONNX_RTOL))
        worst = max(worst, float(np.abs(got - ref).max()))
        agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
        rows += len(chunk)
    return {"max_abs_diff": worst, "argmax_agree": agree, "checked_texts": rows, "within_tolerance": within}


def export_onnx(model, tokenizer, folder: Path, texts: list[str], max_length: int) -> dict:
    """Write folder/model.onnx (dynamic batch and sequence axes) and check it against PyTorch on texts."""
    onnxruntime()
    path = Path(folder) / runs.ONNX_FILE
    _write_graph(model, tokenizer, path, max_length)
    check = compare(session(path), model, tokenizer, texts, max_length)
    if not check.pop("within_tolerance"):
        raise ModelError(f"the ONNX model disagrees with PyTorch (max |diff| {check['max_abs_diff']:.2e} > "
                         f"{ONNX_ATOL:g}); export without --onnx, or report this model type")
    return {"file": runs.ONNX_FILE, **check, "atol": ONNX_ATOL, "rtol": ONNX_RTOL, "opset": OPSET}


@contextlib.contextmanager
def quiet():
    """No tracer warnings from the exporter and no root-logger advice from the quantizer: neither is the user's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def eager_attention(model):
    """The model with eager attention inside the block (its own implementation restored after)."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield model
        return
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def _fuse(src: Path, dest: Path, config) -> dict[str, int]:
    """onnxruntime's transformer fusions of src written to dest; the fused operators by type."""
    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)  # it logs every fusion it tries
    fused = optimizer.optimize_model(str(src), model_type="bert", num_heads=config.num_attention_heads,
                                     hidden_size=config.hidden_size)
    fused.save_model_to_file(str(dest))
    return {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}


def _fused_graph(model, tokenizer, work: Path, texts: list[str], max_length: int) -> tuple[Path, dict]:
    """The fp32 graph to quantize: fused where the family allows and the fused graph matches PyTorch."""
    plain = work / "plain.onnx"
    with eager_attention(model):
        _write_graph(model, tokenizer, plain, max_length)
    if model.config.model_type not in FUSED_TYPES:
        return plain, {"fused": {}, "fusion": f"none: {model.config.model_type} is not a BERT-layout family"}
    fused = work / "fused.onnx"
    try:
        ops = _fuse(plain, fused, model.config)
    except Exception as e:  # the optimizer raises many types on graphs it cannot read
        return plain, {"fused": {}, "fusion": f"skipped: {str(e).strip().splitlines()[0][:120]}"}
    check = compare(session(fused), model, tokenizer, texts, max_length)
    if not check["within_tolerance"]:
        return plain, {"fused": {}, "fusion": f"skipped: the fused graph disagrees with PyTorch "
                                              f"(max |diff| {check['max_abs_diff']:.2e})"}
    return fused, {"fused": ops, "fusion": "onnxruntime.transformers.optimizer, model_type bert"}


def write_int8(model, tokenizer, folder: Path, texts: list[str], max_length: int) -> dict:
    """Write folder/model.int8.onnx (see the module docstring) from a merged fp32 model; what was done, and its
    argmax agreement with the fp32 torch model on texts."""
    onnxruntime()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:  # a copy: the caller's model stays where it is
        model = copy.deepcopy(model).float().cpu()
    model = model.eval()
    path = Path(folder) / INT8_ONNX_FILE
    with tempfile.TemporaryDirectory(prefix="loraclf-onnx-") as tmp:
        src, info = _fused_graph(model, tokenizer, Path(tmp), texts, max_length)
        part = Path(tmp) / INT8_ONNX_FILE
        # DefaultTensorType: the fused graph's com.microsoft ops carry no type information the quantizer can read
        with quiet():
            quantize_dynamic(str(src), str(part), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        runs.atomic_write_bytes(path, part.read_bytes())
    check = compare(session(path), model, tokenizer, texts, max_length)
    return {"file": INT8_ONNX_FILE, "scheme": INT8_SCHEME, **info, "checked_texts": check["checked_texts"],
            "argmax_agree_fp32": check["argmax_agree"], "bytes": path.stat().st_size,
            "loader": f"onnxruntime.InferenceSession('{INT8_ONNX_FILE}')", "opset": OPSET}


class OnnxClassifier(torch.nn.Module):
    """An onnxruntime session on a sequence-classification graph, called like a transformers model:
    model(input_ids=..., attention_mask=...) returns an output whose .logits is a float tensor."""

    def __init__(self, path: Path, config):
        super().__init__()
        self.path = Path(path)
        self.config = config
        self.session = session(self.path)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids: torch.Tensor, **tensors: torch.Tensor):
        from transformers.modeling_outputs import SequenceClassifierOutput

        tensors["input_ids"] = input_ids
        feed = {}
        for name in self.inputs:
            value = tensors.get(name)
            if value is None and name == "token_type_ids":
                value = torch.zeros_like(input_ids)  # what the model does without them: segment 0 everywhere
            if value is None:
                raise ModelError(f"the ONNX model {self.path.name} needs '{name}', which the batch does not hold")
            feed[name] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        logits = self.session.run(["logits"], feed)[0]
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))


def load_int8(folder: Path, config) -> OnnxClassifier:
    """The onnxruntime int8 model of an export folder (written by `export --quantize int8`)."""
    path = Path(folder) / INT8_ONNX_FILE
    if not path.is_file():
        raise ModelError(f"{folder} holds no {INT8_ONNX_FILE}; write one with `loraclf export RUN --output DIR "
                         f"--quantize int8` (with onnxruntime installed)")
    return OnnxClassifier(path, config)


def build_int8(model, tokenizer, texts: list[str], max_length: int) -> OnnxClassifier:
    """The onnxruntime int8 model of a merged model, built in a temporary folder (seconds) and loaded from it."""
    with tempfile.TemporaryDirectory(prefix="loraclf-int8-") as tmp:
        write_int8(model, tokenizer, Path(tmp), texts, max_length)
        return OnnxClassifier(Path(tmp) / INT8_ONNX_FILE, model.config)  # the session holds the graph in memory
