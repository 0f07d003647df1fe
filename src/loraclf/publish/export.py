"""Export a run as a standalone model folder: merged fp32 weights (safetensors), config with labels, tokenizer.

The folder needs neither loraclf nor peft: stock `AutoModelForSequenceClassification.from_pretrained(DIR)` and
`transformers.pipeline("text-classification", model=DIR)` load it and give `loraclf predict`'s outputs. config.json
names the problem type, from which the pipeline picks its function (softmax, sigmoid for multi-label, none for
regression); the run's decision is folded into the head's last Linear (a temperature T: weight and bias / T; target
standardisation: weight x std, bias x std + mean). Thresholds cannot be folded: they are kept in config.json
(`loraclf_thresholds`) and loraclf_export.json, and loraclf applies them when it predicts from the export. With
onnx=True the folder also holds `model.onnx`, checked against PyTorch with onnxruntime on real texts before the
folder is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from . import card
from .. import task as problem, runs
from .. import model as model_mod
from ..infer import onnx as onnx_graph
from ..infer import int8 as quantize_mod
from ..model.architectures import FAMILIES
from ..base.errors import ConfigError, ModelError, RunError
from ..base.device import INT8
from ..infer.engine import CONFIG_THRESHOLDS, INFERENCE_DATA_KEYS
from ..base.version import __version__

ADAPTER_TAGS = ("lora_", "ia3_", "vera_", "hada_", "lokr_", "modules_to_save")  # left in the weights = not merged


def _check_output(run: Path, output: Path, overwrite: bool) -> None:
    if output.resolve() == run.resolve() or run.resolve() in output.resolve().parents:
        raise RunError(f"--output {output} lies inside the run folder {run}; export to a folder of its own")
    if output.exists() and not output.is_dir():
        raise RunError(f"--output {output} is a file; give a folder to write the model into")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise RunError(f"--output {output} already exists and is not empty; pick a new folder or pass --overwrite")


def head_out(model) -> torch.nn.Linear:
    """The classifier head's final Linear: the family's head_out (BERT classifier, RoBERTa/MPNet
    classifier.out_proj), else the model's last Linear with num_labels outputs."""
    fam = FAMILIES.get(model.config.model_type)
    for name in (fam.head_out if fam else ()):
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(mod, torch.nn.Linear):
            return mod
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels]
    if not last:
        raise ModelError(f"cannot find the classifier's output layer of this {model.config.model_type} model to fold "
                         f"the run's decision into; predict from the run folder instead")
    return last[-1]


def fold_decision(model, d: problem.Decision) -> dict:
    """Scale the head's last Linear so the plain logits are loraclf's: / temperature, or x std + mean (regression).

    Returns what was folded. Thresholds stay outside the weights (see the module docstring).
    """
    scale, shift = (d.target_std, d.target_mean) if d.problem_type == problem.REGRESSION else (1.0 / d.temperature, 0.0)
    if scale == 1.0 and shift == 0.0:
        return {}
    lin = head_out(model)
    if lin.bias is None and shift != 0.0:
        raise ModelError("the classifier's output layer has no bias to hold the regression target mean; predict from "
                         "the run folder instead")
    with torch.no_grad():
        lin.weight.mul_(scale)
        if lin.bias is not None:
            lin.bias.mul_(scale).add_(shift)
    if d.problem_type == problem.REGRESSION:
        return {"target_mean": d.target_mean, "target_std": d.target_std}
    return {"temperature": d.temperature}


def _export_info(run: runs.Run, folded: dict) -> dict:
    cfg, d = run.config, run.decision
    return {
        "source_run": str(run.path.resolve()),
        "base_model": cfg.model.name_or_path,
        "adapter_method": cfg.adapter.method,
        "max_length": cfg.data.max_length,
        "int_labels": run.label_map.int_labels,
        "dtype": "float32",
        "loraclf_version": __version__,
        "problem_type": d.problem_type,
        # folded: already in the weights; thresholds: applied by loraclf on the outputs
        "decision": {"thresholds": d.thresholds, "threshold_metric": d.threshold_metric, "folded": folded},
        "data": {k: getattr(cfg.data, k) for k in INFERENCE_DATA_KEYS},
    }


def write_quantized(folder: Path, model, tokenizer, run: Path, max_length: int) -> dict:
    """The int8 files of `export --quantize int8`: torch's always, onnxruntime's where it is installed (see
    loraclf.infer.int8 for which one `predict --precision int8` runs, and why)."""
    path = quantize_mod.save_quantized(folder, model)
    info = {"dtype": INT8, "engine_auto": quantize_mod.auto_engine(),
            "torch": {"file": path.name, "scheme": "torch.ao quantize_dynamic: nn.Linear, qint8 per-tensor",
                      "loader": "loraclf.infer.int8.load_quantized", "bytes": path.stat().st_size}}
    if quantize_mod.onnxruntime_installed():
        info["onnxruntime"] = onnx_graph.write_int8(model, tokenizer, folder, onnx_graph.sample_texts(run),
                                                    max_length)
    return info


def export_run(run: runs.Run | str | Path, output: str | Path, onnx: bool = False, overwrite: bool = False,
               quantize: Optional[str] = None) -> str:
    """Merge the run's adapter into the base weights and write a standalone model folder. Returns its path.

    quantize="int8" also writes the int8 model: model.int8.safetensors (torch's dynamic quantization; load it with
    loraclf.infer.int8.load_quantized) and, where onnxruntime is installed, model.int8.onnx (fused, quantized by
    onnxruntime; a stock onnxruntime.InferenceSession runs it). `predict --precision int8` uses one of them.
    """
    if quantize not in (None, INT8):
        raise ConfigError([f"--quantize must be {INT8}, got '{quantize}'"])
    run = runs.as_run(run)
    cfg, id2label, d = run.config, run.id2label, run.decision
    output = Path(output)
    _check_output(run.path, output, overwrite)
    model, tokenizer = model_mod.load_trained(run, merge=False)
    model = model_mod.merge_adapter(model)
    if hasattr(model, "peft_config") or any(tag in n for n, _ in model.named_parameters() for tag in ADAPTER_TAGS):
        raise ModelError(f"adapter.method '{cfg.adapter.method}' cannot be merged into the base weights, so there "
                         f"is no standalone model to export; predict from the run folder instead")
    model = model.float().eval()
    folded = fold_decision(model, d)
    model.config.problem_type = d.problem_type  # the pipeline's softmax / sigmoid / none
    if d.thresholds is not None:
        model.config.update({CONFIG_THRESHOLDS: list(d.thresholds)})
    model.config.id2label = {int(i): n for i, n in id2label.items()}
    model.config.label2id = {n: int(i) for i, n in id2label.items()}
    model.config.torch_dtype = "float32"
    # So that pipeline(..., truncation=True) cuts texts where training and `loraclf predict` do.
    tokenizer.model_max_length = cfg.data.max_length
    info = _export_info(run, folded)
    with runs.atomic_dir(output) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if onnx:
            info["onnx"] = onnx_graph.export_onnx(model, tokenizer, tmp, onnx_graph.sample_texts(run.path),
                                                  cfg.data.max_length)
        if quantize:
            info["quantized"] = write_quantized(tmp, model, tokenizer, run.path, cfg.data.max_length)
        runs.write_json(tmp / runs.EXPORT_INFO, info)
        card.write(run, tmp, "export")
    return str(output)
