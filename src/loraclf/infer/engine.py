"""The one loader for trained models: a run folder (its adapter merged into the base) or a folder written by
`loraclf export`, opened once (loraclf.runs) and returned as an `InferenceModel` that predicts outputs and turns
them into labels, label sets or values by the run's decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .. import config as config_mod
from .. import model as model_mod
from .. import runs
from .. import task as problem
from ..base import device as device_mod
from ..base import logs
from ..base.errors import ConfigError, ModelError
from ..config import INT8_PREDICT_BATCH, PREDICT_BATCH, DataConfig
from ..task import MULTI, REGRESSION, Decision
from . import int8 as quantize_mod
from . import inputs as inputs_mod
from .forward import model_problem_type, predict_texts

if TYPE_CHECKING:  # annotations only
    from transformers import PreTrainedTokenizerBase

# the data keys an export keeps (loraclf_export.json "data"), so predicting from it reads inputs as the run did
INFERENCE_DATA_KEYS = ("text_column", "text_pair_column", "truncation", "label_column", "label_columns",
                       "label_delimiter", "allow_empty_labels", "id_column", "max_length", "max_text_chars",
                       "long_text", "head_tokens", "stride", "chunk_pooling")
CONFIG_THRESHOLDS = "loraclf_thresholds"  # the export's config.json key of the run's decision thresholds


def label_values(id2label: dict[int, str], int_labels: bool) -> list:
    """What the competition format writes per class: the class id for integer labels, else the name."""
    return [i if int_labels else id2label[i] for i in range(len(id2label))]


@dataclass
class InferenceModel:
    """A model ready to predict, loaded from a run folder or from an exported model folder."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    id2label: dict[int, str]
    max_length: int
    int_labels: bool
    data: DataConfig  # how inputs are read and cut: the run's data section (an export keeps it)
    source: str  # "run" or "export"
    decision: Decision = field(default_factory=Decision)  # the problem type, temperature, thresholds, scaling
    folder: Optional[runs.ModelFolder] = None  # the opened folder it was loaded from
    int8: Optional[torch.nn.Module] = field(default=None, repr=False)  # the int8 model, built on first int8 use
    int8_engine: str = "auto"  # whose int8 (loraclf.infer.int8.INT8_ENGINES): auto picks the faster one for this CPU

    @property
    def problem_type(self) -> str:
        return self.decision.problem_type

    @property
    def path(self) -> Optional[Path]:
        """The folder it was loaded from."""
        return None if self.folder is None else self.folder.path

    @property
    def labels(self) -> list[str]:
        """Label names in id order (regression: the one target's name)."""
        return [self.id2label[i] for i in range(len(self.id2label))]

    @property
    def reads_pairs(self) -> bool:
        return inputs_mod.reads_pairs(self.data)

    def predict(self, texts: list[str], batch_size: Optional[int] = None, precision: str = "fp32",
                progress: bool = False, pairs: Optional[list[str]] = None) -> np.ndarray:
        """Outputs in input order: probabilities (single- and multi-label) or values (regression). batch_size None:
        PREDICT_BATCH, or INT8_PREDICT_BATCH for int8 (loraclf.config.limits says why)."""
        pairs = inputs_mod.check_pairs(self.data, texts, pairs)
        model, default = self.model, PREDICT_BATCH
        if device_mod.resolve_inference(precision) == device_mod.INT8:
            model, precision, default = self.int8_model(), "fp32", INT8_PREDICT_BATCH  # int8 weights, fp32 activations
        batch_size = batch_size or default
        return predict_texts(model, self.tokenizer, texts, batch_size, self.max_length, precision, progress,
                             pairs=pairs, data=self.data, decision=self.decision)

    def int8_model(self) -> torch.nn.Module:
        """The model with its Linear layers dynamically quantized to int8 by int8_engine (loraclf.infer.int8), on the
        CPU: an export's saved int8 file of that engine where it has one, else built here once and kept."""
        if self.int8 is None:
            self.int8 = quantize_mod.int8_model(self.model, self.tokenizer, self.path, self.max_length,
                                                self.int8_engine)
            if device_mod.has_amx():
                logs.get(__name__).warning(quantize_mod.SLOWER_ON_AMX)
        return self.int8

    def decide(self, out: np.ndarray) -> list:
        """Per row: the label (class id for integer labels, else its name), the list of label names, or the value."""
        if self.problem_type == REGRESSION:
            return [float(v) for v in out]
        pred = problem.predictions(out, self.decision)
        if self.problem_type == MULTI:
            return [[self.id2label[int(j)] for j in np.flatnonzero(row)] for row in pred]
        values = label_values(self.id2label, self.int_labels)
        return [values[int(i)] for i in pred]


