"""Training set-up: the run folder's path, Accelerate, data, budget and model, optimizer, step plan, resume.

Everything that can fail on bad input happens before the run folder is created, so a failed start leaves nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch

from ..data import augment
from ..model import budget, methods
from ..runs import checkpoints as checkpoint
from ..base import device, logs
from .. import task as problem, runs
from .. import data as data_mod
from .. import model as model_mod
from ..config import Config
from ..base.errors import BudgetError, RunError
from ..data import Splits
from . import few_shot
from . import inputs as inputs_mod
from . import loss as loss_mod
from .speed import dropout as dropout_mod
from .speed import device_defaults
from .speed import prefix as prefix_mod
from . import trackers as trackers_mod
from .state import LoopState

if TYPE_CHECKING:  # annotations only: the code imports these where it uses them
    import datasets
    from accelerate import Accelerator
    from peft import PeftModel
    from torch.optim.lr_scheduler import LRScheduler
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

logger = logs.get(__name__)


@dataclass
class StepPlan:
    total_steps: int
    per_epoch: Optional[int]  # None for a stream: it has no length (train.max_steps and eval.eval_steps are required)
    eval_every: int
    save_every: int
    warmup: int
    batch_size: int
    accumulation: int
    num_processes: int

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.num_processes * self.accumulation

    @property
    def rows_per_batch(self) -> int:
        return self.batch_size * self.num_processes


@dataclass
class Setup:
    """One training run, set up: what the loop and the finish read."""

    cfg: Config
    run: Path
    fresh: bool  # a new run (not --resume)
    started: float  # time.time() at the start, for metrics.json's wall time
    precision: str  # Accelerate's name: no, bf16, fp16
    accelerator: Accelerator
    say: Callable[[str], None]  # logs on the main process only
    # the data
    splits: Splits
    inputs: inputs_mod.Inputs
    # the model
    model: torch.nn.Module  # as prepared by Accelerate (wrapped in DDP when several processes)
    unwrapped: PeftModel  # the same model unwrapped: what checkpoints, the saved adapter and the hooks see
    tokenizer: PreTrainedTokenizerBase
    params: dict  # the trainable-parameter breakdown (budget.param_breakdown), params.json
    hooks: methods.MethodHooks
    # the optimization
    optimizer: torch.optim.Optimizer  # as prepared by Accelerate
    scheduler: LRScheduler  # stepped once per optimizer step
    plan: StepPlan
    loss: loss_mod.LossSpec
    decision: problem.Decision  # during training: the target scaling only (thresholds and temperature come after)
    device: device_defaults.DeviceDefaults = None  # what auto means here: batch_tokens, fused AdamW, pinned memory
    lr_scale: float = 1.0  # train.batch_tokens: the learning rate's factor for the larger batches (lr_scale)
    prefix: Optional[prefix_mod.PrefixCache] = None  # train.prefix_cache, where it applies
    dropout: Optional[dropout_mod.Swap] = None  # train.fast_dropout, where it is on
    val_loader: Optional[DataLoader] = None  # prepared after the resume (restore), as the loop's first step
    trackers: list[str] = field(default_factory=list)  # the started trackers (start_trackers, after the resume)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def default_run_name(cfg: Config) -> str:
    model = Path(cfg.model.name_or_path.replace("packaged:", "")).name
    data = Path(cfg.data.train).stem if cfg.data.train else (cfg.data.name or "data").replace("packaged:", "")
    return runs.safe_run_name(f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{model}-{data}")


def set_seed(seed: int) -> None:
    from accelerate.utils import set_seed as _set

    _set(seed)


def _no_decay(name: str) -> bool:
    n = name.lower()
    return n.endswith(".bias") or "layernorm" in n or "layer_norm" in n or ".ln" in n or "norm.weight" in n


def build_optimizer(cfg: Config, model: torch.nn.Module, fused: Optional[bool] = None,
                    lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and LayerNorm, or PEFT's LoRA+ optimizer. fused: optimizer.fused
    resolved for the device (None: resolved here); lr_scale multiplies train.learning_rate (token-capped batches)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lr = cfg.train.learning_rate * lr_scale
    kw = dict(lr=lr, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps)
    if fused is None:
        fused = device_defaults.resolve(cfg).fused
    if cfg.optimizer.name == "loraplus":
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model=model, optimizer_cls=torch.optim.AdamW, lr=lr,
            loraplus_lr_ratio=cfg.optimizer.loraplus_lr_ratio, weight_decay=cfg.train.weight_decay,
            betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps)
    groups = [
        {"params": [p for n, p in params if not _no_decay(n)], "weight_decay": cfg.train.weight_decay},
        {"params": [p for n, p in params if _no_decay(n)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # foreach: the multi-tensor path; optimizer.fused: torch's fused kernel (CPU since torch 2.4). Which is the
    # default follows bench/train_speed.py's measurement, not a guess
    if fused:
        return torch.optim.AdamW(groups, fused=True, **kw)
    return torch.optim.AdamW(groups, foreach=True, **kw)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, total_steps: int) -> tuple[LRScheduler, int]:
    from transformers import get_scheduler

    warmup = cfg.train.warmup_steps if cfg.train.warmup_steps is not None else int(math.ceil(cfg.train.warmup_ratio * total_steps))
    return get_scheduler(cfg.train.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps), warmup


def prepare(cfg: Config, log: Optional[Callable[[str], None]] = None, splits: Optional[Splits] = None
            ) -> tuple[Config, Splits, PeftModel, PreTrainedTokenizerBase, dict]:
    """Setup that can fail on bad input: data, budget, model. Nothing is written to disk here."""
    log = logs.sink(log, logger)
    if cfg.augment.enabled:
        augment.Augmenter(cfg.augment)  # all-zero rates or a missing WordNet fail here, before data, model or run folder
    if splits is None:
        splits = data_mod.load_splits(cfg.data, log=log, problem_type=cfg.model.problem_type)
        data_mod.warn_overlap(splits)  # one warning line when validation/test rows repeat training rows
    cfg = budget.enforce(cfg, len(splits.id2label), log=log)
    model, tokenizer = model_mod.build_model(cfg, splits.id2label)
    params = budget.param_breakdown(model)
    cap = cfg.budget.max_trainable_params
    if cap is not None and params["trainable"] > cap:
        raise BudgetError(f"the adapter has {params['trainable']:,} trainable parameters, over "
                          f"budget.max_trainable_params={cap:,}; lower adapter.r or use adapter.r=auto")
    return cfg, splits, model, tokenizer, params


def _fresh_accelerate_state() -> None:
    """Forget the Accelerate state of an earlier train() in this process (sweeps, self-training rounds, tests).

    Accelerate keeps one process-wide state and refuses a second Accelerator with other settings (precision,
    device). In a single process nothing else holds on to it, so it is reset; a distributed run keeps its state,
    since resetting it would drop the process group.
    """
    import torch.distributed as dist
    from accelerate.state import AcceleratorState, GradientState

    if dist.is_available() and dist.is_initialized():
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _accelerator(cfg: Config, run: Path, precision: str) -> Accelerator:
    from accelerate import Accelerator
    from accelerate.utils import (DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration,
                                  TorchDynamoPlugin)

    _fresh_accelerate_state()
    # train.torch_compile: Accelerate compiles the model in prepare(); regional compilation compiles one encoder
    # layer and reuses it for the others, which cuts the compile time by about the layer count
    dynamo = (TorchDynamoPlugin(backend="inductor", dynamic=True, use_regional_compilation=True)
              if cfg.train.torch_compile else None)
    # cpu=True is what makes Accelerate pick DDP over gloo when torchrun/accelerate launch start several CPU processes
    return Accelerator(cpu=device.on_cpu_only(), mixed_precision=precision,
                       gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                       log_with=list(cfg.track) or None,
                       project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / runs.TENSORBOARD)),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
                       dynamo_plugin=dynamo,
                       # batches from pinned host memory are copied to a GPU without making the host wait
                       dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()))


def _plan(cfg: Config, inputs: inputs_mod.Inputs, n_proc: int,
          tokens: Optional[data_mod.TokenBatchSampler]) -> StepPlan:
    """The step plan; with token-capped batches (tokens: epoch 0's), an epoch is as many steps as its batches
    make (later epochs' counts differ by a batch or so: the run ends at total_steps wherever that falls)."""
    bs, accum = cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps
    if tokens is not None:
        per_epoch = max(1, math.ceil(math.ceil(len(tokens) / n_proc) / accum))
    else:
        per_epoch = None if inputs.train_ds is None else data_mod.steps_per_epoch(len(inputs.train_ds), bs, accum,
                                                                                  n_proc)
    total = cfg.train.max_steps or int(math.ceil(per_epoch * cfg.train.num_train_epochs))
    eval_every = cfg.eval.eval_steps or per_epoch
    return StepPlan(total, per_epoch, eval_every, cfg.output.save_steps or eval_every, 0, bs, accum, n_proc)


def _token_batches_lr(cfg: Config, dd: device_defaults.DeviceDefaults,
                      tokens: Optional[data_mod.TokenBatchSampler], say: Callable[[str], None]) -> float:
    """train.batch_tokens: log what it does, and the learning rate's factor for the larger batches."""
    if tokens is None:
        if cfg.train.batch_tokens == "auto" and dd.cuda:
            say(f"train.batch_tokens {dd.batch_tokens_why}")
        return 1.0
    scale = device_defaults.lr_scale(tokens.mean_rows, cfg.train.per_device_train_batch_size)
    say(f"train.batch_tokens={dd.batch_tokens} ({dd.batch_tokens_why}): {tokens.mean_rows:.1f} rows a batch on "
        f"average (at most {dd.max_rows(cfg)}); learning rate {cfg.train.learning_rate:g} x {scale:.3f} = "
        f"{cfg.train.learning_rate * scale:.3g} (x sqrt(rows / {cfg.train.per_device_train_batch_size}))")
    return scale


def _create_run_folder(run: Path, cfg: Config, splits, params: dict, spec: loss_mod.LossSpec) -> None:
    # the run folder appears whole (config, label map, params) or not at all, so a kill here leaves nothing that
    # --resume would half-read; overwrite replaces an old folder in the same rename
    used = cfg
    if cfg.data.train:  # the files were the data: a default data.name left in would read as if it had been used
        used = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=None))
    with runs.atomic_dir(run) as tmp:
        runs.atomic_write_text(tmp / runs.CONFIG, used.to_yaml())
        runs.write_json(tmp / runs.LABEL_MAP, {"id2label": {str(k): v for k, v in splits.id2label.items()},
                                               "label2id": {v: k for k, v in splits.id2label.items()},
                                               "int_labels": splits.int_labels})
        runs.write_json(tmp / runs.PARAMS, params)
        runs.write_json(tmp / runs.LOSS, spec.to_json(splits.id2label))


