"""The training loop, on Accelerate. Reads top to bottom: setup -> train -> cleanup.

history.jsonl records written here:
    {"type": "train", "step", "epoch", "loss", "learning_rate", "samples_per_second", "time"}
    {"type": "eval", "split": "val", "step", "epoch", "loss", "accuracy", "macro_f1", "time"}
`time` is seconds of training since the run started (excluding evaluation only in samples_per_second).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

from . import data as data_mod
from . import model as model_mod
from . import runs
from .config import Config, flatten
from .errors import BudgetError, DataError, RunError
from .evaluate import compute_metrics, predict_probs

LOWER_IS_BETTER = {"loss"}


# ------------------------------------------------------------------------------------------ small helpers


def log_line(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[loraclf] {msg}", file=sys.stderr, flush=True)


def bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


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


def _has_other_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool((mps and mps.is_available()) or (xpu and xpu.is_available()))


def resolve_precision(choice: str) -> str:
    """Accelerate's name for the precision: no (fp32), bf16 or fp16."""
    if choice == "auto":
        return "bf16" if bf16_supported() else "no"
    return "no" if choice == "fp32" else choice


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    info["cpu"] = cpu_name()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


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


def build_optimizer(cfg: Config, model):
    """AdamW with no weight decay on biases and LayerNorm, or PEFT's LoRA+ optimizer."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    kw = dict(lr=cfg.train.learning_rate, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps)
    if cfg.optimizer.name == "loraplus":
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model=model, optimizer_cls=torch.optim.AdamW, lr=cfg.train.learning_rate,
            loraplus_lr_ratio=cfg.optimizer.loraplus_lr_ratio, weight_decay=cfg.train.weight_decay,
            betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps)
    groups = [
        {"params": [p for n, p in params if not _no_decay(n)], "weight_decay": cfg.train.weight_decay},
        {"params": [p for n, p in params if _no_decay(n)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # foreach is the fast multi-tensor path on CPU and GPU; fused exists only on accelerators
    return torch.optim.AdamW(groups, foreach=True, **kw)


def build_scheduler(cfg: Config, optimizer, total_steps: int):
    from transformers import get_scheduler

    warmup = cfg.train.warmup_steps if cfg.train.warmup_steps is not None else int(math.ceil(cfg.train.warmup_ratio * total_steps))
    return get_scheduler(cfg.train.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps), warmup


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise RunError(f"checkpoint does not match this model (unknown parameter {missing[0]}); was the config changed?")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


# ------------------------------------------------------------------------------------------ checkpoints


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(run: Path, step: int, model, optimizer, scheduler, state: dict) -> Path:
    """A complete checkpoint or none: files go to a temp folder, a manifest with checksums is written last."""
    from safetensors.torch import save_file

    target = run / runs.CHECKPOINTS / f"step-{step}"
    with runs.atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({
            "torch": torch.get_rng_state(),
            "numpy": [np.random.get_state()[0], torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                      *np.random.get_state()[2:]],
            "python": random.getstate(),
            # dropout on a GPU draws from the CUDA generators, not the CPU one
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
        }, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        manifest = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        (tmp / runs.COMPLETE).write_text(json.dumps(manifest, indent=2))
    return target


def verify_checkpoint(ckpt: Path) -> bool:
    try:
        manifest = json.loads((ckpt / runs.COMPLETE).read_text())
        for name, meta in manifest.items():
            p = ckpt / name
            if not p.is_file() or p.stat().st_size != meta["size"] or _sha256(p) != meta["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def newest_valid_checkpoint(run: Path, log=print) -> Optional[Path]:
    for ckpt in reversed(runs.checkpoint_dirs(run)):
        if verify_checkpoint(ckpt):
            return ckpt
        log(f"skipping damaged checkpoint {ckpt.name} (checksum mismatch)")
    return None


def load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from a checkpoint; returns its state.json.

    Weights are safetensors; the .pt files are read with weights_only=True, which refuses any pickle that would
    build arbitrary objects (run code) instead of tensors and plain containers.
    """
    from safetensors.torch import load_file

    try:
        trainable = load_file(str(ckpt / "trainable.safetensors"))
        opt_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
        sched_state = torch.load(ckpt / "scheduler.pt", weights_only=True)
        rng = torch.load(ckpt / "rng.pt", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for an unsafe file, safetensors' own error for a damaged one
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RunError(f"cannot load checkpoint {ckpt} safely ({type(e).__name__}: {first}); delete that "
                       f"step-N folder to resume from an older checkpoint, or start the run again") from None
    load_trainable_state(model, trainable)
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "state.json").read_text())


