"""Metrics from predictions, and the model pass that produces them."""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch


def compute_metrics(labels: np.ndarray, probs: np.ndarray, id2label: dict[int, str], loss: Optional[float] = None) -> dict:
    """Accuracy, macro-F1, loss, per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    k = len(id2label)
    labels = np.asarray(labels)
    preds = np.asarray(probs).argmax(-1)
    ids = list(range(k))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=ids, zero_division=0)
    out = {
        "accuracy": float((preds == labels).mean()) if len(labels) else 0.0,
        "macro_f1": float(np.mean(f)) if k else 0.0,
        "n": int(len(labels)),
        "per_class": {
            id2label[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i in ids
        },
        "confusion_matrix": confusion_matrix(labels, preds, labels=ids).tolist(),
        "labels": [id2label[i] for i in ids],
    }
    if loss is None and len(labels):
        eps = 1e-12
        loss = float(-np.mean(np.log(np.clip(np.asarray(probs)[np.arange(len(labels)), labels], eps, 1.0))))
    out["loss"] = float(loss) if loss is not None else None
    return out


@torch.inference_mode()
def predict_probs(model, loader, accelerator=None, autocast_dtype=None, progress=None) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """The one inference pass: class probabilities for every batch; returns (indices, probs, labels) in index order.

    loader yields dicts of model inputs plus `index` (and `labels` where known): a DataLoader in training, the
    token-budget batches of `predict.predict_texts` otherwise. autocast_dtype runs the model under autocast. Under
    Accelerate, predictions from all processes are gathered without the padded duplicates of the last batch
    (gather_for_metrics), so metrics equal those of a single process.
    """
    model.eval()
    all_idx, all_probs, all_labels = [], [], []
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    for batch in loader:
        idx = batch.pop("index")
        labels = batch.pop("labels", None)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            logits = model(**batch).logits
        probs = torch.softmax(logits.float(), dim=-1)
        if accelerator is not None:
            idx = idx.to(device)
            if labels is not None:
                labels = labels.to(device)
                idx, probs, labels = accelerator.gather_for_metrics((idx, probs, labels))
            else:
                idx, probs = accelerator.gather_for_metrics((idx, probs))
        all_idx.append(idx.cpu().numpy())
        all_probs.append(probs.cpu().numpy())
        if labels is not None:
            all_labels.append(labels.cpu().numpy())
        if progress is not None:
            progress.update(len(idx))
    if not all_idx:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), None
    idx = np.concatenate(all_idx)
    probs = np.concatenate(all_probs)
    labels = np.concatenate(all_labels) if all_labels else None
    order = np.argsort(idx, kind="stable")
    return idx[order], probs[order], (labels[order] if labels is not None else None)