def _describe(ctx: Setup) -> None:
    cfg, plan, inp = ctx.cfg, ctx.plan, ctx.inputs
    ctx.say(f"run folder: {ctx.run.resolve()}")
    files = [f"{k}={getattr(cfg.data, k)}" for k in ("train", "validation", "test") if getattr(cfg.data, k)]
    ctx.say("data: " + (", ".join(files) if files else str(cfg.data.name)) + f"; model: {cfg.model.name_or_path}")
    ctx.say(("streamed" if inp.train_ds is None else f"{len(inp.train_ds):,}") + f" train / {len(inp.val_ds):,} val"
            + (f" / {len(inp.test_ds):,} test" if inp.test_ds is not None else "")
            + f" rows; {plan.total_steps} steps ({plan.per_epoch or 'unknown'}/epoch), warm-up {plan.warmup}, effective "
              + (f"batch {plan.effective_batch} ({plan.batch_size} x {plan.num_processes} process(es) x "
                 f"{plan.accumulation} accumulation)" if not ctx.device.batch_tokens else
                 f"batches of at most {ctx.device.batch_tokens} tokens x {plan.num_processes} process(es) x "
                 f"{plan.accumulation} accumulation")
            + f", precision {ctx.precision}")


def _training_precision(cfg: Config) -> str:
    """Accelerate's name for the precision the run really computes in (metrics.json records it)."""
    precision, why = device.resolve_why(cfg.train.mixed_precision, "train.mixed_precision")
    if cfg.train.mixed_precision == "auto":
        logger.info(f"precision {precision}: {why}")
    if precision == "fp16" and device.on_cpu_only():
        # Accelerate turns fp16 autocast on only on accelerators: on a CPU the run would compute in fp32 anyway
        logger.warning("train.mixed_precision=fp16 has no effect on a CPU (Accelerate autocasts fp16 only on a GPU); "
                       "training in fp32. Use bf16 or auto for mixed precision on this machine.")
        precision = "fp32"
    return device.accelerate_name(precision)