# ------------------------------------------------------------------------------------------ the loop


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    params: dict
    history: list = field(default_factory=list)


class _Stop(Exception):
    pass


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during training, after a checkpoint was saved; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(signal.Signals(signum).name)


def _loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    logits = logits.float()
    if "soft_labels" in batch:
        per = -(batch["soft_labels"] * torch.log_softmax(logits, -1)).sum(-1)
    else:
        per = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
    if "weight" in batch:
        return (per * batch["weight"]).sum() / batch["weight"].sum().clamp_min(1e-12)
    return per.mean()


def prepare(cfg: Config, log=print, splits=None):
    """Setup that can fail on bad input: data, budget, model. Nothing is written to disk here."""
    from . import budget as budget_mod

    if cfg.augment.enabled:
        from .augment import Augmenter

        Augmenter(cfg.augment)  # all-zero rates or a missing WordNet fail here, before data, model or run folder
    if splits is None:
        splits = data_mod.load_splits(cfg.data, log=log)
    cfg = budget_mod.enforce(cfg, len(splits.id2label), log=log)
    model, tokenizer = model_mod.build_model(cfg, splits.id2label)
    params = model_mod.param_breakdown(model)
    cap = cfg.budget.max_trainable_params
    if cap is not None and params["trainable"] > cap:
        raise BudgetError(f"the adapter has {params['trainable']:,} trainable parameters, over "
                          f"budget.max_trainable_params={cap:,}; lower adapter.r or use adapter.r=auto")
    return cfg, splits, model, tokenizer, params


