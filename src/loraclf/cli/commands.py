"""The `loraclf` command: parse arguments, call the library, map errors to exit codes. No logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import launch
from ..config import MAX_BATCH, PRECISIONS, augment_config, describe_keys, load_config, resume_config
from ..base.errors import LoraclfError
from ..config.limits import INFERENCE_PRECISIONS, INT8, INT8_ENGINES, INT8_PREDICT_BATCH, PREDICT_BATCH
from ..base.version import __version__

EPILOG = """examples:
  loraclf train                                   # MiniLM-L6 + LoRA on TREC-6, offline, a few minutes on CPU
  loraclf train configs/agnews_minilm.yaml train.learning_rate=2e-3
  loraclf config configs/agnews_roberta_seed.yaml # print the resolved config
  loraclf budget configs/agnews_roberta_seed.yaml # exact trainable-parameter breakdown
  loraclf predict runs/RUN --input test.csv --output submission.csv
  loraclf evaluate runs/RUN --data test.csv
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


# ------------------------------------------------------------------------------------------ handlers
# Each verb's module is imported when the verb runs, so a command loads only what it uses: torch alone takes ~3 s,
# which `loraclf --help`, `config` and `validate` do not need (config, launch and errors at the top are light).


def _split_config(args) -> tuple[str | None, list[str]]:
    """A first positional with '=' is an override, not a file."""
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    return config, overrides


def cmd_config(args) -> int:
    if args.keys:
        for key, tp, default, help_ in describe_keys():
            print(f"{key:38} {tp:28} {default:22} {help_}")
        return 0
    config, overrides = _split_config(args)
    print(load_config(config, overrides).to_yaml(), end="")
    return 0


def cmd_validate(args) -> int:
    config, overrides = _split_config(args)
    load_config(config, overrides)
    print("config OK")
    return 0


def cmd_train(args) -> int:
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return launch.relaunch(args.nproc)
    config, overrides = _split_config(args)
    cfg = resume_config(args.resume, overrides) if args.resume and config is None else load_config(config, overrides)
    if cfg.data.unlabeled:
        if args.resume:
            raise LoraclfError("--resume does not apply to self-training (data.unlabeled is set); start the run again")
        from ..training.self_train import self_train

        result = self_train(cfg, quiet=args.quiet)
    else:
        from ..training import train

        result = train(cfg, resume=args.resume, quiet=args.quiet)
    if args.json:
        print(json.dumps({"run": str(result.run_dir), **{k: result.metrics[k] for k in ("val", "test", "target")
                                                          if k in result.metrics}}, indent=2))
    elif os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(result.run_dir)
    return 0


def _metric_lines(m: dict) -> list[str]:
    """evaluate's printout: the problem type's scalars on one line, then one line per class or label."""
    from .. import task as problem
    from ..report.files import metric_name

    pt = m.get("problem_type") or (problem.REGRESSION if "rmse" in m else problem.MULTI if "micro_f1" in m
                                   else problem.SINGLE)
    scores = [f"{metric_name(k)} {m[k]:.4f}" for k in problem.SCALARS[pt] if isinstance(m.get(k), (int, float))]
    lines = [" | ".join([f"{m['n']} rows", *scores])]
    for name, pc in (m.get("per_label") or m.get("per_class") or {}).items():
        threshold = f" threshold {pc['threshold']:.3f}" if "threshold" in pc else ""
        lines.append(f"  {name:20} precision {pc['precision']:.3f} recall {pc['recall']:.3f} f1 {pc['f1']:.3f} "
                     f"support {pc['support']}{threshold}")
    return lines


def cmd_evaluate(args) -> int:
    from ..infer.engine import evaluate_file

    m = evaluate_file(args.run, args.data, args.batch_size, args.allow_pickle, args.precision, args.quiet, args.output,
                      args.int8_engine)
    print("\n".join(_metric_lines(m)))
    return 0


def cmd_predict(args) -> int:
    from ..infer.engine import predict_file

    r = predict_file(args.run, args.input, args.output, args.format, args.batch_size, args.allow_pickle,
                     args.text_column, args.precision, args.quiet, args.int8_engine)
    # counts: rows per predicted class (multi-label: per label); summary: regression's mean, std, min, max
    facts = {**(r.get("counts") or {}), **{k: f"{v:.4g}" for k, v in (r.get("summary") or {}).items()}}
    shown = f" ({', '.join(f'{k}: {v}' for k, v in facts.items())})" if facts else ""
    print(f"wrote {r['rows']} predictions to {r['output']}{shown}")
    return 0


def cmd_budget(args) -> int:
    from ..model.budget import budget_report, format_report

    config, overrides = _split_config(args)
    rep = budget_report(load_config(config, overrides), num_labels=args.num_labels)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def cmd_augment(args) -> int:
    from ..data.augment import augment_file

    aug = augment_config(args.aug_config, synonym_p=args.synonym_p, insert_p=args.insert_p, swap_p=args.swap_p,
                           delete_p=args.delete_p, num_copies=args.num_copies)
    r = augment_file(args.input, args.output, aug, args.seed, args.text_column, args.label_column, args.allow_pickle,
                     args.show)
    for before, after in r.get("examples", []):
        print(f"- {before}\n+ {after}")
    print(f"{r['rows_in']} rows in, {r['rows_out']} rows out -> {args.output}")
    return 0


def cmd_report(args) -> int:
    from ..report import write_report

    print(write_report(args.run))
    return 0


def cmd_compare(args) -> int:
    from ..report.compare import compare_runs

    print(compare_runs(args.runs, args.output))
    return 0


def cmd_sweep(args) -> int:
    from ..sweep import run_sweep

    print(run_sweep(args.sweep_file, storage=args.storage, study_name=args.study, n_trials=args.n_trials,
                    quiet=args.quiet, timeout=args.timeout))
    return 0


def cmd_export(args) -> int:
    from ..publish.export import export_run

    print(export_run(args.run, args.output, onnx=args.onnx, overwrite=args.overwrite, quantize=args.quantize))
    return 0


def cmd_serve(args) -> int:
    from ..serve import serve

    serve(list(args.model), host=args.host, port=args.port, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
          max_texts=args.max_texts, max_text_chars=args.max_text_chars, precision=args.precision,
          int8_engine=args.int8_engine)
    return 0


def cmd_push(args) -> int:
    from ..publish.push import push

    print(push(args.run, args.repo_id, what=args.what, private=args.private))
    return 0


HANDLERS = {
    "train": cmd_train, "config": cmd_config, "validate": cmd_validate, "evaluate": cmd_evaluate,
    "predict": cmd_predict, "budget": cmd_budget, "augment": cmd_augment, "report": cmd_report,
    "compare": cmd_compare, "sweep": cmd_sweep, "export": cmd_export, "serve": cmd_serve, "push": cmd_push,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come after flags (`train cfg.yaml --quiet a.b=1`); argparse stops collecting positionals at the
    # first flag, so the stragglers are picked up here
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help()
        return 2
    try:
        return HANDLERS[args.command](args)
    except LoraclfError as e:
        line = f"loraclf {args.command}: error: {' '.join(str(e).split(chr(10)))}"
        if not launch.hand_over_error(line):  # under --nproc the launching process prints it, once
            print(line, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # train raises train.Interrupted (exit 128 + signal) after saving a checkpoint
        print(f"loraclf {args.command}: interrupted{(' (' + str(e) + ')') if str(e) else ''}", file=sys.stderr)
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
