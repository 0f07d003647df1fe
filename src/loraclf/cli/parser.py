"""The `loraclf` command line as data: each verb's arguments (COMMANDS), the argparse types that bound them, and
the parser with the tool's one-line error style. Nothing here imports more than the config's bounds and the base."""

from __future__ import annotations

import argparse

from ..base.device import INFERENCE_PRECISIONS, INT8, INT8_ENGINES
from ..base.version import __version__
from ..config import INT8_PREDICT_BATCH, MAX_BATCH, PREDICT_BATCH

SELECT_STRATEGIES = ("random", "entropy", "margin", "diverse")  # loraclf.infer.strategies.STRATEGIES (tested equal)
SELECT_DEFAULT = "entropy"  # loraclf.infer.strategies.DEFAULT_STRATEGY (tested equal)

EPILOG = """examples:
  loraclf train                                   # MiniLM-L6 + LoRA on TREC-6, offline, a few minutes on CPU
  loraclf train configs/agnews_minilm.yaml train.learning_rate=2e-3
  loraclf config configs/agnews_roberta_seed.yaml # print the resolved config
  loraclf budget configs/agnews_roberta_seed.yaml # exact trainable-parameter breakdown
  loraclf predict runs/RUN --input test.csv --output submission.csv
  loraclf evaluate runs/RUN --data test.csv
  loraclf explain runs/RUN --input few.csv --output why.json   # word attributions, and why.html
  loraclf select runs/RUN --pool unlabelled.csv --k 40 --output to_label.csv  # what to label next
  loraclf cv configs/agnews_minilm.yaml --folds 5 --output cv/  # mean ± std over folds, out-of-fold predictions
  loraclf audit configs/agnews_minilm.yaml --output audit/    # label issues, duplicates, leaks
"""


class _Parser(argparse.ArgumentParser):
    """argparse with the tool's error style: one line on stderr, exit code 2 (argparse prints the usage block too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _count(upper: int):
    """An argparse type: an integer from 1 to upper (a bound keeps absurd sizes out of torch and the allocator)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
        if value > upper:
            shown = value if len(str(value)) < 20 else f"a {len(str(value))}-digit number"
            raise argparse.ArgumentTypeError(f"expected an integer <= {upper:,}, got {shown}")
        return value
    parse.__name__ = "integer"
    return parse


_positive_int = _count(2**31 - 1)
_batch_size = _count(MAX_BATCH)


# ------------------------------------------------------------------------------------------ the commands


def arg(*flags: str, **kwargs) -> tuple[tuple[str, ...], dict]:
    """One add_argument call of a command, written down as data."""
    return flags, kwargs


CONFIG_ARGS = [
    arg("config", nargs="?", help="YAML config holding only differences from the defaults (none = all defaults)"),
    arg("overrides", nargs="*", help="section.key=value overrides, e.g. train.learning_rate=3e-4"),
]
RUN = "run folder written by `loraclf train`"
PICKLE = "read .pkl input (unpickling runs code: trusted files only)"
INT8_HELP = "int8: the Linear layers dynamically quantized to int8, on the CPU (faster, outputs close to fp32)"
BATCH = arg("--batch-size", type=_batch_size, default=None,
            help=f"texts per batch (short texts go up to 4x as many, under the same token budget); default "
                 f"{PREDICT_BATCH}, {INT8_PREDICT_BATCH} with --precision int8 (measured faster there)")
ENGINE = arg("--int8-engine", choices=INT8_ENGINES, default="auto",
             help="whose int8 --precision int8 runs: onnxruntime (a fused ONNX graph, quantized per channel) or torch "
                  "(torch.ao dynamic quantization); auto (default): onnxruntime on CPUs with VNNI/AMX int8 "
                  "instructions, where it measured faster, torch elsewhere or without onnxruntime installed")

