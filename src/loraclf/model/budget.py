"""Trainable-parameter budget: the exact count, enforcement of budget.max_trainable_params, rank fitting, and the
`loraclf budget` report.

The counts are those of the model `train` builds, made on the meta device from the model config alone (counting.py);
the report's rows come from param_table.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from typing import Iterator, Optional

import numpy as np
import torch

from ..base import logs
from . import methods
from .. import task as problem
from .. import model as model_mod
from .architectures import resolve_targets
from .counting import RankCounter, max_rank, model_shape, trainable_count
from .param_table import breakdown
from ..config import Config
from ..base.errors import BudgetError, LoraclfError

logger = logs.get(__name__)


def _rankless(cfg: Config) -> bool:
    return cfg.adapter.method in methods.RANKLESS


def count_trainable(cfg: Config, num_labels: int) -> int:
    """Exact trainable-parameter count of the model `train` would build for cfg (adapter.r must be an int)."""
    if cfg.adapter.r == "auto":
        raise BudgetError("count_trainable needs an integer adapter.r; resolve 'auto' with budget.enforce first")
    return RankCounter(cfg, model_shape(cfg, num_labels)).count(cfg.adapter.r)


# ------------------------------------------------------------------------------------------ enforcement


@contextlib.contextmanager
def random_streams_kept() -> Iterator[None]:
    """Leave torch's (CPU), python's and numpy's random streams as they were on entry.

    Counting builds models on the meta device, and module initialisation draws from torch's global generator even
    there; train counts after seeding, so without this a cap would change the initialisation and dropout a seed
    gives. CUDA's generators are not forked: meta-device models never draw from them, and forking them would
    initialise CUDA before Accelerate places the processes."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def enforce(cfg: Config, num_labels: int, log=None) -> Config:
    """Resolve adapter.r=auto to the largest rank under budget.max_trainable_params, and refuse an adapter over it.

    Called by train before any weights are loaded, after the seed; returns cfg with an integer adapter.r and leaves
    every random stream where it was, so a cap that does not bind changes nothing a seed produces.
    """
    with random_streams_kept():
        return _enforce(cfg, num_labels, log)


def _enforce(cfg: Config, num_labels: int, log=None) -> Config:
    cap = cfg.budget.max_trainable_params
    r = cfg.adapter.r
    log = logs.sink(log, logger)
    if cap is None:
        return cfg
    if r == "auto" and _rankless(cfg):
        # the method has no rank: there is nothing to fit, only the cap to check
        cfg = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, r=1))
        r = 1
    counter = RankCounter(cfg, model_shape(cfg, num_labels))
    r_max = max_rank(counter.shape.config)
    what = _what(cfg)
    if r == "auto":
        best = counter.largest_fitting(cap, r_max)
        if best is None:
            raise BudgetError(_no_rank_fits(counter.count(1), cap, what))
        nxt = f"; r={best + 1} would need {counter.count(best + 1):,}" if best < r_max else f" (r is capped at {r_max}, the model width)"
        log(f"adapter.r=auto: r={best}, {counter.count(best):,} trainable parameters under the cap of {cap:,}{nxt}")
        return dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, r=best))
    n = counter.count(r)
    if n > cap:
        if _rankless(cfg):
            raise BudgetError(f"{what} has {n:,} trainable parameters, over budget.max_trainable_params={cap:,}; "
                              f"the method has no rank to lower: adapt fewer modules or use adapter.head=linear")
        best = counter.largest_fitting(cap, r_max, start=r)
        if best is None:
            raise BudgetError(f"{what} with r={r} has {n:,} trainable parameters, over budget.max_trainable_params="
                              f"{cap:,}, and " + _no_rank_fits(counter.count(1), cap, what, lead=False))
        raise BudgetError(f"{what} with r={r} has {n:,} trainable parameters, over budget.max_trainable_params={cap:,}; "
                          f"the largest rank that fits is r={best} ({counter.count(best):,}): set adapter.r={best} "
                          f"or adapter.r=auto")
    return cfg


def _what(cfg: Config) -> str:
    t = cfg.adapter.target_modules
    return f"{cfg.adapter.method} on {t if isinstance(t, str) else ','.join(t)} with head={cfg.adapter.head}"


def _no_rank_fits(n1: int, cap: int, what: str, lead: bool = True) -> str:
    head = f"{what}: " if lead else ""
    return (f"{head}even r=1 needs {n1:,} trainable parameters, over budget.max_trainable_params={cap:,}; adapt fewer "
            f"modules (adapter.target_modules, adapter.layers_to_transform), use a smaller head (adapter.head=linear) "
            f"or raise the cap")