def _run_path(cfg: Config, resume: Optional[Path], run_dir: Optional[Path]) -> Path:
    if resume is not None and not resume.is_dir():
        raise RunError(f"cannot resume: run folder {resume} not found")
    # the path is decided (and a clash refused) now; the folder is created only after setup succeeds
    return resume or run_dir or runs.new_run_dir(cfg.output.dir, cfg.output.run_name or default_run_name(cfg),
                                                cfg.output.overwrite)


def setup(cfg: Config, resume: Optional[str | Path], splits: Optional[Splits], run_dir: Optional[Path]) -> Setup:
    """Everything before the first step; the run folder exists (whole) when this returns."""
    started = time.time()
    precision = _training_precision(cfg)
    trackers_mod.preflight(cfg)  # a bad tracking URI fails here, before any data, model or folder
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    resume_dir = Path(resume) if resume else None
    run = _run_path(cfg, resume_dir, run_dir)
    accelerator = _accelerator(cfg, run, precision)
    say = logger.info if accelerator.is_main_process else (lambda m: None)
    id2label = runs.read_label_map(resume_dir).id2label if resume_dir is not None else None
    # train.few_shot: loads the splits (every labelled row trains when the recipe is on) and sets its schedule
    cfg, splits, few = few_shot.plan(cfg, splits, say, id2label=id2label)
    set_seed(cfg.train.seed)
    cfg, splits, model, tokenizer, params = prepare(cfg, log=say, splits=splits)
    say(budget.format_breakdown(params))
    spec = loss_mod.build(cfg, splits.id2label, data_mod.train_labels(splits)) if not cfg.data.streaming else \
        loss_mod.build(cfg, splits.id2label, np.zeros(0, dtype=np.int64))
    say(spec.describe(splits.id2label))
    hooks = methods.hooks_of(model)
    inputs = inputs_mod.build(cfg, splits, tokenizer, say)
    if few is not None and resume_dir is None:  # the few-shot recipe's contrastive stage, before the classifier's
        few_shot.contrast(cfg, model, inputs.train_ds, tokenizer, accelerator, say)
    prefix = prefix_mod.build(cfg, model, inputs.train_ds, say)
    if prefix is not None:
        inputs.train_ds = prefix_mod.with_rows(inputs.train_ds)
    dd = device_defaults.resolve(cfg, few_shot=few is not None)
    tokens = inputs_mod.token_sampler(cfg, inputs.train_ds, 0, dd) if dd.batch_tokens and inputs.train_ds else None
    lr_scale = _token_batches_lr(cfg, dd, tokens, say)
    plan = _plan(cfg, inputs, accelerator.num_processes, tokens)
    few_shot.warn_too_small(cfg, plan.total_steps, len(splits.validation), few is not None,
                            splits.validation_is_train, logger.warning if accelerator.is_main_process else say)
    hooks.set_total_steps(plan.total_steps)  # AdaLoRA schedules its rank budget over all steps
    optimizer = build_optimizer(cfg, model, fused=dd.fused, lr_scale=lr_scale)
    scheduler, plan.warmup = build_scheduler(cfg, optimizer, plan.total_steps)
    # the scheduler is stepped by hand once per optimizer step; Accelerate's wrapper would step it once per process
    prepared, optimizer = accelerator.prepare(model, optimizer)
    if resume_dir is None and accelerator.is_main_process:
        _create_run_folder(run, cfg, splits, params, spec)
    accelerator.wait_for_everyone()
    ctx = Setup(cfg=cfg, run=run, fresh=resume_dir is None, started=started, precision=precision,
                accelerator=accelerator, say=say, splits=splits, inputs=inputs,
                model=prepared, unwrapped=accelerator.unwrap_model(prepared), tokenizer=tokenizer, params=params,
                hooks=hooks, optimizer=optimizer, scheduler=scheduler, plan=plan, loss=spec,
                decision=problem.Decision(cfg.model.problem_type, target_mean=spec.target_mean,
                                          target_std=spec.target_std),
                device=dd, lr_scale=lr_scale, prefix=prefix,
                dropout=dropout_mod.build(cfg, model, accelerator.device, say))
    _describe(ctx)
    return ctx