COMMANDS: dict[str, dict] = {  # name -> add_parser keywords and "args", the command's arguments
    "train": dict(help="fine-tune a model and write a run folder",
                  description="Fine-tune as configured (model.problem_type: single_label_classification, "
                              "multi_label_classification or regression). Prints the run folder; writes adapter/, "
                              "metrics.json, decision.json, history.jsonl, val_predictions.csv and report/ into it.",
                  args=[
        *CONFIG_ARGS,
        arg("--resume", metavar="RUN", help="continue RUN from its newest complete checkpoint"),
        arg("--nproc", type=_positive_int, default=None, help="re-launch through `accelerate launch` with N processes"),
        arg("--quiet", action="store_true", help="no progress bars or log lines"),
        arg("--json", action="store_true", help="print the final metrics as JSON on stdout"),
    ]),
    "config": dict(help="print the resolved config (defaults + file + overrides)", args=[
        *CONFIG_ARGS,
        arg("--keys", action="store_true", help="list every config key with its type, default and meaning"),
    ]),
    "validate": dict(help="check a config without loading any model", args=CONFIG_ARGS),
    "evaluate": dict(help="metrics of a trained run on a labelled file (the run's problem type's metrics)", args=[
        arg("run", help=RUN),
        arg("--data", required=True, help="labelled file (.csv .tsv .json .jsonl .parquet)"),
        arg("--output", help="also write the metrics as JSON here"),
        BATCH,
        arg("--allow-pickle", action="store_true", help=PICKLE),
        arg("--precision", choices=INFERENCE_PRECISIONS, default="fp32", help=INT8_HELP),
        ENGINE,
        arg("--quiet", action="store_true"),
    ]),
    "predict": dict(help="predict labels for a file of texts", args=[
        arg("run", help=RUN),
        arg("--input", required=True,
            help="texts: .csv .tsv .json .jsonl .parquet .txt (one per line), .pkl with --allow-pickle"),
        arg("--output", required=True, help="where to write predictions (.csv .tsv .jsonl .parquet)"),
        arg("--format", choices=["competition", "full"], default="competition",
            help="competition: ID,Label; full: label name, confidence and one probability column per class"),
        arg("--text-column", help="text column of the input (default: the run's data.text_column, else 'text')"),
        BATCH,
        arg("--allow-pickle", action="store_true", help=PICKLE),
        arg("--precision", choices=INFERENCE_PRECISIONS, default="auto",
            help="auto (default): bf16 where the hardware computes it natively, else fp32; fp32 for exact outputs; "
                 + INT8_HELP),
        ENGINE,
        arg("--quiet", action="store_true"),
    ]),
    "explain": dict(help="why each text got its prediction: word attributions (Integrated Gradients)",
                    args=[
        arg("run", help=RUN),
        arg("--input", required=True,
            help="texts: .csv .tsv .json .jsonl .parquet .txt (one per line), .pkl with --allow-pickle"),
        arg("--output", required=True, help="the .json file to write; the HTML page is written beside it (.html)"),
        arg("--target", help="the label to explain (default: each text's predicted label; multi-label: its most "
                             "probable label)"),
        arg("--steps", type=_count(1024), default=32,
            help="integration steps (default 32): more is slower and closer to the exact attribution"),
        arg("--text-column", help="text column of the input (default: the run's data.text_column, else 'text')"),
        arg("--allow-pickle", action="store_true", help=PICKLE),
        arg("--precision", choices=INFERENCE_PRECISIONS, default="fp32",
            help="fp32 (default) or bf16; int8 has no gradients"),
        arg("--quiet", action="store_true"),
    ]),
    "select": dict(help="choose which unlabelled rows to label next (active learning)",
                   description="Rank the rows of --pool by a trained run's uncertainty and write the --k to label "
                               "next, in the pool's own format (csv in, csv out; jsonl; parquet), all its columns "
                               "kept plus select_rank, select_score, select_strategy and select_prediction. Rows the "
                               "run was trained, validated or tested on, empty texts and repeats are left out.",
                   args=[
        arg("run", help=RUN + " (or an exported model folder)"),
        arg("--pool", required=True,
            help="unlabelled texts: .csv .tsv .json .jsonl .parquet .txt (one per line), .pkl with --allow-pickle"),
        arg("--k", type=int, required=True, help="how many rows to choose"),
        arg("--strategy", choices=SELECT_STRATEGIES, default=SELECT_DEFAULT,
            help=f"random (seeded), entropy (most uncertain first), margin (smallest gap between the top two "
                 f"classes), diverse (the most uncertain row of each of k k-means clusters of the fine-tuned "
                 f"encoder's embeddings, among the 10k most uncertain rows); default {SELECT_DEFAULT}, the best in "
                 f"bench/results/active_learning.md"),
        arg("--output", required=True, help="where to write the chosen rows, in the pool's format (.txt pool: .csv)"),
        arg("--seed", type=int, default=0, help="seed of random and of the k-means start"),
        arg("--text-column", help="text column of the pool (default: the run's data.text_column, else 'text')"),
        arg("--include-labelled", action="store_true",
            help="keep pool rows whose text the run was trained, validated or tested on"),
        arg("--allow-pickle", action="store_true", help=PICKLE),
        arg("--quiet", action="store_true"),
    ]),
    "cv": dict(help="k-fold cross-validation: per-fold metrics, mean ± std, out-of-fold predictions",
               description="Train the config K times, each fold holding out its own rows: stratified by class "
                           "(single-label), iteratively stratified (multi-label), on quantile bins of the target "
                           "(regression), with no group in two folds when data.group_column is set. Each fold's "
                           "validation split comes from its own training rows (data.validation_split), or is "
                           "data.validation when the config names one. Writes OUTPUT/fold-1..K (run folders), cv.json "
                           "(per-fold metrics, mean and std), oof.csv (every training row's out-of-fold prediction "
                           "and probabilities) and report.html. A killed cv run again with the same arguments "
                           "continues with the folds not yet finished.",
               args=[
        *CONFIG_ARGS,
        arg("--folds", type=_positive_int, default=5, help="number of folds K (default 5; at least 2)"),
        arg("--output", required=True, help="folder to write the folds and the results into (new, empty, or an "
                                            "unfinished cv of the same config, which resumes)"),
        arg("--quiet", action="store_true", help="no progress bars or log lines"),
        arg("--json", action="store_true", help="print cv.json's mean and std as JSON on stdout"),
    ]),
    "audit": dict(help="audit the training data: label issues, duplicates and leaks between splits, summaries",
                  description="Label issues: cleanlab on out-of-fold probabilities, the mean of --folds trained "
                              "folds (kept under OUTPUT/folds, so a second run reuses them) and two logistic "
                              "regressions on the same folds (the base encoder's embeddings, TF-IDF). Duplicates: "
                              "exact after normalising case, whitespace and punctuation, and near by the cosine of "
                              "the base encoder's mean-pooled embeddings, within train and across train/validation/test. Writes "
                              "issues.csv, duplicates.csv, summary.json and audit.html into --output.",
                  args=[
        *CONFIG_ARGS,
        arg("--output", required=True, help="folder to write the audit into"),
        arg("--folds", type=_positive_int, default=5, help="folds of the out-of-fold probabilities (stratified)"),
        arg("--near-threshold", type=float, default=0.95,
            help="cosine at or above which two texts are near-duplicates"),
        arg("--write-clean", metavar="FILE",
            help="also write the training file without the flagged rows (label issues, duplicates, leaked rows); "
                 "the original is never touched"),
        arg("--relabel", action="store_true",
            help="with --write-clean: give label issues their suggested label instead of dropping them"),
        arg("--from-cv", metavar="DIR",
            help="take the out-of-fold probabilities from the finished `loraclf cv` run in DIR (of the same training "
                 "rows) instead of training --folds folds"),
        arg("--label-probs", metavar="SOURCES",
            help="out-of-fold probabilities averaged for the label issues, a comma-separated subset of folds (the "
                 "fine-tuned folds), embeddings (logistic regression on the base encoder's embeddings), tfidf "
                 "(logistic regression on word 1-2-grams); default folds,embeddings,tfidf; embeddings,tfidf trains "
                 "no folds (seconds instead of k trainings)"),
        arg("--filter-by", metavar="FILTER",
            help="cleanlab's filter_by: both (default), prune_by_noise_rate (cleanlab's default), prune_by_class, "
                 "confident_learning, predicted_neq_given, low_normalized_margin, low_self_confidence"),
        arg("--quiet", action="store_true"),
    ]),
    "budget": dict(help="exact trainable-parameter breakdown of a config, without loading weights", args=[
        *CONFIG_ARGS,
        arg("--json", action="store_true", help="print the breakdown as JSON"),
        arg("--num-labels", type=_count(100_000),
            help="model outputs: the number of classes or labels (default: data.label_names, data.label_columns "
                 "for multi-label, else read from the training labels); regression has 1"),
    ]),
    "augment": dict(help="write EDA-augmented copies of a labelled file", args=[
        arg("--input", required=True),
        arg("--output", required=True),
        arg("--config", dest="aug_config", help="YAML config whose augment: section to use"),
        *(arg(f"--{name}-p", type=float) for name in ("synonym", "insert", "swap", "delete")),
        arg("--num-copies", type=int),  # bounded by augment.num_copies's own check, which names the key
        arg("--seed", type=int, default=42),
        arg("--text-column", default="text"),
        arg("--label-column", default="label"),
        arg("--allow-pickle", action="store_true"),
        arg("--show", type=int, default=5, help="before/after pairs to print"),
    ]),
    "report": dict(help="(re)write RUN/report/: curves, the problem type's figures (confusion matrix, per-label bars, "
                        "or predicted vs true and residuals), report.html", args=[arg("run")]),
    "compare": dict(help="overlay the curves of several runs of one problem type and tabulate their differences",
                    args=[
        arg("runs", nargs="+"),
        arg("--output", required=True),
    ]),
    "sweep": dict(help="hyperparameter search on Optuna", args=[
        arg("sweep_file", help="sweep YAML: base config + search space"),
        arg("--storage", help="Optuna RDB URL shared by workers (sqlite:///x.db, postgresql://...)"),
        arg("--study", help="study name (workers with the same name cooperate)"),
        arg("--n-trials", type=int,
            help="at most this many trials by this worker (the file's n_trials caps the whole study)"),
        arg("--timeout", type=float, help="stop starting trials after this many seconds (overrides the file)"),
        arg("--quiet", action="store_true"),
    ]),
    "export": dict(help="write a standalone merged model folder (stock transformers can load it)", args=[
        arg("run"),
        arg("--output", required=True),
        arg("--onnx", action="store_true", help="also export ONNX and check it against PyTorch"),
        arg("--quantize", choices=[INT8],
            help="int8: also write the int8 model for CPU inference: model.int8.safetensors (torch; "
                 "loraclf.infer.int8.load_quantized loads it) and, with onnxruntime installed, model.int8.onnx (a "
                 "stock onnxruntime.InferenceSession runs it); predict/serve --precision int8 use them"),
        arg("--overwrite", action="store_true", help="replace a non-empty --output folder"),
    ]),
    "serve": dict(help="HTTP prediction service", args=[
        arg("model", nargs="+", metavar="RUN",
            help="a run folder or an exported model folder; several runs (or a folder of runs) are served as adapters "
                 "on one shared base, at /v1/models/{name}/predict"),
        arg("--host", default="127.0.0.1"),
        arg("--port", type=int, default=8000),
        arg("--max-batch-size", type=_positive_int, default=32),
        arg("--max-wait-ms", type=float, default=5.0),
        arg("--max-texts", type=_positive_int, default=256),
        arg("--max-text-chars", type=_positive_int, default=20_000),
        arg("--precision", choices=INFERENCE_PRECISIONS, default="fp32",
            help="auto: bf16 where the hardware computes it natively; " + INT8_HELP),
        ENGINE,
    ]),
    "push": dict(help="upload a run's adapter (or its merged export) to the Hugging Face Hub", args=[
        arg("run", help=RUN),
        arg("repo_id", metavar="REPO_ID", help="user/name or org/name; created if it does not exist"),
        arg("--what", choices=["adapter", "export"], default="adapter",
            help="adapter: the PEFT files, tokenizer and model card; export: the merged standalone model"),
        arg("--private", action="store_true", help="create the repo as private"),
    ]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="loraclf",
        description="Fine-tune pretrained encoders with PEFT adapters (LoRA and relatives) for text classification, "
                    "under a trainable-parameter budget.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in COMMANDS.items():
        spec = dict(spec)
        args = spec.pop("args")
        p = sub.add_parser(name, **spec)
        for flags, kwargs in args:
            p.add_argument(*flags, **kwargs)
    return parser