# ------------------------------------------------------------------------------------------ params.json


def param_breakdown(model: torch.nn.Module) -> dict:
    """Trainable parameters split into adapter, head and other, with the model total."""
    adapter = head = other = 0
    total = 0
    by_group: dict[str, int] = {}
    for name, p in model.named_parameters():
        total += p.numel()
        if not p.requires_grad:
            continue
        n = p.numel()
        if "modules_to_save" in name:
            head += n
            group = "head." + name.split(".modules_to_save.default.")[-1]
        elif any(tag in name for tag in ("lora_", "ia3_", "vera_", "hada_", "lokr_")):
            adapter += n
            parts = [x for x in name.split(".") if x != "default"]
            group = "adapter." + ".".join(parts[-3:-1])  # e.g. adapter.query.lora_A
        else:
            other += n
            group = "other." + name
        by_group[group] = by_group.get(group, 0) + n
    trainable = adapter + head + other
    assert trainable == trainable_count(model), (trainable, trainable_count(model))
    return {
        "trainable": trainable,
        "adapter": adapter,
        "head": head,
        "other": other,
        "total": total,
        "percent": round(100.0 * trainable / total, 4) if total else 0.0,
        "groups": by_group,
    }


def format_breakdown(b: dict) -> str:
    return (f"trainable params: {b['trainable']:,} ({b['percent']:.4f}% of {b['total']:,}): "
            f"adapter {b['adapter']:,}, head {b['head']:,}" + (f", other {b['other']:,}" if b["other"] else ""))


# ------------------------------------------------------------------------------------------ the report


def resolve_num_labels(cfg: Config, num_labels: Optional[int] = None) -> tuple[int, str]:
    """(number of model outputs, where it came from) for cfg.model.problem_type: 1 for regression; otherwise an
    explicit value, data.label_columns (multi-label), data.label_names (single-label), else the training labels."""
    pt = cfg.model.problem_type
    if num_labels is not None:
        if pt == problem.REGRESSION and num_labels != 1:
            raise BudgetError(f"--num-labels must be 1 with model.problem_type=regression (one output), got {num_labels}")
        if pt != problem.REGRESSION and num_labels < 2:
            raise BudgetError(f"--num-labels must be at least 2 with model.problem_type={pt}, got {num_labels} "
                              f"(one output is model.problem_type=regression)")
        return num_labels, "--num-labels"
    if pt == problem.REGRESSION:
        return 1, "model.problem_type=regression"
    if pt == problem.MULTI and cfg.data.label_columns:
        return len(cfg.data.label_columns), "data.label_columns"
    if pt == problem.SINGLE and cfg.data.label_names:
        return len(cfg.data.label_names), "data.label_names"
    from .. import data as data_mod  # here, not at the top: pandas/datasets add ~0.5 s to every `loraclf budget`

    try:
        splits = data_mod.load_splits(cfg.data, log=lambda m: None, problem_type=pt)
    except LoraclfError as e:
        hint = "data.label_columns" if pt == problem.MULTI else "data.label_names"
        raise BudgetError(f"cannot count the labels without reading the data ({e}); give --num-labels N or set "
                          f"{hint}") from None
    return len(splits.id2label), "the training labels"


