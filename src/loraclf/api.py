"""The Python face of loraclf, for notebooks and scripts: `train` from DataFrames, and a `Classifier` to predict,
evaluate and export.

It calls the same library functions as the CLI (config.from_dict, train.train, predict.*, export.export_run), so a
run trained here is the run `loraclf train` would write, with the same checks. Bad input raises a
`loraclf.base.errors.LoraclfError` subclass whose message is the CLI's one line; nothing here exits the process.
"""

from __future__ import annotations

import copy
import hashlib
import io
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .training import self_train as adapt
from .base import logs
from . import task as problem, runs
from .base import device as device_mod
from . import config as config_mod
from . import data as data_mod
from .publish import export as export_mod
from .infer import files as files_mod
from .infer import inputs as inputs_mod
from .infer import select as select_mod
from .infer.engine import InferenceModel, load_inference_model
from .config import MAX_BATCH, Config
from .base.errors import ConfigError, DataError, ModelError, RunError
from .training import train as train_run

__all__ = ["train", "cross_validate", "audit", "Classifier", "TrainResult", "ConfigLike", "FrameLike", "TextsLike",
           "PairsLike"]

ConfigLike = Union[str, Path, dict, Config, None]
FrameLike = Any  # a pandas DataFrame or a datasets.Dataset
TextsLike = Union[str, Sequence[str], pd.DataFrame]
PairsLike = Union[str, Sequence[str], None]  # the second texts of a sentence-pair model
FRAME_KEYS = (("train_df", "train"), ("val_df", "validation"), ("test_df", "test"))
FRAMES_FOLDER = "frames"  # under data.cache_dir: the Parquet copies of DataFrames given to train()


class TrainResult:
    """What `train` returns: the run folder, its final metrics, and the trained classifier (loaded when first used)."""

    def __init__(self, run_dir: Path, metrics: dict):
        self.run_dir = Path(run_dir)
        self.metrics = metrics

    @cached_property
    def classifier(self) -> "Classifier":
        return Classifier.from_run(self.run_dir)

    def __repr__(self) -> str:
        return f"TrainResult(run_dir={str(self.run_dir)!r})"


def train(config: ConfigLike = None, /, train_df: FrameLike = None, val_df: FrameLike = None,
          test_df: FrameLike = None, *, quiet: bool = False, **overrides: Any) -> TrainResult:
    """Fine-tune as configured and write a run folder, as `loraclf train` does.

    config: a YAML path, a dict of sections, or a Config (none: the defaults).
    train_df / val_df / test_df: pandas DataFrames or datasets.Dataset objects standing in for data.train /
    data.validation / data.test. Each is written once to a content-hashed Parquet file under data.cache_dir
    (default ~/.cache/loraclf/tokenized/frames/), and the config names that file, so the run's config.yaml points
    at real data and `loraclf train --resume RUN` works.
    overrides: the CLI's dotted keys, `train(**{"train.learning_rate": 2e-3})`, or sections as dicts,
    `train(train={"learning_rate": 2e-3})`.
    quiet: no progress bars or log lines.
    """
    tree = config_tree(config)
    apply_overrides(tree, overrides)
    given = dict(zip(FRAME_KEYS, (train_df, val_df, test_df)))
    frames = {key: as_frame(df, arg) for (arg, key), df in given.items() if df is not None}
    cfg = config_mod.from_dict(tree)
    if frames:
        folder = data_mod.cache_dir(cfg.data) / FRAMES_FOLDER
        for key, df in frames.items():
            config_mod.set_path(tree, ["data", key], str(write_frame(df, folder, key)))
        cfg = config_mod.from_dict(tree)
    if cfg.data.unlabeled:
        result = adapt.self_train(cfg, quiet=quiet)
    else:
        result = train_run(cfg, quiet=quiet)
    return TrainResult(result.run_dir, result.metrics)


