"""The frozen-prefix cache (train.prefix_cache): the encoder layers below the lowest adapted one run once per row.

When the embeddings and the lowest L encoder layers carry no trainable parameter (adapter.layers_to_transform adapts
only the top ones), their outputs depend on the input alone once their dropout is off. So the first time a training
row is met, its layer-L hidden states are computed without autograd and in eval mode (no dropout in those layers),
and kept in bf16 per real token: in memory, or memory-mapped from a temporary file past train.prefix_cache_max_mb.
Every step then runs the encoder from layer L on those states (`Cut.top`): the embeddings pass them through and the
layer list holds the top layers only, for the length of that one forward. The backward pass stops at layer L either
way; evaluation, checkpoints and the saved adapter see the whole model, unchanged.

A row's states do not depend on the rows padded beside it (attention masks the padding), so they are stored per
real token and padded again in each batch they come back in.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ...model.architectures import FAMILIES
from ...config import Config
from ...config import prefix_cache_clashes
from ...data.read import column
from ...base.errors import ConfigError, RunError

ROW = "row"  # the training rows' position column, which a batch carries so its rows are found in the cache


class _PassThrough(torch.nn.Module):
    """Stands in for the embeddings while the encoder starts at layer L: it returns the states it is handed as
    inputs_embeds (DistilBERT hands them over second, by position)."""

    def forward(self, *args, inputs_embeds=None, **kwargs):
        return inputs_embeds if inputs_embeds is not None else args[1]


@dataclass
class Cut:
    """Where the encoder is cut: its embeddings and the list of layers it loops over, and the first adapted layer."""

    backbone: torch.nn.Module  # the encoder under the task head (the transformers model's base_model)
    embeddings: str  # attribute of the backbone
    owner: torch.nn.Module  # the module that holds the layer list
    attr: str  # the layer list's attribute there
    layers: torch.nn.ModuleList
    start: int
    hidden: int
    _top: torch.nn.ModuleList = field(init=False)
    _bottom: torch.nn.ModuleList = field(init=False)

    def __post_init__(self) -> None:
        self._top = torch.nn.ModuleList(self.layers[self.start:])
        self._bottom = torch.nn.ModuleList(self.layers[: self.start])

    @contextlib.contextmanager
    def _swapped(self, embeddings: torch.nn.Module, layers: torch.nn.ModuleList):
        old_embeddings = getattr(self.backbone, self.embeddings)
        setattr(self.backbone, self.embeddings, embeddings)
        setattr(self.owner, self.attr, layers)
        try:
            yield
        finally:
            setattr(self.backbone, self.embeddings, old_embeddings)
            setattr(self.owner, self.attr, self.layers)

    def bottom(self):
        """The encoder as the embeddings and layers 0..L-1: its output is layer L's input."""
        return self._swapped(getattr(self.backbone, self.embeddings), self._bottom)

    def top(self):
        """The encoder as layers L..N-1, fed layer L's input as inputs_embeds."""
        return self._swapped(_PassThrough(), self._top)