def start_trackers(ctx: Setup) -> None:
    """After the resume, so a refused checkpoint leaves the run's tracking files as they were."""
    ctx.trackers = trackers_mod.start(ctx.accelerator, ctx.cfg, ctx.run) if ctx.main and ctx.cfg.track else []


def restore(ctx: Setup) -> LoopState:
    """A new run's state, or a resumed run's: newest complete checkpoint, history cut back to its step."""
    state = LoopState()
    if ctx.fresh:
        return state
    trackers_mod.read_saved(ctx.run)  # a damaged tracking file is named now, whether or not trackers are on
    if ctx.main:
        runs.remove_temp_files(ctx.run)  # leftovers of writes cut short by a kill
    ckpt = checkpoint.newest_valid_checkpoint(ctx.run, log=ctx.say)
    if ckpt is None:
        ctx.say("no complete checkpoint found; starting from step 0")
    else:
        state.restore(checkpoint.load_checkpoint(ckpt, ctx.unwrapped, ctx.optimizer, ctx.scheduler),
                      ctx.plan.rows_per_batch)
        ctx.hooks.after_resume(state.step)  # e.g. AdaLoRA: restore its final rank pattern
        ctx.say(f"resumed from {ckpt.name}: step {state.step}, epoch {state.epoch}")
    history = ctx.run / runs.HISTORY
    if ctx.main and history.exists():
        # drop records past the checkpoint we resumed from, so the history has no duplicates
        kept = [r for r in runs.read_jsonl(history) if r.get("step", 0) <= state.step]
        runs.atomic_write_text(history, "".join(json.dumps(r) + "\n" for r in kept))
    return state


def eval_loader(ctx: Setup, ds: datasets.Dataset) -> DataLoader:
    """Sorted by length; capped by tokens too (at most 16 x the evaluation batch) where training batches are, in one
    process (several processes gather their outputs, which needs batches of one size)."""
    dd, bs = ctx.device, ctx.cfg.eval.per_device_eval_batch_size
    tokens = dd.eval_tokens() if ctx.accelerator.num_processes == 1 else None
    loader = data_mod.eval_loader(ds, ctx.tokenizer, bs, max_tokens=tokens,
                                  max_rows=bs * device_defaults.MAX_ROWS_FACTOR, pin_memory=dd.pin_memory,
                                  pad_multiple=dd.pad_multiple)
    return ctx.accelerator.prepare(loader)