def cross_validate(config: ConfigLike = None, /, folds: int = 5, output: str | Path = "cv", *,
                   quiet: bool = False, **overrides: Any):
    """K-fold cross-validation of the config on its training rows, as `loraclf cv` does: output/fold-1..K (a run
    folder each), cv.json (per-fold metrics, mean and std), oof.csv (every training row's out-of-fold prediction and
    probabilities) and report.html. Folds are stratified (single-label), iteratively stratified (multi-label) or
    binned on the target (regression), and grouped by data.group_column when it is set. Calling it again on the same
    output continues with the folds not yet finished. Returns a loraclf.training.cv.CVResult (output, summary,
    oof, mean, std)."""
    from .training.cv import run_cv

    tree = config_tree(config)
    apply_overrides(tree, overrides)
    return run_cv(config_mod.from_dict(tree), output, folds, quiet)


def audit(config: ConfigLike = None, /, output: str | Path = "audit", *, folds: int = 5,
          near_threshold: Optional[float] = 0.95, write_clean: Optional[str | Path] = None, relabel: bool = False,
          quiet: bool = False, from_cv: Optional[str | Path] = None, label_probs: Optional[str] = None,
          filter_by: Optional[str] = None, **overrides: Any):
    """Audit the config's data, as `loraclf audit` does: label issues (cleanlab on out-of-fold probabilities from
    `folds` trained folds), exact and near duplicates within train and across splits, and per-split summaries,
    written to output/ (issues.csv, duplicates.csv, summary.json, audit.html; the folds under output/folds, reused by
    a second call). near_threshold None: exact duplicates only. write_clean: also write the training file without
    the flagged rows (relabel: with the suggested labels instead). from_cv: take the out-of-fold probabilities from
    that finished cross_validate / `loraclf cv` folder (of the same training rows) instead of training folds.
    label_probs: the out-of-fold probabilities averaged for the label issues, a comma-separated subset of "folds",
    "embeddings", "tfidf" (None: all three; "embeddings,tfidf" trains no folds). filter_by: cleanlab's filter_by
    (None: "both"). Returns a loraclf.trust.AuditResult (output, summary, issues, duplicates)."""
    from .trust import run_audit

    tree = config_tree(config)
    apply_overrides(tree, overrides)
    chosen = {k: v for k, v in (("label_probs", label_probs), ("filter_by", filter_by)) if v is not None}
    return run_audit(config_mod.from_dict(tree), output, folds, near_threshold, write_clean, relabel, quiet,
                     from_cv, **chosen)


def config_tree(config: ConfigLike) -> dict:
    """The config as a plain dict of sections, paths made absolute as `load_config` makes them."""
    if config is None:
        return {}
    if isinstance(config, Config):
        return config.to_dict()
    if isinstance(config, dict):
        tree = copy.deepcopy(config)
        config_mod.resolve_paths(tree, None)
        return tree
    if isinstance(config, (str, Path)):
        tree = config_mod.read_yaml(config)
        config_mod.resolve_paths(tree, Path(config).resolve().parent)
        return tree
    raise ConfigError([f"config must be a YAML path, a dict or a loraclf Config, got {type(config).__name__}"])


def apply_overrides(tree: dict, overrides: dict) -> None:
    """Dotted keys set one value; a section given as a dict is merged into that section."""
    for key, value in overrides.items():
        if "." not in key and isinstance(value, dict):
            section = tree.get(key)
            tree[key] = merge(section if isinstance(section, dict) else {}, value)
        else:
            config_mod.set_path(tree, key.split("."), value)
    config_mod.resolve_paths(tree, None)


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def as_frame(obj: FrameLike, what: str) -> pd.DataFrame:
    """A pandas DataFrame from a DataFrame or a datasets.Dataset; anything else is refused with the fix."""
    if isinstance(obj, pd.DataFrame):
        return obj
    kind = type(obj).__name__
    if kind in ("DatasetDict", "IterableDatasetDict"):
        splits = list(obj.keys())
        raise DataError(f"{what} must be one split, but got a {kind} with splits {splits}; "
                        f"did you mean {what}=dataset[{splits[0]!r}]?")
    if kind == "Dataset" and type(obj).__module__.startswith("datasets"):
        return obj.to_pandas()
    raise DataError(f"{what} must be a pandas DataFrame or a datasets.Dataset, got {kind}")


