"""Many runs served on one base: each distinct base model is loaded once and every run's adapter is attached to it
under the run's name (PEFT multi-adapter), each with its own trained head and label map.

Heads of runs with different label counts differ in shape: the adapter's copy of each head Linear is replaced by
one of the saved shape before its weights are loaded. Runs of different problem types (and sentence-pair runs) share
a base too: each adapter keeps its run's decision (problem type, temperature, thresholds, target scaling) and data
section (pairs, long-text windows). Inference goes through `infer.forward.predict_texts` with the adapter made active by
`AdapterSet.use`, which holds a lock so one forward pass never runs under another's adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import torch

from ..base import logs, sources
from ..model import methods
from .. import task as problem, runs
from .. import model as model_mod
from ..config import Config, DataConfig
from ..base.errors import ModelError, RunError, first_line

if TYPE_CHECKING:  # annotations only
    from transformers import PreTrainedTokenizerBase

logger = logs.get(__name__)


@dataclass
class Adapter:
    """One run attached to a shared base: its name, labels, tokenizer, the PeftModel that holds it, and how its
    inputs are read (data) and its logits become outputs (decision)."""

    name: str
    run: runs.Run
    id2label: dict[int, str]
    max_length: int
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    data: DataConfig = field(default_factory=DataConfig)
    decision: problem.Decision = field(default_factory=problem.Decision)


@dataclass
class AdapterSet:
    """Runs by name, on as few base models as their configs allow."""

    adapters: dict[str, Adapter]
    bases: int  # base models loaded
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Adapter]:
        """The adapter `name`, active on its base for the duration of the block."""
        a = self.adapters[name]
        with self.lock:
            a.model.set_adapter(name)
            yield a


def collect_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders from the command line: each path is a run, or a folder whose sub-folders are runs.

    Names (the folder names) must be distinct: they are the names requests use.
    """
    found: list[Path] = []
    for p in (Path(x).resolve() for x in paths):
        if not p.is_dir():
            raise RunError(f"run folder not found: {p} (give run folders, or a folder of runs)")
        if (p / runs.CONFIG).is_file() or runs.is_export_dir(p):
            found.append(p)
            continue
        subs = sorted(s for s in p.iterdir() if s.is_dir() and (s / runs.CONFIG).is_file())
        if not subs:
            raise RunError(f"{p} is neither a run folder nor a folder of runs (no sub-folder holds a {runs.CONFIG})")
        found.extend(subs)
    names: dict[str, Path] = {}
    for p in found:
        if p.name in names:
            raise RunError(f"two runs are named '{p.name}' ({names[p.name]} and {p}); a model's name is its folder "
                           f"name, so rename one")
        names[p.name] = p
    return found


def _base_key(cfg: Config, adapter_dir: Path) -> tuple:
    from peft import PeftConfig

    peft_type = PeftConfig.from_pretrained(str(adapter_dir)).peft_type
    # PEFT keeps one tuner type per model: runs of different methods need their own copy of the base
    return sources.resolve_model(cfg.model.name_or_path), cfg.model.revision, str(peft_type)


def _folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _resize_heads(model, name: str, state: dict) -> None:
    """Give the adapter's head copies (PEFT modules_to_save) the saved shapes, so heads of any label count load."""
    from peft.utils import ModulesToSaveWrapper

    for path, wrapper in model.named_modules():
        if not isinstance(wrapper, ModulesToSaveWrapper) or name not in wrapper.modules_to_save:
            continue
        copy = wrapper.modules_to_save[name]
        for sub, mod in list(copy.named_modules()):
            saved = state.get(f"{path}.{sub}.weight" if sub else f"{path}.weight")
            if not isinstance(mod, torch.nn.Linear) or saved is None or saved.shape == mod.weight.shape:
                continue
            new = torch.nn.Linear(saved.shape[1], saved.shape[0], bias=mod.bias is not None,
                                  dtype=mod.weight.dtype, device=mod.weight.device)
            if sub:
                copy.set_submodule(sub, new)
            else:
                wrapper.modules_to_save[name] = new


def _attach(model, name: str, adapter_dir: Path) -> None:
    """Add the adapter saved in adapter_dir to a PeftModel under name, head included."""
    from peft import PeftConfig
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    try:
        model.add_adapter(name, PeftConfig.from_pretrained(str(adapter_dir)))
        state = load_peft_weights(str(adapter_dir), device="cpu")
        _resize_heads(model, name, state)
        result = set_peft_model_state_dict(model, state, adapter_name=name)
    except Exception as e:  # PEFT and safetensors raise many types for an adapter that does not fit
        raise ModelError(f"cannot attach the adapter in {adapter_dir} to its base: {first_line(e)[:200]}") from None
    if result.unexpected_keys:
        raise ModelError(f"the adapter in {adapter_dir} does not fit its base: unexpected weights such as "
                         f"{result.unexpected_keys[0]}")


def _load_group(group: list[runs.Run], device: str, tokenizers: dict) -> dict[str, Adapter]:
    """One base model with the adapters of every run in group attached."""
    from peft import PeftModel

    first = group[0]
    path, mc = model_mod.load_model_config(first.config, first.id2label)
    base = model_mod.load_base(first.config, first.id2label, path, mc)
    try:
        with methods.quiet_reload():
            model = PeftModel.from_pretrained(base, str(first.adapter_dir), adapter_name=first.path.name)
    except Exception as e:  # safetensors/peft raise many types for a damaged adapter
        raise ModelError(f"cannot load the adapter in {first.adapter_dir}: {first_line(e)[:200]}") from None
    for run in group[1:]:
        _attach(model, run.path.name, run.adapter_dir)
    model_mod.check_finite(model, ", ".join(str(r.adapter_dir) for r in group))
    model.eval().to(device)
    out = {}
    for run in group:
        tok_dir = run.tokenizer_dir
        key = _folder_digest(tok_dir) if tok_dir.is_dir() else path
        if key not in tokenizers:  # runs of one base share one tokenizer object when their files are the same
            tokenizers[key] = model_mod.load_tokenizer(str(tok_dir) if tok_dir.is_dir() else path, run.config)
        name = run.path.name
        out[name] = Adapter(name, run, run.id2label, run.config.data.max_length, tokenizers[key], model,
                            run.config.data, run.decision)
    return out


def load_adapters(run_dirs: list[runs.Run | str | Path], device: Optional[str] = None) -> AdapterSet:
    """Load each distinct base of the runs once and attach every run's adapter to it, named by its folder."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_mod.quiet_transformers()
    groups: dict[tuple, list[runs.Run]] = {}
    for run in map(runs.as_run, run_dirs):
        groups.setdefault(_base_key(run.config, run.adapter_dir), []).append(run)
    adapters: dict[str, Adapter] = {}
    tokenizers: dict = {}
    for key, group in groups.items():
        adapters.update(_load_group(group, device, tokenizers))
        logger.info(f"serve: {len(group)} adapter(s) on {key[0]} ({key[2]}): "
                    f"{', '.join(r.path.name for r in group)}")
    return AdapterSet(adapters, len(groups))