def _export_decision(p: Path, model, info: dict) -> Decision:
    """An export's problem type and thresholds; its temperature and target scaling are folded into its weights."""
    pt = model_problem_type(model)
    saved = info.get("decision") if isinstance(info.get("decision"), dict) else {}
    thresholds = saved.get("thresholds", model.config.to_dict().get(CONFIG_THRESHOLDS))
    want = model.config.num_labels if pt == MULTI else 1
    if thresholds is not None and not (isinstance(thresholds, list) and len(thresholds) == want
                                       and all(isinstance(t, (int, float)) for t in thresholds)):
        raise ModelError(f"{p / runs.EXPORT_INFO} is damaged: 'decision.thresholds' must be a list of {want} "
                         f"number(s); export the run again")
    return Decision(pt, thresholds=thresholds, threshold_metric=saved.get("threshold_metric"))


def _export_data(p: Path, info: dict, pt: str, max_length: int) -> DataConfig:
    """The run's data keys kept in the export (INFERENCE_DATA_KEYS); the defaults for an export without them."""
    saved = info.get("data") if isinstance(info.get("data"), dict) else {}
    tree = {k: v for k, v in saved.items() if k in INFERENCE_DATA_KEYS}
    tree["max_length"] = max_length
    try:
        return config_mod.from_dict({"model": {"problem_type": pt}, "data": tree}).data
    except ConfigError as e:
        raise ModelError(f"{p / runs.EXPORT_INFO} is damaged ({e}); export the run again") from None


def _load_export(folder: runs.ExportFolder, device: str) -> InferenceModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    p, info = folder.path, folder.info
    model_mod.quiet_transformers()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(p))
        tokenizer = AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the model folder {p}: {str(e).strip().splitlines()[0][:300]}") from None
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    int_labels = info.get("int_labels", all(v.isdigit() and int(v) == k for k, v in id2label.items()))
    max_length = int(info.get("max_length") or min(tokenizer.model_max_length, 512))
    decision = _export_decision(p, model, info)
    data = _export_data(p, info, decision.problem_type, max_length)
    return InferenceModel(model.eval().to(device), tokenizer, id2label, max_length, bool(int_labels), data, "export",
                          decision, folder)


def _load_run(run: runs.Run, device: str) -> InferenceModel:
    model, tokenizer = model_mod.load_trained(run, merge=False)
    model = model_mod.merge_adapter(model).eval().to(device)
    return InferenceModel(model, tokenizer, run.id2label, run.config.data.max_length, run.label_map.int_labels,
                          run.config.data, "run", run.decision, run)


def load_inference_model(source: str | Path | runs.ModelFolder, device: Optional[str] = None,
                         int8_engine: str = "auto") -> InferenceModel:
    """The one loader: a run folder (adapter merged into the base) or a folder written by `loraclf export`, given
    as a path or as the folder already opened (runs.Run / runs.ExportFolder, which is not re-read).

    device: default the first CUDA GPU when there is one, else the CPU. int8_engine: whose int8 precision="int8"
    runs (loraclf.infer.int8.INT8_ENGINES; checked here, used on first int8 use).
    """
    quantize_mod.resolve_engine(int8_engine, "--int8-engine")
    folder = source if isinstance(source, (runs.Run, runs.ExportFolder)) else runs.open_model_folder(source)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    im = _load_run(folder, device) if isinstance(folder, runs.Run) else _load_export(folder, device)
    im.int8_engine = int8_engine
    return im