def write_frame(df: pd.DataFrame, folder: Path, name: str) -> Path:
    """df as FOLDER/NAME-<sha256 of its Parquet bytes>.parquet, written once (the same rows give the same file)."""
    buf = io.BytesIO()
    try:
        df.reset_index(drop=True).to_parquet(buf, index=False)
    except (ValueError, TypeError, ImportError) as e:  # pyarrow's type errors subclass these
        raise DataError(f"the {name} DataFrame cannot be stored as Parquet: {str(e).strip().splitlines()[0][:200]}"
                        f" (give each column one type, e.g. df['text'] = df['text'].astype(str))") from None
    digest = hashlib.sha256(buf.getvalue()).hexdigest()[:16]
    path = runs.check_output_dir(folder, "data.cache_dir") / f"{name}-{digest}.parquet"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_bytes(path, buf.getvalue())
    return path


def check_batch_size(batch_size: Any) -> None:
    """None (the precision's default batch, loraclf.config.limits) or an integer in range."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise ConfigError([f"'batch_size' must be an integer from 1 to {MAX_BATCH:,}, got {batch_size!r}"])


class Classifier:
    """A trained model, from a run folder (`from_run`) or an exported model folder (`from_export`): single-label,
    multi-label or regression (`problem_type`), of single texts or sentence pairs."""

    def __init__(self, model: InferenceModel, source: runs.ModelFolder):
        self.model = model
        self.source = source  # the opened run or export folder

    @property
    def path(self) -> Path:
        """The folder the classifier was loaded from."""
        return self.source.path

    @classmethod
    def from_run(cls, path: str | Path, device: Optional[str] = None, *, int8_engine: str = "auto") -> "Classifier":
        """Load the run folder that `train` (or `loraclf train`) wrote; device: default CUDA when there is one.
        int8_engine: whose int8 precision="int8" runs, as `loraclf predict --int8-engine` (auto, torch,
        onnxruntime)."""
        run = runs.Run.open(path)
        return cls(load_inference_model(run, device, int8_engine), run)

    @classmethod
    def from_export(cls, path: str | Path, device: Optional[str] = None, *,
                    int8_engine: str = "auto") -> "Classifier":
        """Load a folder written by `export` (or `loraclf export`); int8_engine as in from_run."""
        folder = runs.ExportFolder.open(path)
        return cls(load_inference_model(folder, device, int8_engine), folder)

    @property
    def labels(self) -> list[str]:
        """Label names in id order: the columns of predict_proba (regression: the one target's name)."""
        return self.model.labels

    @property
    def problem_type(self) -> str:
        """single_label_classification, multi_label_classification or regression (model.problem_type)."""
        return self.model.problem_type

    def predict_proba(self, texts: TextsLike, text_pair: PairsLike = None, *, batch_size: Optional[int] = None,
                      precision: str = "fp32", quiet: bool = False) -> np.ndarray:
        """Probabilities, one row per text in input order, columns in `labels` order (1-D for one string).

        Single-label: the class probabilities (calibrated when the run fitted a temperature); multi-label: each
        label's own probability (sigmoid). A regression model has no probabilities: this raises ModelError (use
        predict for its values).
        """
        if self.problem_type == problem.REGRESSION:
            raise ModelError("predict_proba gives class probabilities, but this model is a regression "
                             "(model.problem_type=regression); use predict for its values")
        return self._outputs(texts, text_pair, batch_size, precision, quiet)

    def predict(self, texts: TextsLike, text_pair: PairsLike = None, *, batch_size: Optional[int] = None,
                precision: str = "fp32", quiet: bool = False):
        """Predictions in input order, as `loraclf predict` makes them: a label per text (class ids for integer
        labels, else names; a tuned binary threshold applies), a list of label names per text (multi-label, by the
        tuned thresholds), or a float per text (regression).

        texts: a list of strings, one string (one prediction back), or a DataFrame (its text column(s), and the
        pair column of a sentence-pair model, as the run reads them). text_pair: the second texts of a
        sentence-pair model, one per text (a string with one string). precision: as `loraclf predict --precision`
        (auto: bf16 where the hardware computes it natively; int8: dynamically quantized Linear layers on the CPU,
        by the int8_engine the classifier was loaded with).
        """
        values = self.model.decide(self._outputs(texts, text_pair, batch_size, precision, quiet, one=False))
        return values[0] if isinstance(texts, str) else values

    def evaluate(self, df: FrameLike, *, batch_size: Optional[int] = None, precision: str = "fp32",
                 quiet: bool = False) -> dict:
        """The metrics `loraclf evaluate` computes for the model's problem type, on a labelled DataFrame (or
        datasets.Dataset) with the run's columns (label column, or data.label_columns; the pair column)."""
        frame = as_frame(df, "df")
        check_batch_size(batch_size)
        device_mod.resolve_inference(precision)
        with logs.quiet(quiet):
            return files_mod.evaluate_frame(self.model, frame, "the DataFrame", batch_size, precision,
                                              progress=not quiet)

    def explain(self, texts: TextsLike, text_pair: PairsLike = None, *, target: Optional[str] = None,
                steps: int = 32, precision: str = "fp32", quiet: bool = False):
        """Why each text got its prediction, as `loraclf explain` computes it: word attributions by Integrated
        Gradients for the predicted label (multi-label: the most probable one; regression: the value) or the named
        target. Returns one dict per text: target, output, prediction, words ([{word, score}]), pair_words (a pair
        model's second text) and delta (the completeness gap); one dict for one string. Write the HTML page with
        `loraclf.report.explanations.write(results, "why.html", title)`."""
        from .infer import explain as explain_mod

        items, pairs = self._inputs(texts, text_pair)
        with logs.quiet(quiet):
            found = explain_mod.explain_texts(self.model, items, pairs, target, steps, precision, progress=not quiet)
        records = explain_mod.to_dicts(found)
        return records[0] if isinstance(texts, str) else records

    def select(self, pool: TextsLike, k: int, strategy: str = select_mod.DEFAULT_STRATEGY, *,
               text_pair: PairsLike = None, seed: int = 0, exclude_labelled: bool = True,
               quiet: bool = False) -> pd.DataFrame:
        """The k rows of pool to label next, as `loraclf select` chooses them: a DataFrame of the chosen rows, best
        first, with the pool's columns (a list of strings: text, and text_pair for a pair model) plus select_rank,
        select_score, select_strategy and (model strategies) select_prediction.

        strategy: random (seeded), entropy (the most uncertain first; multi-label: mean binary entropy), margin
        (the smallest gap between the top two classes; multi-label: the smallest distance to a threshold) or diverse
        (the most uncertain row of each of k k-means clusters of the fine-tuned encoder's embeddings, among the 10k
        most uncertain). Rows whose text the run was trained, validated or tested on (exclude_labelled), empty
        texts and repeats within the pool are left out first. Regression runs take random only."""
        items, pairs = self._inputs(pool, text_pair)
        if isinstance(pool, pd.DataFrame) or type(pool).__name__ == "Dataset":
            frame = as_frame(pool, "pool")
        else:
            frame = pd.DataFrame({"text": items, **({} if pairs is None else {"text_pair": pairs})})
        with logs.quiet(quiet):
            return select_mod.select_frame(self.model, frame, items, pairs, k, strategy, seed, exclude_labelled).rows

    def export(self, path: str | Path, *, onnx: bool = False, overwrite: bool = False,
               quantize: Optional[str] = None) -> Path:
        """Write a standalone model folder (merged weights, tokenizer, model card), as `loraclf export` does;
        quantize="int8" adds the int8 model (`loraclf export --quantize int8`)."""
        if self.model.source != "run":
            raise RunError(f"this classifier was loaded from the export folder {self.path}, which is already a "
                           f"standalone model; copy that folder, or export from its run folder")
        return Path(export_mod.export_run(self.source, path, onnx=onnx, overwrite=overwrite, quantize=quantize))

    def _outputs(self, texts: TextsLike, text_pair: PairsLike, batch_size: Optional[int], precision: str,
                 quiet: bool, one: bool = True) -> np.ndarray:
        """The model's outputs for texts (and pairs); one: one string gives its row alone."""
        items, pairs = self._inputs(texts, text_pair)
        check_batch_size(batch_size)
        device_mod.resolve_inference(precision)
        with logs.quiet(quiet):
            out = self.model.predict(items, batch_size, precision, progress=not quiet, pairs=pairs)
        return out[0] if one and isinstance(texts, str) else out

    def _inputs(self, texts: TextsLike, text_pair: PairsLike) -> tuple[list[str], Optional[list[str]]]:
        return inputs_mod.from_values(texts, text_pair, self.model.data, as_frame)

    def __repr__(self) -> str:
        return f"Classifier({str(self.path)!r}, labels={self.labels})"
