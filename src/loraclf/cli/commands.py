"""The `loraclf` command: parse arguments (parser.py), call the library, map errors to exit codes. No logic of its
own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import launch
from .parser import build_parser
from ..base.errors import LoraclfError
from ..config import augment_config, describe_keys, load_config
from ..runs import resume_config


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
    cfg = load_config(config, overrides)
    print(cfg.to_yaml(), end="")
    from ..training.speed.device_defaults import describe

    print("\n".join(describe(cfg)))  # YAML comments: the output still loads as a config
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
    from ..infer.files import evaluate_file

    m = evaluate_file(args.run, args.data, args.batch_size, args.allow_pickle, args.precision, args.quiet, args.output,
                      args.int8_engine)
    print("\n".join(_metric_lines(m)))
    return 0


def cmd_predict(args) -> int:
    from ..infer.files import predict_file

    r = predict_file(args.run, args.input, args.output, args.format, args.batch_size, args.allow_pickle,
                     args.text_column, args.precision, args.quiet, args.int8_engine)
    # counts: rows per predicted class (multi-label: per label); summary: regression's mean, std, min, max
    facts = {**(r.get("counts") or {}), **{k: f"{v:.4g}" for k, v in (r.get("summary") or {}).items()}}
    shown = f" ({', '.join(f'{k}: {v}' for k, v in facts.items())})" if facts else ""
    print(f"wrote {r['rows']} predictions to {r['output']}{shown}")
    return 0


def cmd_select(args) -> int:
    from ..base import logs
    from ..infer.select import select_file

    with logs.quiet(args.quiet):
        r = select_file(args.run, args.pool, args.output, args.k, args.strategy, args.seed, args.allow_pickle,
                        args.text_column, not args.include_labelled)
    left_out = ", ".join(f"{n} {what}" for what, n in r["excluded"].items() if n) or "none"
    print(f"wrote {r['selected']} rows to label ({r['strategy']}) to {r['output']}: {r['pool_rows']} pool rows, "
          f"{r['candidates']} ranked, left out: {left_out}")
    return 0


def cmd_explain(args) -> int:
    from ..infer.files import explain_file
    from ..report import explanations

    r = explain_file(args.run, args.input, args.output, args.target, args.steps, args.allow_pickle, args.text_column,
                     args.precision, args.quiet)
    page = explanations.write(r["records"], Path(r["output"]).with_suffix(".html"),
                              f"loraclf explain: {Path(args.run).name}")
    print(f"wrote attributions of {r['rows']} texts to {r['output']} and {page}")
    return 0


def cmd_cv(args) -> int:
    from ..training.cv import run_cv

    config, overrides = _split_config(args)
    r = run_cv(load_config(config, overrides), args.output, args.folds, args.quiet)
    if args.json:
        print(json.dumps({"output": str(r.output), "mean": r.mean, "std": r.std}, indent=2))
        return 0
    shown = ", ".join(f"{k} {r.mean[k]:.4f} ± {r.std[k]:.4f}" for k in list(r.mean)[:2])
    print(f"{r.summary['folds']} folds of {r.summary['rows']} training rows: {shown} -> {r.output}")
    return 0


def cmd_audit(args) -> int:
    from ..trust import run_audit

    config, overrides = _split_config(args)
    chosen = {k: v for k, v in (("label_probs", args.label_probs), ("filter_by", args.filter_by)) if v is not None}
    r = run_audit(load_config(config, overrides), args.output, args.folds, args.near_threshold, args.write_clean,
                  args.relabel, args.quiet, args.from_cv, **chosen)
    li, dups = r.summary["label_issues"], r.summary["duplicates"]
    leaks = sum(c["exact"] + c["near"] for scope, c in dups.items() if not scope.startswith("within"))
    print(f"{li['flagged']} label issues of {li['rows']} training rows, {len(r.duplicates)} duplicate rows "
          f"({leaks} across splits) -> {r.output}")
    if "clean_file" in r.summary:
        c = r.summary["clean_file"]
        print(f"wrote {c['rows_out']} of {c['rows_in']} rows to {c['path']} ({c['relabelled']} relabelled)")
    return 0


def cmd_budget(args) -> int:
    from ..model.budget import budget_report, format_report

    from ..task import REGRESSION
    from ..training.few_shot import FEW_SHOT_ROWS_PER_CLASS, widened_targets

    config, overrides = _split_config(args)
    cfg = load_config(config, overrides)
    few = cfg.train.few_shot is not False and cfg.model.problem_type != REGRESSION
    if few and cfg.train.few_shot is True:
        cfg = widened_targets(cfg)  # the few-shot recipe's adapter is what that run trains
    rep = budget_report(cfg, num_labels=args.num_labels)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    if few and cfg.train.few_shot == "auto" and widened_targets(cfg) is not cfg:
        print(f"note: with under {FEW_SHOT_ROWS_PER_CLASS} labelled rows per class, train.few_shot=auto adapts every "
              f"linear layer (adapter.target_modules=all-linear) and trains more parameters than this; add "
              f"train.few_shot=true to count that run", file=sys.stderr)
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
    "predict": cmd_predict, "explain": cmd_explain, "select": cmd_select, "audit": cmd_audit, "budget": cmd_budget, "augment": cmd_augment,
    "report": cmd_report,
    "cv": cmd_cv,
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
