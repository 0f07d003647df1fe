"""data.streaming: one pass over the training stream at a time, shuffled through a buffer, cleaned by the rules of
every other path (clean.clean_batch), labels encoded, tokenized as it is read, and batched for every process."""

from __future__ import annotations

from ..config import DataConfig
from ..base.errors import DataError
from .batches import collator
from .clean import clean_batch, text_columns
from .labels import encode_labels

STREAM_MAP_BATCH = 1000  # rows cleaned and tokenized at a time (datasets' own default batch size for map)


def stream_where(cfg: DataConfig) -> str:
    """The training stream's name in messages."""
    return str(cfg.train) if cfg.train else f"{cfg.name}[train]"


def train_stream(source, tokenizer, cfg: DataConfig, id2label: dict[int, str], seed: int, epoch: int, skip: int = 0):
    """One pass (epoch) over the training stream: shuffled through a buffer of data.shuffle_buffer_size rows with
    seed + epoch, cleaned, labels encoded, tokenized as it is read.

    skip: rows of this pass already trained on (a resumed run); they are read and cleaned, not tokenized.
    """
    where = stream_where(cfg)
    cols, label_col = text_columns(cfg), cfg.label_column
    max_chars, max_length, refuse_empty = cfg.max_text_chars, cfg.max_length, cfg.empty_text == "error"

    def clean(batch):
        b = clean_batch(batch, cols, label_col, max_chars, (), where, None)
        keep = b["keep"]
        if refuse_empty and not keep.all():
            raise DataError(f"{where} has an empty or NaN text/label in the stream; set data.empty_text=drop to "
                            f"skip such rows")
        labels = [v for v, k in zip(batch[label_col], keep) if k]
        return {"text": [t for t, k in zip(b["text"], keep) if k],
                "label": encode_labels(labels, id2label, where, streamed=True).tolist()}

    def tok(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    ds = source.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer_size)
    ds = ds.map(clean, batched=True, batch_size=STREAM_MAP_BATCH, remove_columns=list(dict.fromkeys(cols + [label_col])))
    if skip:
        # not skip(): in the datasets chain it freezes the shard order, which set_epoch would otherwise reshuffle,
        # so a multi-file source would resume a later epoch in another order than the uninterrupted run
        ds = ds.filter(lambda b, idx: [i >= skip for i in idx], with_indices=True, batched=True,
                       batch_size=STREAM_MAP_BATCH)
    ds = ds.map(tok, batched=True, batch_size=STREAM_MAP_BATCH, remove_columns=["text"])
    ds.set_epoch(epoch)
    return ds


def stream_loader(source, tokenizer, cfg: DataConfig, id2label: dict[int, str], per_device_batch_size: int, seed: int,
                  epoch: int, skip: int = 0):
    """Batches of one pass over the training stream, prepared by Accelerate for every process.

    Process 0 reads the stream and Accelerate hands each process its slice of every global batch
    (dispatch_batches with split_batches). Accelerate's default for an IterableDataset (process 0 reads one batch
    per process and concatenates them) fails when dynamic padding gives batches different lengths, and
    split_dataset_by_node gives processes different row counts at the end of a pass, which leaves them in step
    only by luck; one global order also makes N processes train on exactly what one process would, and lets a
    checkpoint written by N processes resume in M. The last partial global batch of a pass is dropped.
    """
    import torch
    from accelerate.data_loader import prepare_data_loader
    from accelerate.state import PartialState
    from torch.utils.data import DataLoader

    n_proc = PartialState().num_processes
    stream = train_stream(source, tokenizer, cfg, id2label, seed, epoch, skip)
    loader = DataLoader(stream, batch_size=per_device_batch_size * n_proc, collate_fn=collator(tokenizer),
                        drop_last=True)
    loader = prepare_data_loader(loader, put_on_device=True, dispatch_batches=True, split_batches=True)
    loader.set_epoch(epoch)  # else the dispatcher sets the stream's epoch to its own count of passes, 0
    # Accelerate rebuilds the loader without a generator when it dispatches, and the rebuilt one draws its base seed
    # (unused without workers) from the global RNG at every pass: once more in a resumed run than in an
    # uninterrupted one, which would shift every later dropout mask
    loader.base_dataloader.generator = torch.Generator().manual_seed(seed + epoch)
    return loader