def _trains(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def find_cut(model) -> tuple[Optional[Cut], str]:
    """The cut of a (PEFT-wrapped) model, or None and why it has none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = base.config.model_type
    fam = FAMILIES.get(model_type)
    if fam is None or fam.layers is None:
        cacheable = ", ".join(k for k, f in FAMILIES.items() if f.layers)
        return None, f"a {model_type} encoder cannot start at an inner layer (it can for {cacheable})"
    backbone = base.base_model
    owner_path, _, attr = fam.layers.rpartition(".")
    owner = backbone.get_submodule(owner_path)
    layers = getattr(owner, attr)
    if _trains(backbone.get_submodule(fam.embeddings)):
        return None, "the embeddings are trained"
    adapted = [i for i, layer in enumerate(layers) if _trains(layer)]
    start = min(adapted) if adapted else len(layers)
    if start == 0:
        return None, ("the lowest encoder layer carries an adapter; set adapter.layers_to_transform to adapt only "
                      "the top layers")
    return Cut(backbone, fam.embeddings, owner, attr, layers, start, int(base.config.hidden_size)), ""


def _mapped(n_tokens: int, hidden: int) -> torch.Tensor:
    """A bf16 [n_tokens, hidden] tensor memory-mapped from a temporary file, which is unlinked at once: the mapping
    keeps it while the run lives, and nothing is left behind however the run ends."""
    fd, path = tempfile.mkstemp(prefix="loraclf-prefix-", suffix=".bin")
    os.close(fd)
    try:
        store = torch.from_file(path, shared=True, size=n_tokens * hidden, dtype=torch.bfloat16)
    finally:
        os.unlink(path)
    return store.view(n_tokens, hidden)


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


class PrefixCache:
    """Layer L's input for every training row, filled the first time each row is met."""

    def __init__(self, cut: Cut, lengths: np.ndarray, max_mb: int):
        self.cut = cut
        lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.filled = np.zeros(len(lengths), dtype=bool)
        n_tokens = int(self.offsets[-1])
        self.megabytes = n_tokens * cut.hidden * 2 / 2**20
        self.mapped = self.megabytes > max_mb
        self.store = (_mapped(n_tokens, cut.hidden) if self.mapped
                      else torch.empty((n_tokens, cut.hidden), dtype=torch.bfloat16))

    def _tokens(self, rows: np.ndarray) -> torch.Tensor:
        """The store's token positions of these rows, row after row."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lens = ends - starts
        before = np.cumsum(lens) - lens
        return torch.from_numpy(np.arange(int(lens.sum())) + np.repeat(starts - before, lens))

    def _fill(self, inputs: dict, rows: np.ndarray, new: np.ndarray, real: torch.Tensor) -> None:
        cut = self.cut
        with torch.no_grad(), _eval_mode(cut.backbone), cut.bottom():
            states = cut.backbone(**inputs).last_hidden_state
        pick = torch.from_numpy(new).to(real.device)
        self.store[self._tokens(rows[new])] = states[pick][real[pick]].to("cpu", torch.bfloat16)
        self.filled[rows[new]] = True

    def states(self, inputs: dict, rows: np.ndarray) -> torch.Tensor:
        """Layer L's input for a batch, [rows, length, hidden] in float32, zero at the padding."""
        real = inputs["attention_mask"].bool()
        rows = np.asarray(rows, dtype=np.int64)
        if int(real.sum()) != int((self.offsets[rows + 1] - self.offsets[rows]).sum()):
            raise RunError("train.prefix_cache: a batch's token counts differ from the tokenized rows'; set "
                           "train.prefix_cache=false and report this")
        new = ~self.filled[rows]
        if new.any():
            self._fill(inputs, rows, new, real)
        out = torch.zeros((*real.shape, self.cut.hidden), dtype=torch.float32, device=real.device)
        out[real] = self.store[self._tokens(rows)].to(real.device, torch.float32)
        return out

    def logits(self, model, inputs: dict, rows) -> torch.Tensor:
        """The task model's logits for a batch, the encoder started at layer L. `model` is the one the loop calls
        (wrapped for several processes), whose inner encoder is this cache's."""
        states = self.states(inputs, rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows)
        with self.cut.top():
            return model(inputs_embeds=states, attention_mask=inputs["attention_mask"]).logits


def build(cfg: Config, model, train_ds, say: Callable[[str], None]) -> Optional[PrefixCache]:
    """The run's cache, or None where train.prefix_cache is off or (auto) does not apply. true where it cannot apply
    fails here, before the run folder exists."""
    setting = cfg.train.prefix_cache
    if setting is False:
        return None
    clashes = prefix_cache_clashes(cfg)
    reason = f"with {clashes[0]}" if clashes else ""
    cut = None
    if not reason:
        cut, reason = find_cut(model)
    if cut is None:
        if setting is True:
            raise ConfigError([f"'train.prefix_cache: true' cannot apply: {reason}; set train.prefix_cache=auto"])
        if cfg.adapter.layers_to_transform:
            say(f"prefix cache: off ({reason})")
        return None
    cache = PrefixCache(cut, column(train_ds, "length").to_numpy(), cfg.train.prefix_cache_max_mb)
    where = "memory-mapped from a temporary file" if cache.mapped else "in memory"
    n = len(cut.layers)
    runs = f"layers {cut.start}-{n - 1} and the head" if cut.start < n else "the head only"
    say(f"prefix cache: the embeddings and encoder layers 0-{cut.start - 1} carry no adapter; their output for each "
        f"of the {len(train_ds):,} training rows is computed once, without dropout, and kept in bf16 "
        f"({cache.megabytes:,.0f} MB, {where}); each step runs {runs}")
    return cache


def with_rows(train_ds):
    """The training rows with their positions (ROW), which batches carry to the cache."""
    return train_ds.add_column(ROW, np.arange(len(train_ds), dtype=np.int64))
