"""The one inference pass. Texts (and the second texts of sentence pairs) go through `data.windows.encode`, the
tokenization of training, so data.long_text (truncate, head_tail, chunks) holds at prediction too: the windows of
one long document share its index and are pooled back into one row. Rows are sorted by length and cut into
token-capped batches; logits become outputs by the run's decision (task.outputs). Training's evaluation runs the
same `predict_logits` on its DataLoaders."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import task as problem
from ..base import device as device_mod
from ..base import logs
from ..config import DataConfig
from ..data import windows
from ..data.token_batches import token_batches
from ..task import REGRESSION, SINGLE, Decision

SINGLE_DECISION = Decision()


def pad_rows(enc, idx: np.ndarray, keys: list[str], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad one batch straight into int64 arrays (tokenizer.pad goes through Python dicts per row: slower)."""
    rows = [enc["input_ids"][i] for i in idx]
    width = max(len(r) for r in rows)
    arrays = {k: np.full((len(idx), width), pad_id if k == "input_ids" else 0, dtype=np.int64) for k in keys}
    for j, i in enumerate(idx):
        n = len(rows[j])
        sl = slice(width - n, width) if left else slice(0, n)
        for k in keys:
            arrays[k][j, sl] = enc[k][i]
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def _batches(enc, doc: np.ndarray, order: list[np.ndarray], keys: list[str], pad_id: int, left: bool):
    # padded one batch at a time: a 100k-token document's windows never sit padded in memory all at once
    for idx in order:
        yield {"index": torch.from_numpy(doc[idx]), **pad_rows(enc, idx, keys, pad_id, left)}


def _autocast_dtype(model, precision: str):
    """The autocast dtype for precision (bf16/fp16; auto resolved here); None for fp32 or a model already in half."""
    first = next(model.parameters(), None)  # None: an onnxruntime graph (loraclf.infer.onnx), run as it is
    if first is None or first.dtype != torch.float32:
        return None
    # auto resolves against the device the model sits on: a model on the CPU of a machine with a GPU asks the CPU
    return device_mod.autocast_dtype(device_mod.resolve(precision, device_type=first.device.type))


def model_problem_type(model) -> str:
    """The problem type a transformers model's config names (single-label when it names none)."""
    pt = getattr(model.config, "problem_type", None)
    return pt if pt in problem.PROBLEM_TYPES else SINGLE


def _inference_data(data: Optional[DataConfig], max_length: Optional[int]) -> DataConfig:
    data = data if data is not None else DataConfig()
    return data if max_length is None or max_length == data.max_length else dataclasses.replace(data, max_length=max_length)


def empty_outputs(model, decision: Decision) -> np.ndarray:
    if decision.problem_type == REGRESSION:
        return np.zeros(0, dtype=np.float64)
    return np.zeros((0, model.config.num_labels), dtype=np.float32)


def predict_texts(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: Optional[int] = None,
                  precision: str = "fp32", progress: bool = False, max_tokens: Optional[int] = None, *,
                  pairs: Optional[list[str]] = None, data: Optional[DataConfig] = None,
                  decision: Optional[Decision] = None) -> np.ndarray:
    """Outputs for texts (and their pairs), one row per text in input order (problem.outputs of the decision).

    data: how texts are cut (data.long_text, truncation of pairs, max_length; default: truncated at max_length or
    128). decision: default the model config's problem type with no temperature or thresholds. The rows (windows
    for chunks) are sorted by length and cut into batches of at most max_tokens padded tokens (default batch_size x
    max_length; see token_batches), then run through predict_probs, which pools the windows of a document.
    bf16/fp16 run a half-precision model as is and an fp32 model under autocast.
    """
    data = _inference_data(data, max_length)
    decision = decision if decision is not None else Decision(model_problem_type(model))
    dtype = _autocast_dtype(model, precision)
    if not len(texts):
        return empty_outputs(model, decision)
    enc = windows.encode(tokenizer, list(texts), None if pairs is None else list(pairs), data)
    doc = np.asarray(enc.pop("doc"), dtype=np.int64)
    lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(doc))
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    order = token_batches(lengths, batch_size, max_tokens or batch_size * data.max_length)
    with tqdm(total=len(doc), desc="predict", unit="text", leave=False,
              disable=not logs.show_progress(progress)) as bar:
        _, out, _ = predict_probs(model, _batches(enc, doc, order, keys, pad_id, left), autocast_dtype=dtype,
                                  progress=bar, decision=decision, pooling=data.chunk_pooling)
    return out