def budget_report(cfg: Config, num_labels: Optional[int] = None) -> dict:
    """Everything `loraclf budget` prints: the exact trainable breakdown of the model train would build, the cap,
    and the largest rank under it. Reads no weights (the model is built on the meta device)."""
    n_labels, labels_from = resolve_num_labels(cfg, num_labels)
    resolved = None
    cap = cfg.budget.max_trainable_params
    r = cfg.adapter.r
    if r == "auto" and _rankless(cfg):
        cfg = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, r=1))
        r = 1
    shape = model_shape(cfg, n_labels)
    counter = RankCounter(cfg, shape)
    r_max = max_rank(shape.config)
    best = None
    if cap is not None and not _rankless(cfg):
        best = counter.largest_fitting(cap, r_max, start=r if isinstance(r, int) else 1)
    if r == "auto":
        if best is None:
            raise BudgetError(_no_rank_fits(counter.count(1), cap, _what(cfg)))
        resolved, r = best, best
    model = counter.model(r)
    plan = model_mod.head_plan(counter.base, cfg.adapter.head)
    b = breakdown(model, list(plan.modules_to_save) + ([plan.frozen] if plan.frozen else []), plan.lora_target)
    for row in b["head_rows"]:
        if plan.frozen and row["module"] == plan.frozen:
            row["note"] = "frozen, set to the identity" if plan.identity else "frozen, pretrained"
        elif plan.lora_target and row["module"] == plan.lora_target and row["param"] == "weights":
            row["note"] = "frozen, adapted below"
    mc = shape.config
    return {
        "model": cfg.model.name_or_path, "model_type": mc.model_type, "config_source": shape.source,
        "problem_type": cfg.model.problem_type, "num_labels": n_labels, "num_labels_from": labels_from,
        "method": cfg.adapter.method, "r": r, "r_auto": resolved is not None,
        "target_modules": cfg.adapter.target_modules,
        "resolved_targets": resolve_targets(counter.base, mc.model_type, cfg.adapter.target_modules),
        "layers_to_transform": cfg.adapter.layers_to_transform, "head": cfg.adapter.head,
        **b,
        "max_trainable_params": cap,
        "fits": None if cap is None else b["trainable"] <= cap,
        "largest_fitting_r": best,
        "largest_fitting_r_params": counter.count(best) if best is not None else None,
    }


def format_report(rep: dict) -> str:
    """The budget report as an aligned plain-text table."""
    w = 60
    lines = []
    tm = rep["target_modules"]
    preset = f"{tm} = " if isinstance(tm, str) else ""
    layers = f", top {rep['layers_to_transform']} layers" if rep["layers_to_transform"] else ""
    lines.append(f"model   {rep['model']} ({rep['model_type']}); shape from {rep['config_source']}")
    outputs = "output" if rep["num_labels"] == 1 else "outputs"
    lines.append(f"labels  {rep['num_labels']} {outputs} (from {rep['num_labels_from']}); {rep['problem_type']}")
    auto = " (adapter.r=auto)" if rep["r_auto"] else ""
    lines.append(f"adapter {rep['method']} r={rep['r']}{auto} on {preset}{', '.join(rep['resolved_targets'])}{layers}; "
                 f"head {rep['head']}")
    lines.append("")

    def row(label: str, shape: str, layers: str, n: int, note: str = "") -> str:
        return f"  {label:<34} {shape:>22} {layers:>7} {n:>12,}" + (f"   {note}" if note else "")

    lines.append(f"  {'':<34} {'shape':>22} {'layers':>7} {'trainable':>12}")
    lines.append(f"adapter ({rep['method']})")
    for r in rep["adapter_rows"]:
        lines.append(row(f"{r['module']}  {r['param']}", r["shape"], str(r["layers"]), r["trainable"]))
    lines.append(row("adapter total", "", "", rep["adapter_params"]))
    lines.append(f"head ({rep['head']})")
    for r in rep["head_rows"]:
        label = r["module"] if r["param"] == "weights" else f"{r['module']}  {r['param']}"
        lines.append(row(label, r["shape"], "", r["trainable"], r.get("note", "")))
    lines.append(row("head total", "", "", rep["head_params"]))
    if rep["other_rows"]:
        lines.append("other trainable (biases, LayerNorms)")
        for r in rep["other_rows"]:
            lines.append(row(r["param"], r["shape"], str(r["layers"]), r["trainable"]))
        lines.append(row("other total", "", "", rep["other_params"]))
    lines.append("-" * (w + 20))
    lines.append(row("TRAINABLE", "", "", rep["trainable"]))
    lines.append(row("model total (base + adapter)", "", "", rep["model_params"], f"{rep['percent']:.4f}% trainable"))
    if rep["peft_all_params"] != rep["model_params"]:
        lines.append(row("  + PEFT's spare head copy", "", "", rep["peft_all_params"],
                         f"{rep['peft_percent']:.4f}%, as PEFT's print_trainable_parameters counts"))
    cap = rep["max_trainable_params"]
    if cap is not None:
        status = (f"fits, {cap - rep['trainable']:,} to spare" if rep["fits"]
                  else f"OVER by {rep['trainable'] - cap:,}: train will refuse it")
        lines.append(row("budget.max_trainable_params", "", "", cap, status))
        if rep["largest_fitting_r"] is not None:
            lines.append(f"  largest rank under the cap: r={rep['largest_fitting_r']} "
                         f"({rep['largest_fitting_r_params']:,} trainable)")
        elif rep["fits"] is False:
            lines.append("  no rank fits under the cap (even r=1 is over)")
    return "\n".join(lines)
