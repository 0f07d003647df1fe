"""The training inputs: augmented rows, tokenized splits, and each epoch's loader (in memory or streamed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from ..data import augment
from .. import data as data_mod
from ..config import Config
from ..data import Splits
from .speed.device_defaults import DeviceDefaults

if TYPE_CHECKING:  # annotations only: the code imports these where it uses them
    import datasets
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

EXTRA_COLUMNS = ("weight", "soft_labels")  # per-row columns (pseudo-labels) that follow their rows into batches


@dataclass
class Inputs:
    """What the loop reads: the raw train rows (pre-tokenization) and the tokenized splits."""

    train_raw: datasets.Dataset | datasets.IterableDataset  # a stream with data.streaming
    train_ds: Optional[datasets.Dataset]  # None for a stream (data.streaming): it is tokenized as the loop reads it
    val_ds: datasets.Dataset
    test_ds: Optional[datasets.Dataset]


def _augmented(ds: datasets.Dataset, cfg: Config, seed: int, say: Callable[[str], None]) -> datasets.Dataset:
    import datasets

    # rows are tracked by index so per-row columns (weight, soft_labels of pseudo-labels) follow their copies
    out = {}
    for col in ("text", "text_pair"):
        if col not in ds.column_names:
            continue
        if cfg.augment.side in ("both", col):
            # the other side of a pair gets its own draws (seed + 1), so both texts are not edited alike
            out[col], _ = augment.augment_dataset(list(ds[col]), list(range(len(ds))), cfg.augment,
                                                     seed + (col == "text_pair"))
        else:  # copied unchanged beside the augmented side
            out[col] = list(ds[col]) * (cfg.augment.num_copies + 1)
    rows = list(range(len(ds))) * (cfg.augment.num_copies + 1)
    say(f"augmentation: {len(ds):,} -> {len(out['text']):,} training rows"
        + (f" (pairs: {cfg.augment.side})" if "text_pair" in out else ""))
    for col in ds.column_names:
        if col not in out:
            values = ds[col]
            out[col] = [values[i] for i in rows]
    return datasets.Dataset.from_dict(out)


def _with_extras(ds: datasets.Dataset, raw: datasets.Dataset) -> datasets.Dataset:
    for extra in EXTRA_COLUMNS:
        if extra in raw.column_names:
            ds = ds.add_column(extra, raw[extra])
    return ds


def build(cfg: Config, splits: Splits, tokenizer: PreTrainedTokenizerBase, say: Callable[[str], None]) -> Inputs:
    train_raw = splits.train
    if cfg.augment.enabled:
        # per_epoch draws epoch 0's copies here too (the same seed the loop would use), so that the epoch length
        # and the step count include the copies
        train_raw = _augmented(train_raw, cfg, cfg.train.seed, say)
    # a stream (data.streaming) is tokenized as the loop reads it, pass by pass (data_mod.stream_loader)
    train_ds = None if cfg.data.streaming else data_mod.tokenize(train_raw, tokenizer, cfg.data, cache=True)
    val_ds = data_mod.tokenize(splits.validation, tokenizer, cfg.data, cache=True)
    test_ds = data_mod.tokenize(splits.test, tokenizer, cfg.data, cache=True) if splits.test is not None else None
    if train_ds is not None:
        train_ds = _with_extras(train_ds, train_raw)
    return Inputs(train_raw, train_ds, val_ds, test_ds)


@dataclass
class EpochLoader:
    """One pass over the training data: the loader (past the batches already done), where it starts, how many
    batches it holds (None for a stream), and, with train.batch_tokens, the epoch's token-capped batches."""

    loader: DataLoader
    skipped: int  # batches (per process) already done in this epoch by the run being resumed
    n_batches: Optional[int]
    tokens: Optional[data_mod.TokenBatchSampler] = None

    def rows_done(self, batches: int, n_proc: int, rows_per_batch: int) -> int:
        """The epoch's data position in rows after `batches` batches per process (N processes take global batches
        round-robin, so a checkpoint written by N processes resumes in M)."""
        if self.tokens is None:
            return batches * rows_per_batch
        return self.tokens.rows_before(batches * n_proc)


def token_sampler(cfg: Config, ds: datasets.Dataset, epoch: int, dd: DeviceDefaults) -> data_mod.TokenBatchSampler:
    return data_mod.token_sampler(ds, cfg.train.seed, epoch, dd.batch_tokens, dd.max_rows(cfg),
                                  balanced=cfg.data.sampling == "balanced")


def epoch_loader(cfg: Config, inputs: Inputs, splits: Splits, tokenizer: PreTrainedTokenizerBase,
                 accelerator: Accelerator, epoch: int, samples_done: int, say: Callable[[str], None],
                 dd: DeviceDefaults) -> EpochLoader:
    """Epoch `epoch`'s loader, past the samples_done rows a resumed run already trained on."""
    bs, n_proc = cfg.train.per_device_train_batch_size, accelerator.num_processes
    if cfg.data.streaming:
        # the pass is rebuilt past the rows already trained on; its length is unknown
        loader = data_mod.stream_loader(inputs.train_raw, tokenizer, cfg.data, splits.id2label, bs, cfg.train.seed,
                                        epoch, skip=samples_done)
        return EpochLoader(loader, samples_done // (bs * n_proc), None)
    epoch_ds = inputs.train_ds
    if cfg.augment.enabled and cfg.augment.mode == "per_epoch" and epoch > 0:
        epoch_raw = _augmented(splits.train, cfg, cfg.train.seed + epoch, say)
        epoch_ds = _with_extras(data_mod.tokenize(epoch_raw, tokenizer, cfg.data, cache=False), epoch_raw)
    tokens = token_sampler(cfg, epoch_ds, epoch, dd) if dd.batch_tokens else None
    loader = data_mod.train_loader(epoch_ds, tokenizer, bs, cfg.data.group_by_length, cfg.train.seed, epoch,
                                   group_size=bs * n_proc, balanced=cfg.data.sampling == "balanced", tokens=tokens,
                                   pin_memory=dd.pin_memory, pad_multiple=dd.pad_multiple)
    loader = accelerator.prepare(loader)
    # the data position is kept in rows, so a checkpoint written by N processes resumes in M
    skip = samples_done // (bs * n_proc) if tokens is None else tokens.batches_before(samples_done) // n_proc
    if skip:
        loader = accelerator.skip_first_batches(loader, skip)
    return EpochLoader(loader, skip, len(loader) + skip, tokens)
