"""Resumable checkpoints: save (atomic, with a checksum manifest written last), verify, find, load.

Hand-written rather than Accelerate's save_state/load_state: those write in place with no manifest, so a kill
mid-save leaves a checkpoint that looks whole, and they load pickles without weights_only (docs/guarantees.md).
The trainable state is every parameter with a gradient, by name, rather than PEFT's get_peft_model_state_dict:
that one renames keys and cuts AdaLoRA's matrices to its rank pattern, while a resume must restore each tensor
the optimizer holds exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .. import runs
from ..base.errors import RunError


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


RESUME_HINT = ("on --resume only keys that keep the trainable shape may change (train.*, eval.*, output.*, track); "
               "model.* and adapter.* must stay as the run's config.yaml has them")


def _mismatch(model, state: dict[str, torch.Tensor]) -> Optional[str]:
    """What differs between a checkpoint's trainable tensors and this model's, or None."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown = [n for n in state if n not in params]
    if unknown:
        return f"it has a parameter this model lacks ({unknown[0]})"
    missing = [n for n in params if n not in state]
    if missing:
        return f"this model has a trainable parameter the checkpoint lacks ({missing[0]})"
    for n, t in state.items():
        if tuple(t.shape) != tuple(params[n].shape):
            return (f"{n} is {' x '.join(map(str, t.shape))} in the checkpoint but "
                    f"{' x '.join(map(str, params[n].shape))} in this model")
    return None


def load_trainable_state(model, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Copy a checkpoint's trainable tensors into the model, after checking that every name and shape matches."""
    problem = _mismatch(model, state)
    if problem:
        raise RunError(f"{where} does not match this model: {problem}; {RESUME_HINT}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
        # dropout on a GPU draws from the CUDA generators, not the CPU one
        **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
    }


def save_checkpoint(run: Path, step: int, model, optimizer, scheduler, state: dict) -> Path:
    """A complete checkpoint or none: files go to a temp folder, a manifest with checksums is written last."""
    from safetensors.torch import save_file

    target = step_dir(run, step)
    with runs.atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / runs.CKPT_WEIGHTS))
        torch.save(optimizer.state_dict(), tmp / runs.CKPT_OPTIMIZER)
        torch.save(scheduler.state_dict(), tmp / runs.CKPT_SCHEDULER)
        torch.save(_rng_state(), tmp / runs.CKPT_RNG)
        (tmp / runs.CKPT_STATE).write_text(json.dumps(state, indent=2))
        manifest = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        (tmp / runs.COMPLETE).write_text(json.dumps(manifest, indent=2))
    return target


def step_dir(run: Path, step: Optional[int]) -> Optional[Path]:
    """RUN/checkpoints/step-N (None for no step)."""
    return run / runs.CHECKPOINTS / f"step-{step}" if step else None


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


def newest_valid_checkpoint(run: Path, log: Callable[[str], None] = print) -> Optional[Path]:
    for ckpt in reversed(runs.checkpoint_dirs(run)):
        if verify_checkpoint(ckpt):
            return ckpt
        log(f"skipping damaged checkpoint {ckpt.name} (checksum mismatch)")
    return None


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from a checkpoint; returns its state.json.

    Weights are safetensors; the .pt files are read with weights_only=True, which refuses any pickle that would
    build arbitrary objects (run code) instead of tensors and plain containers.
    """
    from safetensors.torch import load_file

    try:
        trainable = load_file(str(ckpt / runs.CKPT_WEIGHTS))
        opt_state = torch.load(ckpt / runs.CKPT_OPTIMIZER, weights_only=True)
        sched_state = torch.load(ckpt / runs.CKPT_SCHEDULER, weights_only=True)
        rng = torch.load(ckpt / runs.CKPT_RNG, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for an unsafe file, safetensors' own error for a damaged one
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RunError(f"cannot load checkpoint {ckpt} safely ({type(e).__name__}: {first}); delete that "
                       f"step-N folder to resume from an older checkpoint, or start the run again") from None
    state = read_state(ckpt)  # checked before anything is restored
    load_trainable_state(model, trainable, f"checkpoint {ckpt.name}")
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    _set_rng_state(rng)
    return state


STATE_TYPES = {"step": int, "epoch": int, "batches_in_epoch": int, "samples_in_epoch": int,
               "best_metric": (int, float, type(None)), "best_step": (int, type(None)), "bad_evals": int,
               "train_time": (int, float), "stopped_early": bool, "window_loss": (int, float), "window_n": int}


def read_state(ckpt: Path) -> dict:
    """A checkpoint's state.json, shape-checked (its checksum only says the file is the one that was written)."""
    path = ckpt / runs.CKPT_STATE
    state = runs.read_json_object(path, {"step": int})
    for key, types in STATE_TYPES.items():
        value = state.get(key)
        if key in state and (not isinstance(value, types) or (isinstance(value, bool) and types is not bool)):
            raise runs.damaged(path, f"'{key}' is {type(value).__name__}")
    return state


def load_weights(ckpt: Path, model) -> None:
    """Only the trainable weights of a checkpoint (the best one, at the end of training)."""
    from safetensors.torch import load_file

    load_trainable_state(model, load_file(str(ckpt / runs.CKPT_WEIGHTS)))