def train(cfg: Config, resume: Optional[str | Path] = None, quiet: bool = False, splits=None,
          run_dir: Optional[Path] = None, on_eval: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """Fine-tune as configured and write a complete run folder. Returns its path and final metrics.

    resume: a run folder to continue from its newest complete checkpoint.
    on_eval: called after every evaluation with (step, metrics); raising optuna.TrialPruned there stops the run.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from accelerate.utils import ProjectConfiguration

    started = time.time()
    precision = resolve_precision(cfg.train.mixed_precision)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    resume_dir = Path(resume) if resume else None
    if resume_dir is not None and not resume_dir.is_dir():
        raise RunError(f"cannot resume: run folder {resume_dir} not found")
    # the path is decided (and a clash refused) now; the folder is created only after setup succeeds
    run = resume_dir or run_dir or runs.new_run_dir(cfg.output.dir, cfg.output.run_name or default_run_name(cfg), cfg.output.overwrite)
    _fresh_accelerate_state()
    # cpu=True is what makes Accelerate pick DDP over gloo when torchrun/accelerate launch start several CPU processes
    accelerator = Accelerator(cpu=not (torch.cuda.is_available() or _has_other_accelerator()), mixed_precision=precision, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                              log_with=list(cfg.track) or None,
                              project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "tensorboard")),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    main = accelerator.is_main_process
    say = (lambda m: log_line(m, quiet)) if main else (lambda m: None)

    # ---------------------------------------------------------------- setup (fails before writing anything)
    if resume_dir is not None:
        saved = runs.read_json(resume_dir / runs.LABEL_MAP)
        id2label = {int(k): v for k, v in saved["id2label"].items()}
        splits = splits or data_mod.load_splits(cfg.data, log=say, id2label=id2label)
    set_seed(cfg.train.seed)
    cfg, splits, model, tokenizer, params = prepare(cfg, log=say, splits=splits)
    say(model_mod.format_breakdown(params))

    train_raw = splits.train
    if cfg.augment.enabled:
        # per_epoch draws epoch 0's copies here too (the same seed the loop would use), so that the epoch length
        # and the step count include the copies
        train_raw = _augmented(train_raw, cfg, cfg.train.seed, say)
    # a stream (data.streaming) is tokenized as the loop reads it, pass by pass (data_mod.stream_loader)
    train_ds = None if cfg.data.streaming else data_mod.tokenize(train_raw, tokenizer, cfg.data, cache=True)
    val_ds = data_mod.tokenize(splits.validation, tokenizer, cfg.data, cache=True)
    test_ds = data_mod.tokenize(splits.test, tokenizer, cfg.data, cache=True) if splits.test is not None else None
    for extra in ("weight", "soft_labels"):
        if train_ds is not None and extra in train_raw.column_names:
            train_ds = train_ds.add_column(extra, train_raw[extra])

    n_proc = accelerator.num_processes
    bs = cfg.train.per_device_train_batch_size
    accum = cfg.train.gradient_accumulation_steps
    # a stream has no length: the config checks made train.max_steps and eval.eval_steps required for it
    per_epoch = None if train_ds is None else data_mod.steps_per_epoch(len(train_ds), bs, accum, n_proc)
    total_steps = cfg.train.max_steps or int(math.ceil(per_epoch * cfg.train.num_train_epochs))
    if hasattr(model, "loraclf_set_total_steps"):  # AdaLoRA schedules its rank budget over all steps
        model.loraclf_set_total_steps(total_steps)
    eval_every = cfg.eval.eval_steps or per_epoch
    save_every = cfg.output.save_steps or eval_every
    effective_batch = bs * n_proc * accum

    optimizer = build_optimizer(cfg, model)
    scheduler, warmup = build_scheduler(cfg, optimizer, total_steps)
    # the scheduler is stepped by hand once per optimizer step; Accelerate's wrapper would step it once per process
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    hook = getattr(unwrapped, "loraclf_after_step", None)  # e.g. AdaLoRA's update_and_allocate
    regularizer = getattr(unwrapped, "loraclf_regularizer", None)  # e.g. AdaLoRA's orthogonality penalty

    # ---------------------------------------------------------------- the run folder exists from here on
    if resume_dir is None:
        if main:
            # the run folder appears whole (config, label map, params) or not at all, so a kill here
            # leaves nothing that --resume would half-read; overwrite replaces an old folder in the same rename
            with runs.atomic_dir(run) as tmp:
                runs.atomic_write_text(tmp / runs.CONFIG, cfg.to_yaml())
                runs.write_json(tmp / runs.LABEL_MAP, {"id2label": {str(k): v for k, v in splits.id2label.items()},
                                                       "label2id": {v: k for k, v in splits.id2label.items()},
                                                       "int_labels": splits.int_labels})
                runs.write_json(tmp / runs.PARAMS, params)
    accelerator.wait_for_everyone()
    say(f"run folder: {run.resolve()}")
    files = [f"{k}={getattr(cfg.data, k)}" for k in ("train", "validation", "test") if getattr(cfg.data, k)]
    say("data: " + (", ".join(files) if files else str(cfg.data.name)) + f"; model: {cfg.model.name_or_path}")
    say(("streamed" if train_ds is None else f"{len(train_ds):,}") + f" train / {len(val_ds):,} val"
        + (f" / {len(test_ds):,} test" if test_ds is not None else "")
        + f" rows; {total_steps} steps ({per_epoch or 'unknown'}/epoch), warm-up {warmup}, effective batch "
          f"{effective_batch} ({bs} x {n_proc} process(es) x {accum} accumulation), precision {precision}")

    trackers = _start_trackers(accelerator, cfg, run) if main and cfg.track else []

    # everything the loop needs to continue exactly where it stopped, saved in each checkpoint's state.json
    # (window_*: the running train-loss average between two log lines, so a resumed log line equals the original)
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "samples_in_epoch": 0, "best_metric": None, "best_step": None,
             "bad_evals": 0, "train_time": 0.0, "stopped_early": False, "window_loss": 0.0, "window_n": 0}
    if resume_dir is not None:
        if main:
            runs.remove_temp_files(run)  # leftovers of writes cut short by a kill
        ckpt = newest_valid_checkpoint(run, log=say)
        if ckpt is None:
            say("no complete checkpoint found; starting from step 0")
        else:
            state.update(load_checkpoint(ckpt, unwrapped, optimizer, scheduler))
            if hasattr(unwrapped, "loraclf_after_resume"):  # e.g. AdaLoRA: restore its final rank pattern
                unwrapped.loraclf_after_resume(state["step"])
            say(f"resumed from {ckpt.name}: step {state['step']}, epoch {state['epoch']}")
    history_path = run / runs.HISTORY
    if resume_dir is not None and main and history_path.exists():
        # drop records past the checkpoint we resumed from, so the history has no duplicates
        kept = [r for r in runs.read_jsonl(history_path) if r.get("step", 0) <= state["step"]]
        runs.atomic_write_text(history_path, "".join(json.dumps(r) + "\n" for r in kept))

    metric_name = cfg.eval.metric_for_best_model
    lower_better = metric_name in LOWER_IS_BETTER
    val_loader = accelerator.prepare(data_mod.eval_loader(val_ds, tokenizer, cfg.eval.per_device_eval_batch_size))

    def evaluate_val(step: int, epoch: float) -> dict:
        _, probs, labels = predict_probs(model, val_loader, accelerator)
        m = compute_metrics(labels, probs, splits.id2label)
        rec = {"type": "eval", "split": "val", "step": step, "epoch": round(epoch, 4), "loss": m["loss"],
               "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "time": round(state["train_time"], 3)}
        if main:
            runs.append_jsonl(history_path, rec)
            if trackers:
                accelerator.log({"eval/loss": m["loss"], "eval/accuracy": m["accuracy"], "eval/macro_f1": m["macro_f1"]}, step=step)
        say(f"eval step {step}: val loss {m['loss']:.4f} | accuracy {m['accuracy']:.4f} | macro-F1 {m['macro_f1']:.4f}")
        model.train()
        return m

    # ---------------------------------------------------------------- train
    # "received": a signal this process got; "signal": the one acted on, the same in every process and taken
    # only at a step boundary (a process may get its signal in the middle of a collective, another one not at all)
    stop = {"signal": None, "received": None}

    def on_signal(signum, frame):
        if stop["received"] is not None:  # a second signal: stop now; the newest complete checkpoint stays valid
            raise Interrupted(signum)
        stop["received"] = signum

    old_handlers = {}
    for s in (signal.SIGINT, signal.SIGTERM):  # in every process: Ctrl-C reaches the whole process group
        try:
            old_handlers[s] = signal.signal(s, on_signal)
        except ValueError:  # not the main thread (e.g. inside a server)
            pass

    progress = _progress(total_steps, state["step"], quiet or not main)
    model.train()
    window_samples, window_start = 0, time.time()
    tick = time.time()
    try:
        while state["step"] < total_steps and not state["stopped_early"]:
            epoch = state["epoch"]
            epoch_raw = train_raw
            epoch_ds = train_ds
            if cfg.augment.enabled and cfg.augment.mode == "per_epoch" and epoch > 0:
                epoch_raw = _augmented(splits.train, cfg, cfg.train.seed + epoch, say)
                epoch_ds = data_mod.tokenize(epoch_raw, tokenizer, cfg.data, cache=False)
                for extra in ("weight", "soft_labels"):
                    if extra in epoch_raw.column_names:
                        epoch_ds = epoch_ds.add_column(extra, epoch_raw[extra])
            if cfg.data.streaming:
                # the pass is rebuilt past the rows already trained on; its length is unknown (n_batches None)
                loader = data_mod.stream_loader(train_raw, tokenizer, cfg.data, splits.id2label, bs, cfg.train.seed,
                                                epoch, skip=state["samples_in_epoch"])
                state["batches_in_epoch"] = state["samples_in_epoch"] // (bs * n_proc)
                n_batches = None
            else:
                loader = data_mod.train_loader(epoch_ds, tokenizer, bs, cfg.data.group_by_length, cfg.train.seed, epoch,
                                               group_size=bs * n_proc)
                loader = accelerator.prepare(loader)
                # the data position is kept in samples, so a checkpoint written by N processes resumes in M
                skip = state.get("samples_in_epoch", 0) // (bs * n_proc) if "samples_in_epoch" in state else state["batches_in_epoch"]
                state["batches_in_epoch"] = skip
                if skip:
                    loader = accelerator.skip_first_batches(loader, skip)
                n_batches = len(loader) + skip
            samples_at_start = state["samples_in_epoch"]
            for batch in loader:
                with accelerator.accumulate(model):
                    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                    with accelerator.autocast():
                        logits = model(**inputs).logits
                    loss = _loss(logits, batch)
                    if regularizer is not None:
                        loss = loss + regularizer()
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.train.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                        if hook is not None:  # it reads the gradients, so before zero_grad (PEFT's AdaLoRA docs)
                            hook(state["step"] + 1)
                    optimizer.zero_grad(set_to_none=True)
                state["batches_in_epoch"] += 1
                if n_batches is None:  # a stream is resumed by rows, which stay exact if the global batch changes
                    state["samples_in_epoch"] += bs * n_proc
                else:
                    state["samples_in_epoch"] = state["batches_in_epoch"] * bs * n_proc
                state["window_loss"] += loss.detach().float().item()
                state["window_n"] += 1
                window_samples += batch["input_ids"].shape[0] * n_proc
                if not accelerator.sync_gradients:
                    continue
                state["step"] += 1
                step = state["step"]
                at_epoch = epoch + state["batches_in_epoch"] / n_batches if n_batches else epoch
                if n_proc > 1:  # all processes stop (and checkpoint together) at the same step, whichever got the signal
                    flag = torch.tensor([stop["received"] or 0], device=accelerator.device)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                    stop["signal"] = int(flag.item()) or None
                else:
                    stop["signal"] = stop["received"]
                now = time.time()
                state["train_time"] += now - tick
                tick = now
                progress.update(1)
                if step % cfg.train.logging_steps == 0 or step == total_steps:
                    elapsed = max(time.time() - window_start, 1e-9)
                    local = torch.tensor(state["window_loss"] / max(state["window_n"], 1), device=accelerator.device)
                    window_mean = accelerator.reduce(local, reduction="mean").item()  # every process's batches
                    rec = {"type": "train", "step": step, "epoch": round(at_epoch, 4),
                           "loss": window_mean, "learning_rate": scheduler.get_last_lr()[0],
                           "samples_per_second": window_samples / elapsed, "time": round(state["train_time"], 3)}
                    if main:
                        runs.append_jsonl(history_path, rec)
                        if trackers:
                            accelerator.log({"train/loss": rec["loss"], "train/learning_rate": rec["learning_rate"],
                                             "train/samples_per_second": rec["samples_per_second"]}, step=step)
                    say(f"step {step}/{total_steps} | epoch {rec['epoch']:.2f} | loss {rec['loss']:.4f} | "
                        f"lr {rec['learning_rate']:.3e} | {rec['samples_per_second']:.1f} samples/s")
                    state["window_loss"], state["window_n"], window_samples, window_start = 0.0, 0, 0, time.time()
                is_eval = step % eval_every == 0 or step == total_steps
                if is_eval:
                    m = evaluate_val(step, at_epoch)
                    value = m[metric_name]
                    better = state["best_metric"] is None or (value < state["best_metric"] if lower_better else value > state["best_metric"])
                    if better:
                        state["best_metric"], state["best_step"], state["bad_evals"] = value, step, 0
                    else:
                        state["bad_evals"] += 1
                        if cfg.eval.early_stopping_patience and state["bad_evals"] >= cfg.eval.early_stopping_patience:
                            state["stopped_early"] = True
                            say(f"early stopping at step {step}: no {metric_name} improvement in {state['bad_evals']} evaluations")
                    if on_eval is not None:
                        on_eval(step, m)
                    tick = time.time()  # evaluation time is not training time
                if step % save_every == 0 or is_eval or step == total_steps or state["stopped_early"] or stop["signal"]:
                    _checkpoint(accelerator, run, step, unwrapped, optimizer, scheduler, state, cfg)
                if stop["signal"]:
                    raise _Stop()
                if step >= total_steps or state["stopped_early"]:
                    break
            else:  # the epoch ran out
                if state["samples_in_epoch"] == samples_at_start == 0:  # an empty pass would repeat forever
                    raise DataError(f"the training data gave no batch of {bs * n_proc} rows (per-device batch x "
                                    f"processes); give more rows or lower train.per_device_train_batch_size")
                state["epoch"] += 1
                state["batches_in_epoch"] = 0
                state["samples_in_epoch"] = 0
    except _Stop:
        progress.close()
        name = signal.Signals(stop["signal"]).name
        say(f"{name} received: saved checkpoint step-{state['step']} in {run}; continue with "
            f"`loraclf train --resume {run}`")
        _end_trackers(accelerator, trackers)
        raise Interrupted(stop["signal"]) from None
    except DataError as e:
        progress.close()
        _end_trackers(accelerator, trackers)
        if cfg.data.streaming:  # a bad row met mid-stream
            raise _bad_stream_row(e, run, fresh=resume_dir is None, main=main) from None
        raise
    except BaseException:  # e.g. optuna.TrialPruned from on_eval: close trackers so the next run can start its own
        progress.close()
        _end_trackers(accelerator, trackers)
        raise
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    progress.close()

    # ---------------------------------------------------------------- cleanup: best weights -> artifacts
    best = run / runs.CHECKPOINTS / f"step-{state['best_step']}" if state["best_step"] else None
    if best is not None and best.is_dir():
        from safetensors.torch import load_file

        load_trainable_state(unwrapped, load_file(str(best / "trainable.safetensors")))
        if hasattr(unwrapped, "loraclf_finalize"):  # e.g. AdaLoRA: apply its final rank mask to the restored weights
            unwrapped.loraclf_finalize()
    _, val_probs, val_labels = predict_probs(model, val_loader, accelerator)
    metrics = {"val": compute_metrics(val_labels, val_probs, splits.id2label)}
    if test_ds is not None:
        test_loader = accelerator.prepare(data_mod.eval_loader(test_ds, tokenizer, cfg.eval.per_device_eval_batch_size))
        _, test_probs, test_labels = predict_probs(model, test_loader, accelerator)
        metrics["test"] = compute_metrics(test_labels, test_probs, splits.id2label)
    metrics.update({
        "best_step": state["best_step"], "best_metric": state["best_metric"], "metric_for_best_model": metric_name,
        "global_step": state["step"], "stopped_early": state["stopped_early"],
        "train_runtime_s": round(state["train_time"], 2), "wall_time_s": round(time.time() - started, 2),
        "train_samples_per_second": round(state["step"] * effective_batch / max(state["train_time"], 1e-9), 2),
        "effective_batch_size": effective_batch, "num_processes": n_proc, "precision": precision,
        "trainable_params": params["trainable"], "hardware": hardware(),
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    })
    if hasattr(unwrapped, "loraclf_final_report"):
        metrics["adapter_report"] = unwrapped.loraclf_final_report()
    if main:
        model_mod.save_adapter(unwrapped, tokenizer, run / runs.ADAPTER)
        _write_val_predictions(run, splits, val_probs, val_labels)
        runs.write_json(run / runs.METRICS, metrics)
        runs.prune_checkpoints(run, cfg.output.save_total_limit, best)
    _end_trackers(accelerator, trackers)
    accelerator.wait_for_everyone()
    say(_summary(metrics))
    if main and cfg.output.report:
        from . import report

        say(f"report: {report.write_report(run)}")
    say(f"outputs in {run}: adapter/ (PEFT), metrics.json, history.jsonl, val_predictions.csv")
    return TrainResult(run, metrics, params, runs.read_jsonl(history_path))


def _summary(metrics: dict) -> str:
    s = f"best step {metrics['best_step']}: val accuracy {metrics['val']['accuracy']:.4f}, macro-F1 {metrics['val']['macro_f1']:.4f}"
    if "test" in metrics:
        s += f"; test accuracy {metrics['test']['accuracy']:.4f}, macro-F1 {metrics['test']['macro_f1']:.4f}"
    return s + f"; trained {metrics['train_runtime_s']:.0f} s"


def _bad_stream_row(err: DataError, run: Path, fresh: bool, main: bool) -> DataError:
    """The error for a bad row met mid-stream. Before the first checkpoint there is nothing to resume, so a new run's
    folder is removed; after it the folder stays, to be resumed once the data is fixed."""
    if fresh and not runs.checkpoint_dirs(run):
        if main:
            shutil.rmtree(run, ignore_errors=True)
        return DataError(f"{err}; no run folder was kept")
    return DataError(f"{err}; {run} keeps its checkpoints: fix the data, then `loraclf train --resume {run}`")


def _checkpoint(accelerator, run, step, model, optimizer, scheduler, state, cfg):
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(run, step, model, optimizer, scheduler, dict(state))
        best = run / runs.CHECKPOINTS / f"step-{state['best_step']}" if state["best_step"] else None
        runs.prune_checkpoints(run, cfg.output.save_total_limit, best)
    accelerator.wait_for_everyone()


def _write_val_predictions(run: Path, splits, probs: np.ndarray, labels: np.ndarray) -> None:
    import pandas as pd

    id2label = splits.id2label
    pred = probs.argmax(-1)
    df = pd.DataFrame({
        "text": splits.validation["text"],
        "label": [id2label[int(i)] for i in labels],
        "predicted": [id2label[int(i)] for i in pred],
        "confidence": probs.max(-1).round(6),
    })
    runs.atomic_write_text(run / runs.VAL_PREDICTIONS, df.to_csv(index=False))


def _augmented(ds, cfg: Config, seed: int, say):
    import datasets

    from . import augment

    # rows are tracked by index so per-row columns (weight, soft_labels of pseudo-labels) follow their copies
    texts, rows = augment.augment_dataset(list(ds["text"]), list(range(len(ds))), cfg.augment, seed)
    say(f"augmentation: {len(ds):,} -> {len(texts):,} training rows")
    out = {"text": texts}
    for col in ds.column_names:
        if col != "text":
            values = ds[col]
            out[col] = [values[i] for i in rows]
    return datasets.Dataset.from_dict(out)


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                disable=disable or not sys.stderr.isatty(), leave=False)


TRACKING = "tracking.json"  # where the trackers wrote: MLflow tracking URI + run id, TensorBoard folder


def _mlflow_uri(cfg: Config, run: Path) -> str:
    """output.mlflow_tracking_uri, else $MLFLOW_TRACKING_URI, else a SQLite store in the run folder.

    Not a plain ./mlruns file store: MLflow 3 refuses those unless MLFLOW_ALLOW_FILE_STORE=true.
    """
    return (cfg.output.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(run / 'mlflow.db').resolve()}")


def _start_trackers(accelerator, cfg: Config, run: Path) -> list:
    """Start Accelerate's trackers (TensorBoard in RUN/tensorboard, MLflow) and record where they write."""
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(cfg.to_dict()).items()}
    fresh = not (run / runs.HISTORY).exists() and not runs.checkpoint_dirs(run)
    saved = runs.read_json(run / TRACKING) if (run / TRACKING).is_file() else {}
    init_kwargs, record = {}, {}
    if "tensorboard" in cfg.track:
        record["tensorboard"] = {"logging_dir": str((run / "tensorboard" / "loraclf").resolve())}
    if "mlflow" in cfg.track:
        import mlflow

        uri = _mlflow_uri(cfg, run)
        user_env = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        # set_tracking_uri also exports $MLFLOW_TRACKING_URI; put the user's value back, or the next run in this
        # process (a sweep trial) would take this run's store for the user's choice
        if user_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_env
        active = mlflow.active_run()
        if active is not None and "loraclf.run_dir" in active.data.tags:
            mlflow.end_run("FAILED")  # left running by an earlier train() in this process that raised (e.g. pruned)
        kw = {"run_name": run.name, "tags": {"loraclf.run_dir": str(run.resolve())},
              "nested_run": mlflow.active_run() is not None}
        if uri == f"sqlite:///{(run / 'mlflow.db').resolve()}":
            kw["logging_dir"] = str((run / "mlflow-artifacts").resolve())  # else artifacts default to ./mlruns in the cwd
        if saved.get("mlflow", {}).get("tracking_uri") == uri and saved["mlflow"].get("run_id"):
            kw["run_id"] = saved["mlflow"]["run_id"]  # --resume continues the same MLflow run
        init_kwargs["mlflow"] = kw
    try:
        accelerator.init_trackers("loraclf", config=flat, init_kwargs=init_kwargs)
    except Exception as e:  # a bad tracking URI, an unreachable server, a locked store...
        if fresh:
            shutil.rmtree(run, ignore_errors=True)  # nothing trained yet: leave no half-written run folder
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunError(f"could not start the trackers {list(cfg.track)}: {first[:300]}") from None
    if "mlflow" in cfg.track:
        active = accelerator.get_tracker("mlflow", unwrap=True)
        record["mlflow"] = {"tracking_uri": uri, "run_id": active.info.run_id, "experiment_id": active.info.experiment_id}
    runs.write_json(run / TRACKING, record)
    return list(cfg.track)


def _end_trackers(accelerator, trackers) -> None:
    if trackers:
        accelerator.end_training()
