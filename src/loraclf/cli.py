"""The `loraclf` command: parse arguments, call the library, map errors to exit codes. No logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import LoraclfError

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config holding only differences from the defaults (none = all defaults)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.learning_rate=3e-4")


def _split_config(args) -> tuple[str | None, list[str]]:
    """A first positional with '=' is an override, not a file."""
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    return config, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="loraclf",
        description="Fine-tune pretrained encoders with PEFT adapters (LoRA and relatives) for text classification, "
                    "under a trainable-parameter budget.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('loraclf').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune a model and write a run folder",
                       description="Fine-tune as configured. Prints the run folder; writes adapter/, metrics.json, "
                                   "history.jsonl, val_predictions.csv and report/ into it.")
    _config_args(p)
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its newest complete checkpoint")
    p.add_argument("--nproc", type=_positive_int, default=None, help="re-launch through `accelerate launch` with N processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON on stdout")

    p = sub.add_parser("config", help="print the resolved config (defaults + file + overrides)")
    _config_args(p)
    p.add_argument("--keys", action="store_true", help="list every config key with its type, default and meaning")

    p = sub.add_parser("validate", help="check a config without loading any model")
    _config_args(p)

    p = sub.add_parser("evaluate", help="metrics of a trained run on a labelled file")
    p.add_argument("run", help="run folder written by `loraclf train`")
    p.add_argument("--data", required=True, help="labelled file (.csv .tsv .json .jsonl .parquet)")
    p.add_argument("--output", help="also write the metrics as JSON here")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--allow-pickle", action="store_true", help="read .pkl input (unpickling runs code: trusted files only)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("predict", help="predict labels for a file of texts")
    p.add_argument("run", help="run folder written by `loraclf train`")
    p.add_argument("--input", required=True, help="texts: .csv .tsv .json .jsonl .parquet .txt (one per line), .pkl with --allow-pickle")
    p.add_argument("--output", required=True, help="where to write predictions (.csv .tsv .jsonl .parquet)")
    p.add_argument("--format", choices=["competition", "full"], default="competition",
                   help="competition: ID,Label; full: label name, confidence and one probability column per class")
    p.add_argument("--text-column", help="text column of the input (default: the run's data.text_column, else 'text')")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--allow-pickle", action="store_true", help="read .pkl input (unpickling runs code: trusted files only)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="auto",
                   help="auto (default): bf16 where the hardware computes it natively, else fp32; fp32 for exact outputs")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("budget", help="exact trainable-parameter breakdown of a config, without loading weights")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    p.add_argument("--num-labels", type=int, help="number of classes (default: data.label_names, else read from the "
                                                  "training labels)")

    p = sub.add_parser("augment", help="write EDA-augmented copies of a labelled file")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--config", dest="aug_config", help="YAML config whose augment: section to use")
    p.add_argument("--synonym-p", type=float)
    p.add_argument("--insert-p", type=float)
    p.add_argument("--swap-p", type=float)
    p.add_argument("--delete-p", type=float)
    p.add_argument("--num-copies", type=int)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--allow-pickle", action="store_true")
    p.add_argument("--show", type=int, default=5, help="before/after pairs to print")

    p = sub.add_parser("report", help="(re)write RUN/report/: curves, confusion matrix, report.html")
    p.add_argument("run")

    p = sub.add_parser("compare", help="overlay the curves of several runs and tabulate their differences")
    p.add_argument("runs", nargs="+")
    p.add_argument("--output", required=True)

    p = sub.add_parser("sweep", help="hyperparameter search on Optuna")
    p.add_argument("sweep_file", help="sweep YAML: base config + search space")
    p.add_argument("--storage", help="Optuna RDB URL shared by workers (sqlite:///x.db, postgresql://...)")
    p.add_argument("--study", help="study name (workers with the same name cooperate)")
    p.add_argument("--n-trials", type=int, help="at most this many trials by this worker (the file's n_trials caps the whole study)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds (overrides the file)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("export", help="write a standalone merged model folder (stock transformers can load it)")
    p.add_argument("run")
    p.add_argument("--output", required=True)
    p.add_argument("--onnx", action="store_true", help="also export ONNX and check it against PyTorch")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")

    p = sub.add_parser("serve", help="HTTP prediction service")
    p.add_argument("model", help="a run folder or an exported model folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=_positive_int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-texts", type=_positive_int, default=256)
    p.add_argument("--max-text-chars", type=_positive_int, default=20_000)
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="auto: bf16 where the hardware computes it natively")
    return parser


# ------------------------------------------------------------------------------------------ handlers


def cmd_config(args) -> int:
    from .config import describe_keys, load_config

    if args.keys:
        for key, tp, default, help_ in describe_keys():
            print(f"{key:38} {tp:28} {default:22} {help_}")
        return 0
    config, overrides = _split_config(args)
    print(load_config(config, overrides).to_yaml(), end="")
    return 0


def cmd_validate(args) -> int:
    from .config import load_config

    config, overrides = _split_config(args)
    load_config(config, overrides)
    print("config OK")
    return 0


def cmd_train(args) -> int:
    from .config import from_dict, load_config

    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _relaunch(args.nproc)
    config, overrides = _split_config(args)
    if args.resume and config is None:
        from . import runs
        from .errors import RunError

        saved = Path(args.resume) / runs.CONFIG
        if not Path(args.resume).is_dir():
            raise RunError(f"cannot resume: run folder {args.resume} not found (give the folder that `loraclf train` printed)")
        if not saved.is_file():
            raise RunError(f"cannot resume: {saved} not found; {args.resume} is not a loraclf run folder "
                           f"(give the folder that `loraclf train` printed)")
        from .config import parse_override, set_path, read_yaml

        data = read_yaml(saved)
        for o in overrides:
            keys, value = parse_override(o)
            set_path(data, keys, value)
        cfg = from_dict(data)
    else:
        cfg = load_config(config, overrides)
    if cfg.data.unlabeled:
        if args.resume:
            raise LoraclfError("--resume does not apply to self-training (data.unlabeled is set); start the run again")
        from .adapt import self_train

        result = self_train(cfg, quiet=args.quiet)
    else:
        from .train import train

        result = train(cfg, resume=args.resume, quiet=args.quiet)
    if args.json:
        print(json.dumps({"run": str(result.run_dir), **{k: result.metrics[k] for k in ("val", "test", "target") if k in result.metrics}}, indent=2))
    elif os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(result.run_dir)
    return 0


def _relaunch(nproc: int) -> int:
    """`loraclf train --nproc N ...` -> `accelerate launch --num_processes N -m loraclf ...`."""
    import subprocess

    argv = [a for a in sys.argv[1:]]
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    # --multi_gpu selects Accelerate's torchrun-based launcher; on a machine without GPUs each process then
    # runs on the CPU and Accelerator(cpu=True) joins them with the gloo backend
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "loraclf", *out]
    return subprocess.call(cmd)


def cmd_evaluate(args) -> int:
    from .predict import evaluate_file

    m = evaluate_file(args.run, args.data, args.batch_size, args.allow_pickle, args.precision, args.quiet, args.output)
    print(f"{m['n']} rows | accuracy {m['accuracy']:.4f} | macro-F1 {m['macro_f1']:.4f} | loss {m['loss']:.4f}")
    for name, pc in m["per_class"].items():
        print(f"  {name:20} precision {pc['precision']:.3f} recall {pc['recall']:.3f} f1 {pc['f1']:.3f} support {pc['support']}")
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_file

    r = predict_file(args.run, args.input, args.output, args.format, args.batch_size, args.allow_pickle,
                     args.text_column, args.precision, args.quiet)
    print(f"wrote {r['rows']} predictions to {r['output']} ({', '.join(f'{k}: {v}' for k, v in r['counts'].items())})")
    return 0


def cmd_budget(args) -> int:
    from .budget import budget_report, format_report
    from .config import load_config

    config, overrides = _split_config(args)
    rep = budget_report(load_config(config, overrides), num_labels=args.num_labels)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def cmd_augment(args) -> int:
    from .augment import augment_file
    from .config import AugmentConfig, load_config

    aug = load_config(args.aug_config).augment if args.aug_config else AugmentConfig()
    for key in ("synonym_p", "insert_p", "swap_p", "delete_p", "num_copies"):
        v = getattr(args, key)
        if v is not None:
            setattr(aug, key, v)
    from .config import from_dict

    aug = from_dict({"augment": {k: getattr(aug, k) for k in aug.__dataclass_fields__}}).augment  # validate ranges
    r = augment_file(args.input, args.output, aug, args.seed, args.text_column, args.label_column, args.allow_pickle, args.show)
    for before, after in r.get("examples", []):
        print(f"- {before}\n+ {after}")
    print(f"{r['rows_in']} rows in, {r['rows_out']} rows out -> {args.output}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    print(write_report(args.run))
    return 0


def cmd_compare(args) -> int:
    from .report import compare_runs

    print(compare_runs(args.runs, args.output))
    return 0


def cmd_sweep(args) -> int:
    from .sweep import run_sweep

    print(run_sweep(args.sweep_file, storage=args.storage, study_name=args.study, n_trials=args.n_trials, quiet=args.quiet,
                    timeout=args.timeout))
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    print(export_run(args.run, args.output, onnx=args.onnx, overwrite=args.overwrite))
    return 0


def cmd_serve(args) -> int:
    from .serve import serve

    serve(args.model, host=args.host, port=args.port, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
          max_texts=args.max_texts, max_text_chars=args.max_text_chars, precision=args.precision)
    return 0


HANDLERS = {
    "train": cmd_train, "config": cmd_config, "validate": cmd_validate, "evaluate": cmd_evaluate,
    "predict": cmd_predict, "budget": cmd_budget, "augment": cmd_augment, "report": cmd_report,
    "compare": cmd_compare, "sweep": cmd_sweep, "export": cmd_export, "serve": cmd_serve,
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
        msg = " ".join(str(e).split("\n"))
        print(f"loraclf {args.command}: error: {msg}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # train raises train.Interrupted (exit 128 + signal) after saving a checkpoint
        print(f"loraclf {args.command}: interrupted{(' (' + str(e) + ')') if str(e) else ''}", file=sys.stderr)
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
