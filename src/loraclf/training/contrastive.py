"""The few-shot recipe's contrastive stage: sentence pairs on the adapter before the classifier trains (as SetFit).

Pairs of labelled rows of the same class are pulled together and pairs of different classes pushed apart: the
cosine similarity of their embeddings is regressed onto 1 (same class; multi-label: a shared label) or 0, SetFit's
CosineSimilarityLoss. Instead of SetFit's list of drawn pairs, each step draws a class-balanced batch of rows
(CONTRAST_BATCH, a few rows of each class) and scores every pair inside it, so one encoder pass yields
batch*(batch-1)/2 pairs; positive and negative pairs weigh half each. The stage runs until every pair of labelled
rows has been scored CONTRAST_PAIR_EPOCHS times on average (stage_steps).

The embedding is the mean of the encoder's last hidden states (POOLING), the space all-MiniLM-L6-v2 was trained in
as a sentence-transformers model. The stock BERT head reads the pooler instead (the [CLS] token through a dense layer
and tanh); training the pooler's output here was measured and lost (66.7% against 76.1% on TREC-6, 8 rows per
class, seed 0): the adapted layers carry the mean-pool structure to [CLS], and the classifier stage that follows
(at a fifth of this stage's learning rate, so it does not undo it) teaches the head to read it. The saved run stays
the stock architecture.

Only the adapter's (and the head's) trainable weights move, with their own AdamW and a linear decay; the
classification stage then starts from the adapted encoder with a fresh optimizer.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

CONTRAST_PAIR_EPOCHS = 10  # the stage's length: each pair of labelled rows scored this many times on average,
CONTRAST_STEPS_PER_CLASS_PAIR = 3  # ... but at most this many steps per pair of classes where they are separated:
# the leave-one-out nearest-centroid accuracy of the labelled rows' mean-pooled embeddings (the encoder as loaded)
# at or above CONTRAST_SEPARATED. Measured (seeds 0-2): AG News 0.72-0.75 at 8 rows/class and 0.80-0.86 at 16, where
# a long stage cost 5 points at 16; TREC-6 0.54-0.66, where the longer stage is worth 2 (bench/results/small_data.md)
CONTRAST_SEPARATED = 0.7
CONTRAST_MIN_STEPS, CONTRAST_MAX_STEPS = 10, 200
CONTRAST_BATCH = 24  # rows per step: every pair among them is scored
CONTRAST_LR_SCALE = 5.0  # the stage's learning rate as a multiple of the classifier stage's (1e-3 in the recipe)
# "mean": the mean of the last hidden states (what all-MiniLM-L6-v2 was trained on); "pooler": what the stock BERT
# head reads (falls back to "mean"); "both": the sum of the two losses. Screened on TREC-6 8/class seed 0 (the
# classifier stage at 1e-3): mean 76.1%, both 75.5%, pooler 66.7% (docs/little-data.md)
POOLING = "mean"


def pair_targets(labels: np.ndarray) -> np.ndarray:
    """Target similarity of every pair of rows: 1 for the same class (multi-label: a label in common), else 0."""
    labels = np.asarray(labels)
    if labels.ndim == 2:  # multi-label indicator rows
        hot = (labels > 0.5).astype(np.float32)
        return (hot @ hot.T > 0).astype(np.float32)
    return (labels[:, None] == labels[None, :]).astype(np.float32)


def stage_steps(n_rows: int, batch: int, n_classes: Optional[int] = None) -> int:
    """Steps for CONTRAST_PAIR_EPOCHS passes over the n_rows*(n_rows-1)/2 pairs, batch*(batch-1)/2 pairs a step,
    at most CONTRAST_STEPS_PER_CLASS_PAIR per pair of the n_classes classes where given (run() gives it where the
    embeddings already separate the classes).

    The pairs grow with the square of the rows, as SetFit's do. Screened at 8 rows per class (seed 0): 40 steps
    (20 pair passes on AG News' 32 rows, 10 on TREC-6's 48) scored 79.7% on AG News and 76.5% on TREC-6; 20 steps
    (10 and 5 passes) 82.1% and 66.9%: ten passes suit both. At 16 rows per class ten passes are 73 steps on AG
    News, which scored 79.3% against 84.1% for 18 (seed 0): where the sentence embedding already separates the
    classes (AG News' topics), a long stage spoils what the classifier reads, so there the stage stops at 3 steps per
    pair of classes (18 on AG News); TREC-6's question types it does not separate, and there the capped stage (45
    steps at 16 rows per class) lost 2 points to the full one (166). At 8 rows per class the cap changes neither.
    """
    per_step = max(batch * (batch - 1) // 2, 1)
    steps = math.ceil(CONTRAST_PAIR_EPOCHS * n_rows * (n_rows - 1) / 2 / per_step)
    if n_classes:
        steps = min(steps, CONTRAST_STEPS_PER_CLASS_PAIR * n_classes * (n_classes - 1) // 2)
    return int(min(max(steps, CONTRAST_MIN_STEPS), CONTRAST_MAX_STEPS))


def draw_batches(labels: np.ndarray, steps: int, batch: int, seed: int) -> list[np.ndarray]:
    """Row indices of each step: a few rows of each of up to batch//2 classes, so every batch has positive pairs.

    Single-label: the classes of a step are drawn at random (all of them when they fit), then batch//classes rows of
    each without replacement where the class has them. Multi-label: rows drawn at random.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    n = len(labels)
    if labels.ndim == 2:
        return [rng.choice(n, size=min(batch, n), replace=False) for _ in range(steps)]
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    by_class = [rows for rows in by_class if len(rows)]
    out = []
    for _ in range(steps):
        k = min(len(by_class), max(batch // 2, 1))
        classes = rng.choice(len(by_class), size=k, replace=False)
        per = max(batch // k, 1)
        rows = [rng.choice(by_class[c], size=min(per, len(by_class[c])), replace=False) for c in classes]
        out.append(np.concatenate(rows))
    return out


def pair_loss(emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair of the batch, positive and negative pairs weighing half each."""
    unit = torch.nn.functional.normalize(emb.float(), dim=-1)
    cos = unit @ unit.T
    upper = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
    err = (cos - target) ** 2
    pos, neg = upper & (target > 0.5), upper & (target <= 0.5)
    parts = [err[m].mean() for m in (pos, neg) if m.any()]
    return sum(parts) / len(parts)


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The task model's encoder (BertModel inside BertForSequenceClassification), adapter layers included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def embed(encoder: torch.nn.Module, inputs: dict, pooling: str) -> list[torch.Tensor]:
    """The pooled sentence embeddings the loss reads: the pooler's output ("pooler", where present), the masked mean
    of the last hidden states ("mean"), or both ("both")."""
    out = encoder(**inputs)
    pooled = getattr(out, "pooler_output", None)
    mask = inputs["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if pooled is None or pooling == "mean":
        return [mean]
    return [pooled] if pooling == "pooler" else [mean, pooled]


@torch.no_grad()
def separation(model: torch.nn.Module, train_ds, labels: np.ndarray, collate, device, autocast=None,
               pooling: str = "mean") -> float:
    """Leave-one-out nearest-centroid accuracy of the rows' pooled embeddings (cosine to each class's mean of the
    other rows): how well the encoder, as it is, already separates the classes. Single-label; a class of one row
    counts against it (no centroid without the row)."""
    import contextlib

    labels, encoder = np.asarray(labels), encoder_of(model)
    was_training = model.training
    model.eval()
    parts = []
    for i in range(0, len(labels), 64):
        rows = [train_ds[j] for j in range(i, min(i + 64, len(labels)))]
        with (autocast() if autocast else contextlib.nullcontext()):
            parts.append(embed(encoder, _inputs(rows, collate, device), pooling)[0].float())
    model.train(was_training)
    unit = torch.nn.functional.normalize(torch.cat(parts), dim=-1).cpu().numpy().astype(np.float64)
    classes = np.unique(labels)
    onehot = (labels[:, None] == classes[None, :]).astype(np.float64)
    sums = onehot.T @ unit  # each class's sum of unit vectors; a row's centroid of its own class leaves it out:
    dots = unit @ sums.T  # cos(row, sum - own row) = (dots - 1) / |sum - own row|, |.|^2 = |sum|^2 - 2 dots + 1
    norm2 = (sums ** 2).sum(1)[None, :] - onehot * (2 * dots - 1)
    score = (dots - onehot) / np.sqrt(np.maximum(norm2, 1e-12))
    score[(onehot.sum(0)[None, :] - onehot) == 0] = -np.inf  # no other row in the class: no centroid
    return float(np.mean(classes[score.argmax(1)] == labels))


def _stage_length(model, train_ds, labels: np.ndarray, batch: int, collate, device, autocast, pooling) -> tuple:
    """stage_steps() for these rows, capped where the embeddings already separate the classes (single-label), and
    the words for the log line."""
    if labels.ndim == 2:
        return stage_steps(len(labels), batch), ""
    sep = separation(model, train_ds, labels, collate, device, autocast, pooling)
    separated = sep >= CONTRAST_SEPARATED
    steps = stage_steps(len(labels), batch, len(np.unique(labels)) if separated else None)
    return steps, (f"; the embeddings {'already' if separated else 'do not yet'} separate the classes (leave-one-out "
                   f"nearest-centroid accuracy {sep:.2f} {'>=' if separated else '<'} {CONTRAST_SEPARATED:g}), so "
                   f"{f'at most {CONTRAST_STEPS_PER_CLASS_PAIR} steps per pair of classes' if separated else 'no cap'}")


def _inputs(rows: list[dict], collate, device) -> dict:
    batch = collate([{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r} for r in rows])
    return {k: v.to(device) for k, v in batch.items()}


def run(model: torch.nn.Module, train_ds, labels: np.ndarray, collate, lr: float, seed: int,
        device: Optional[torch.device] = None, autocast=None, say: Callable[[str], None] = lambda m: None,
        steps: Optional[int] = None, batch: Optional[int] = None, pooling: Optional[str] = None) -> list[float]:
    """Train the model's trainable weights on pairs of train_ds's rows (tokenized). Returns the loss of each step.
    steps, batch, pooling: _stage_length() (stage_steps, capped where the classes are already separated),
    CONTRAST_BATCH, POOLING unless given."""
    import contextlib

    batch, pooling, labels = min(batch or CONTRAST_BATCH, len(labels)), pooling or POOLING, np.asarray(labels)
    device = device or next(model.parameters()).device
    model.to(device)
    why = ""
    if steps is None:
        steps, why = _stage_length(model, train_ds, labels, batch, collate, device, autocast, pooling)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr * CONTRAST_LR_SCALE, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(steps, 1)))
    encoder = encoder_of(model)
    was_training = model.training
    model.train()
    losses = []
    for rows in draw_batches(labels, steps, batch, seed):
        inputs = _inputs([train_ds[int(i)] for i in rows], collate, device)
        with (autocast() if autocast else contextlib.nullcontext()):
            embs = embed(encoder, inputs, pooling)
        target = torch.from_numpy(pair_targets(labels[rows])).to(embs[0].device)  # per batch: n*n would not fit
        loss = sum(pair_loss(e, target) for e in embs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.train(was_training)
    fifth = max(len(losses) // 5, 1)
    first, last = (np.mean(losses[:fifth]), np.mean(losses[-fifth:])) if losses else (math.nan, math.nan)
    say(f"contrastive stage: {steps} steps of {batch}-row class-balanced batches (every pair in a batch), "
        f"{pooling}-pooled embeddings, learning rate {lr * CONTRAST_LR_SCALE:g}, pair loss {first:.4f} -> {last:.4f}"
        f"{why}")
    return losses