# ------------------------------------------------------------------------------------------ the model pass


def pool_windows(idx: np.ndarray, logits: np.ndarray, labels: Optional[np.ndarray], how: str = "mean"):
    """One row per index: the logits of windows sharing an index (a long document's chunks) pooled, mean or max.

    idx must be sorted (predict_logits returns it so); rows with a unique index pass through unchanged.
    """
    if len(idx) == 0 or np.all(idx[1:] != idx[:-1]):
        return idx, logits, labels
    uniq, start = np.unique(idx, return_index=True)
    pooled = (np.maximum if how == "max" else np.add).reduceat(logits, start, axis=0)
    if how != "max":
        pooled = pooled / np.diff(np.r_[start, len(idx)]).reshape(-1, *([1] * (logits.ndim - 1)))
    return uniq, pooled, (labels[start] if labels is not None else None)


@torch.inference_mode()
def predict_logits(model, loader, accelerator=None, autocast_dtype=None, progress=None,
                   pooling: str = "mean") -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """The one inference pass: the logits of every batch; returns (indices, logits, labels) in index order.

    loader yields dicts of model inputs plus `index` (and `labels` where known): a DataLoader in training, the
    token-budget batches of `predict.predict_texts` otherwise. Windows of one long document share an index and are
    pooled into one row (pool_windows). autocast_dtype runs the model under autocast. Under Accelerate,
    predictions from all processes are gathered without the padded duplicates of the last batch
    (gather_for_metrics), so metrics equal those of a single process.
    """
    model.eval()
    all_idx, all_logits, all_labels = [], [], []
    first = next(model.parameters(), None)  # None: an onnxruntime graph (loraclf.infer.onnx), fed on the CPU
    device = (accelerator.device if accelerator is not None
              else first.device if first is not None else torch.device("cpu"))
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    for batch in loader:
        idx = batch.pop("index")
        labels = batch.pop("labels", None)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            logits = model(**batch).logits.float()
        if accelerator is not None:
            idx = idx.to(device)
            if labels is not None:
                labels = labels.to(device)
                idx, logits, labels = accelerator.gather_for_metrics((idx, logits, labels))
            else:
                idx, logits = accelerator.gather_for_metrics((idx, logits))
        all_idx.append(idx.cpu().numpy())
        all_logits.append(logits.cpu().numpy())
        if labels is not None:
            all_labels.append(labels.cpu().numpy())
        if progress is not None:
            progress.update(len(idx))
    if not all_idx:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), None
    idx = np.concatenate(all_idx)
    logits = np.concatenate(all_logits)
    labels = np.concatenate(all_labels) if all_labels else None
    order = np.argsort(idx, kind="stable")
    return pool_windows(idx[order], logits[order], labels[order] if labels is not None else None, pooling)


def predict_probs(model, loader, accelerator=None, autocast_dtype=None, progress=None,
                  decision: Decision = SINGLE_DECISION, pooling: str = "mean"):
    """predict_logits, with the logits turned into outputs by the decision (problem.outputs)."""
    idx, logits, labels = predict_logits(model, loader, accelerator, autocast_dtype, progress, pooling)
    if len(idx) == 0:
        return idx, logits, labels
    return idx, problem.outputs(logits, decision), labels
