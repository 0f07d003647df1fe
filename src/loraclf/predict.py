"""Batch inference from a run folder, and the output formats."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import runs
from .data import read_texts
from .errors import DataError
from .evaluate import compute_metrics

FORMATS = ("competition", "full")


def _autocast_dtype(precision: str, device: torch.device):
    from .train import bf16_supported

    if precision == "bf16" or (precision == "auto" and bf16_supported()):
        return torch.bfloat16
    return None


@torch.inference_mode()
def predict_texts(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128,
                  precision: str = "fp32", progress: bool = False) -> np.ndarray:
    """Class probabilities for texts, in input order. Texts are batched by length so batches pad little."""
    from tqdm.auto import tqdm

    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    device = next(model.parameters()).device
    dtype = _autocast_dtype(precision, device)
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(texts))
    order = np.argsort(-lengths, kind="stable")
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    bar = tqdm(total=len(texts), desc="predict", unit="text", disable=not (progress and sys.stderr.isatty()), leave=False)
    model.eval()
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        feats = [{k: enc[k][i] for k in keys} for i in idx]
        batch = {k: v.to(device) for k, v in tokenizer.pad(feats, return_tensors="pt").items()}
        if dtype is not None:
            with torch.autocast(device_type=device.type, dtype=dtype):
                logits = model(**batch).logits
        else:
            logits = model(**batch).logits
        out[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out


def label_values(id2label: dict[int, str], int_labels: bool) -> list:
    """What the competition format writes per class: the class id for integer labels, else the name."""
    return [i if int_labels else id2label[i] for i in range(len(id2label))]


def write_predictions(path: str | Path, probs: np.ndarray, id2label: dict[int, str], ids: Optional[list],
                      fmt: str, int_labels: bool) -> None:
    import pandas as pd

    path = Path(path)
    pred = probs.argmax(-1) if len(probs) else np.zeros(0, dtype=int)
    ids = list(range(len(pred))) if ids is None else ids
    if fmt == "competition":
        values = label_values(id2label, int_labels)
        df = pd.DataFrame({"ID": ids, "Label": [values[int(i)] for i in pred]})
    else:
        df = pd.DataFrame({"ID": ids, "label": [id2label[int(i)] for i in pred], "label_id": pred.astype(int),
                           "confidence": probs.max(-1) if len(probs) else []})
        for i in range(len(id2label)):
            df[f"prob_{id2label[i]}"] = probs[:, i] if len(probs) else []
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        runs.atomic_write_text(path, df.to_json(orient="records", lines=True))
    elif suffix == ".parquet":
        import io

        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        runs.atomic_write_bytes(path, buf.getvalue())
    elif suffix in (".csv", ".tsv", ".txt", ""):
        runs.atomic_write_text(path, df.to_csv(index=False, sep="\t" if suffix == ".tsv" else ","))
    else:
        raise DataError(f"unknown output format '{suffix}' for {path}; use .csv, .tsv, .jsonl or .parquet")


def _int_labels(run: Path) -> bool:
    labels = runs.read_json(run / runs.LABEL_MAP)
    if "int_labels" in labels:
        return bool(labels["int_labels"])
    return all(str(v).isdigit() and int(v) == int(k) for k, v in labels["id2label"].items())


def predict_file(run: str | Path, input_path: str | Path, output_path: str | Path, fmt: str = "competition",
                 batch_size: int = 64, allow_pickle: bool = False, text_column: Optional[str] = None,
                 precision: str = "fp32", quiet: bool = False) -> dict:
    """Predict every text of an input file and write ID,Label (competition) or the full output."""
    from .model import load_run_model

    if fmt not in FORMATS:
        raise DataError(f"unknown --format '{fmt}'; choose competition or full")
    run = runs.open_run(run)
    out = Path(output_path)
    if out.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".parquet", ".txt", ""):
        raise DataError(f"unknown output format '{out.suffix}' for {out}; use .csv, .tsv, .jsonl or .parquet")
    model, tokenizer, id2label, cfg = load_run_model(run)
    if text_column:
        cfg.data.text_column = text_column
    texts, ids, _ = read_texts(input_path, cfg.data, allow_pickle=allow_pickle or cfg.data.allow_pickle)
    probs = predict_texts(model, tokenizer, texts, batch_size, cfg.data.max_length, precision, progress=not quiet)
    write_predictions(out, probs, id2label, ids, fmt, _int_labels(run))
    counts = np.bincount(probs.argmax(-1), minlength=len(id2label)) if len(probs) else np.zeros(len(id2label), int)
    return {"rows": len(texts), "output": str(out), "counts": {id2label[i]: int(c) for i, c in enumerate(counts)}}


def evaluate_file(run: str | Path, data_path: str | Path, batch_size: int = 64, allow_pickle: bool = False,
                  precision: str = "fp32", quiet: bool = False, output: Optional[str | Path] = None) -> dict:
    """Metrics of a run on a labelled file (labels mapped through the run's label map)."""
    from .data import _clean, encode_labels, read_table
    from .model import load_run_model

    run = runs.open_run(run)
    model, tokenizer, id2label, cfg = load_run_model(run)
    df = read_table(data_path, allow_pickle or cfg.data.allow_pickle, cfg.data.max_file_mb)
    notes = []
    clean = _clean(df, cfg.data, str(data_path), True, notes.append)
    labels = encode_labels(clean["label"], id2label, str(data_path))
    probs = predict_texts(model, tokenizer, clean["text"].tolist(), batch_size, cfg.data.max_length, precision,
                          progress=not quiet)
    metrics = compute_metrics(labels, probs, id2label)
    metrics["file"] = str(data_path)
    metrics["notes"] = notes
    if output:
        runs.write_json(output, metrics)
    return metrics
