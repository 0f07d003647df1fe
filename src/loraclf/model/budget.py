"""Trainable-parameter budget: exact accounting, enforcement of budget.max_trainable_params, and rank fitting.

Every count comes from the model that `train` builds (model.attach_adapter), instantiated on the meta device from
the model config alone: shapes without storage, so no weights are read and roberta-base is counted in a fraction
of a second. Nothing here knows a method's parameter formula; a rank is fitted by counting built models.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from typing import Callable, Optional

from ..base import logs
from . import methods
from .. import task as problem
from .. import model as model_mod
from .architectures import resolve_targets
from ..config import Config
from ..base.errors import BudgetError, LoraclfError, ModelError

logger = logs.get(__name__)

# Published shapes of a few well-known hub models, used only when their config.json is neither reachable nor in the
# local Hugging Face cache, so that `loraclf budget` answers offline (and without the hub client's ~25 s of retries).
# Trainable counts depend only on these shapes; vocab and positions only change the model total.
_KNOWN: dict[str, Callable[[], object]] = {}


def _known_configs() -> dict[str, Callable[[], object]]:
    if _KNOWN:
        return _KNOWN
    from transformers import (BertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, MPNetConfig,
                              RobertaConfig)

    roberta = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                   bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
    large = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    table = {
        "roberta-base": lambda: RobertaConfig(**roberta),
        "roberta-large": lambda: RobertaConfig(**roberta, **large),
        "bert-base-uncased": lambda: BertConfig(),
        "bert-base-cased": lambda: BertConfig(vocab_size=28996),
        "bert-large-uncased": lambda: BertConfig(**large),
        "distilbert-base-uncased": lambda: DistilBertConfig(),
        "microsoft/mpnet-base": lambda: MPNetConfig(vocab_size=30527, max_position_embeddings=514),
        "google/electra-base-discriminator": lambda: ElectraConfig(embedding_size=768, hidden_size=768,
                                                                   num_attention_heads=12, intermediate_size=3072),
        "microsoft/deberta-v3-base": lambda: DebertaV2Config(
            vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
            pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7, max_relative_positions=-1, position_biased_input=False,
            type_vocab_size=0),
    }
    for org, names in (("FacebookAI", ("roberta-base", "roberta-large")),
                       ("google-bert", ("bert-base-uncased", "bert-base-cased", "bert-large-uncased")),
                       ("distilbert", ("distilbert-base-uncased",))):
        for n in names:
            table[f"{org}/{n}"] = table[n]
    _KNOWN.update(table)
    return _KNOWN


# ------------------------------------------------------------------------------------------ building on meta


@dataclasses.dataclass
class _Shape:
    """A model config resolved for counting, with a note on where it came from."""

    config: object
    source: str


def model_shape(cfg: Config, num_labels: int) -> _Shape:
    """The model config for cfg.model with num_labels, from config.json, else from the built-in table above."""
    import transformers

    transformers.logging.set_verbosity_error()  # not quiet_transformers(): it imports datasets, a second of startup
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    name = cfg.model.name_or_path
    known = _known_configs().get(name)
    if known is not None:
        from transformers import AutoConfig

        try:  # the cache first: a hub lookup that cannot connect retries for ~25 s before failing
            mc = AutoConfig.from_pretrained(name, revision=cfg.model.revision, local_files_only=True,
                                            num_labels=num_labels, id2label=id2label,
                                            problem_type=cfg.model.problem_type,
                                            label2id={v: k for k, v in id2label.items()})
            return _Shape(mc, "config.json (local Hugging Face cache)")
        except (OSError, ValueError):
            mc = known()
            mc.num_labels = num_labels
            mc.id2label, mc.label2id = id2label, {v: k for k, v in id2label.items()}
            mc.problem_type = cfg.model.problem_type
            return _Shape(mc, f"loraclf's built-in copy of {name}'s published shape (its config.json is not in the "
                              f"local Hugging Face cache)")
    path, mc = model_mod.load_model_config(cfg, id2label)
    return _Shape(mc, f"{path}/config.json")


def _meta_base(cfg: Config, shape: _Shape):
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(
                shape.config, trust_remote_code=cfg.model.trust_remote_code)
    except (ValueError, KeyError) as e:
        raise ModelError(f"cannot build a sequence classifier from the config of '{cfg.model.name_or_path}': "
                         f"{str(e).splitlines()[0][:200]}") from None


class _Counter:
    """Builds the adapted model on the meta device for any rank, reusing one meta base model."""

    def __init__(self, cfg: Config, shape: _Shape):
        self.cfg, self.shape = cfg, shape
        self.base = _meta_base(cfg, shape)
        self.cache: dict[int, int] = {}
        self.models: dict[int, object] = {}

    def build(self, r):
        cfg = dataclasses.replace(self.cfg, adapter=dataclasses.replace(self.cfg.adapter, r=r))
        # PiSSA-style inits need real weights; methods.py uses the plain init on meta, which has the same shapes
        return model_mod.attach_adapter(copy.deepcopy(self.base), cfg)

    def count(self, r: int) -> int:
        if r not in self.cache:
            model = self.build(r)
            self.models[r] = model
            self.cache[r] = trainable_count(model)
        return self.cache[r]

    def model(self, r: int):
        self.count(r)
        return self.models[r]

    def largest_fitting(self, cap: int, r_max: int, start: int = 1) -> Optional[int]:
        """The largest r in [1, r_max] with count(r) <= cap (counts never fall as r grows), or None."""
        # LoRA-like counts are affine in r: guess from the counts at start and start + 1, then confirm exactly at
        # the guess and one above (usually the configured rank and the next, already counted)
        start = max(1, min(start, r_max - 1))
        slope = self.count(start + 1) - self.count(start) if r_max >= 2 else 0
        if slope > 0:
            guess = max(1, min(r_max, start + (cap - self.count(start)) // slope))
            if self.count(guess) <= cap and (guess == r_max or self.count(guess + 1) > cap):
                return guess
        if self.count(1) > cap:
            return None
        lo, hi = 1, 2
        while hi <= r_max and self.count(hi) <= cap:  # lo fits; double until hi does not
            lo, hi = hi, hi * 2
        hi = min(hi, r_max + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.count(mid) <= cap:
                lo = mid
            else:
                hi = mid
        return lo


def _r_max(mc) -> int:
    """No rank above the model width helps (a rank-r update of a d x k matrix has rank <= min(d, k))."""
    for attr in ("hidden_size", "dim", "d_model"):
        if isinstance(getattr(mc, attr, None), int):
            return int(getattr(mc, attr))
    return 4096


def _rankless(cfg: Config) -> bool:
    return cfg.adapter.method in methods.RANKLESS


def count_trainable(cfg: Config, num_labels: int) -> int:
    """Exact trainable-parameter count of the model `train` would build for cfg (adapter.r must be an int)."""
    if cfg.adapter.r == "auto":
        raise BudgetError("count_trainable needs an integer adapter.r; resolve 'auto' with budget.enforce first")
    return _Counter(cfg, model_shape(cfg, num_labels)).count(cfg.adapter.r)


# ------------------------------------------------------------------------------------------ enforcement


def enforce(cfg: Config, num_labels: int, log=None) -> Config:
    """Resolve adapter.r=auto to the largest rank under budget.max_trainable_params, and refuse an adapter over it.

    Called by train before any weights are loaded; returns cfg with an integer adapter.r.
    """
    cap = cfg.budget.max_trainable_params
    r = cfg.adapter.r
    log = logs.sink(log, logger)
    if cap is None:
        return cfg
    if r == "auto" and _rankless(cfg):
        # the method has no rank: there is nothing to fit, only the cap to check
        cfg = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, r=1))
        r = 1
    counter = _Counter(cfg, model_shape(cfg, num_labels))
    r_max = _r_max(counter.shape.config)
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


# ------------------------------------------------------------------------------------------ the one count


def trainable_count(model) -> int:
    """The one trainable-parameter count: every parameter that gets a gradient."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_breakdown(model) -> dict:
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


_LAYER = re.compile(r"^.*?\.\d+\.")  # everything up to the first layer index: roberta.encoder.layer.3.


def _plain(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    return re.sub(r"\.modules_to_save\.[^.]+", "", name)


def _shape(t) -> str:
    return " x ".join(str(d) for d in t.shape)


def _tally(rows: dict, key, p, trainable: bool, **fields) -> None:
    row = rows.setdefault(key, {"params": 0, "trainable": 0, **fields})
    row["params"] += p.numel()
    row["trainable"] += p.numel() if trainable else 0


def _rows(model, head_roots: tuple, head_lora: Optional[str]) -> tuple[dict, dict, dict, int, int]:
    """One pass over the parameters: (adapter, head, other) rows, the model total and PEFT's spare head copies."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuners = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    adapter, head, other = {}, {}, {}
    total = spare = 0

    def in_head(path: str) -> bool:
        return any(path == h or path.startswith(h + ".") or path.endswith("." + h) or ("." + h + ".") in path
                   for h in head_roots)

    for name, p in model.named_parameters():
        if ".original_module." in name:  # PEFT's frozen spare copy of a modules_to_save layer
            spare += p.numel()
            continue
        total += p.numel()
        path = _plain(name)
        owner = next((t for t in tuners if path.startswith(t + ".")), None)
        if owner is not None and not path[len(owner) + 1:].startswith("base_layer."):
            kind = path[len(owner) + 1:].split(".")[0]  # lora_A, lora_B, lora_magnitude_vector, ia3_l, ...
            if head_lora and owner == head_lora:
                _tally(head, (owner, kind), p, p.requires_grad, shape=_shape(p))
            else:
                _tally(adapter, (_LAYER.sub("", owner), kind), p, p.requires_grad, layers=0, shape=_shape(p))
                adapter[(_LAYER.sub("", owner), kind)]["layers"] += 1
            continue
        if owner is not None:
            path = owner + path[len(owner) + len(".base_layer"):]
        module = path.rpartition(".")[0]
        if ".modules_to_save." in name or in_head(module):
            _tally(head, (module, "weights"), p, p.requires_grad, shape="")
            row = head[(module, "weights")]
            row["shape"] = (row["shape"] + " + " if row["shape"] else "") + _shape(p)
        elif p.requires_grad:
            _tally(other, _LAYER.sub("", path), p, True, layers=0, shape=_shape(p))
            other[_LAYER.sub("", path)]["layers"] += 1
    return adapter, head, other, total, spare


def breakdown(model, head_modules: list[str], head_lora: Optional[str]) -> dict:
    """Parameters of a built PeftModel by role: adapter rows per target module type and parameter kind, head rows
    layer by layer, other trainable rows (biases, LayerNorms), and totals."""
    head_roots = tuple(head_modules) + ((head_lora,) if head_lora else ())
    adapter, head, other, total, spare = _rows(model, head_roots, head_lora)
    adapter_rows = [{"module": m, "param": k, **v} for (m, k), v in adapter.items()]
    head_rows = [{"module": m, "param": k, **v} for (m, k), v in head.items()]
    other_rows = [{"param": k, **v} for k, v in other.items()]
    added = sum(r["params"] for r in adapter_rows) + sum(r["params"] for r in head_rows if r["param"] != "weights")
    trainable = sum(r["trainable"] for r in adapter_rows + head_rows + other_rows)
    exact = trainable_count(model)
    assert trainable == exact, (trainable, exact)  # every trainable parameter is in exactly one row
    return {
        "adapter_rows": adapter_rows, "head_rows": head_rows, "other_rows": other_rows,
        "adapter_params": sum(r["trainable"] for r in adapter_rows),
        "head_params": sum(r["trainable"] for r in head_rows),
        "other_params": sum(r["trainable"] for r in other_rows),
        "trainable": trainable, "base_params": total - added, "model_params": total,
        "percent": 100.0 * trainable / total if total else 0.0,
        # PEFT's print_trainable_parameters (and the run's params.json) also count the spare copies
        "peft_all_params": total + spare, "peft_percent": 100.0 * trainable / (total + spare) if total else 0.0,
    }


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
    counter = _Counter(cfg, shape)
    r_max = _r_max(shape.config)
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
