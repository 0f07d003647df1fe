"""The learning-rate schedule follows the optimizer steps that happened (issue 42): when fp16's GradScaler skips a
step for an overflow, neither the scheduler nor the adapter's after-step hook may advance. A CPU has no fp16 scaler,
so the skip is planted on Accelerate's own optimizer wrapper (the flag its GradScaler path sets), and the real loop
function runs one batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from loraclf import task as problem
from loraclf.training import loop
from loraclf.training.loss import LossSpec
from loraclf.training.setup import _fresh_accelerate_state
from loraclf.training.state import LoopState


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 3)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.emb(input_ids).mean(1))


def _ctx(skipped: bool):
    from accelerate import Accelerator

    _fresh_accelerate_state()
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model, opt = acc.prepare(model, opt)
    opt._is_overflow = skipped  # what AcceleratedOptimizer.step sets when GradScaler skipped optimizer.step
    after = []
    hooks = SimpleNamespace(regularizer=None, after_step=after.append)
    ctx = SimpleNamespace(accelerator=acc, cfg=SimpleNamespace(train=SimpleNamespace(max_grad_norm=1.0)),
                          model=model, dropout=None, prefix=None, loss=LossSpec(problem.SINGLE, "cross_entropy"),
                          hooks=hooks, optimizer=opt, scheduler=sched)
    return ctx, after


@pytest.mark.parametrize("skipped", [False, True])
def test_a_skipped_optimizer_step_does_not_advance_the_schedule_or_the_hooks(skipped):
    ctx, after = _ctx(skipped)
    assert ctx.accelerator.optimizer_step_was_skipped is skipped
    batch = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "attention_mask": torch.ones(2, 2, dtype=torch.long),
             "labels": torch.tensor([0, 2])}
    loop._forward_backward(ctx, LoopState(), batch)
    assert ctx.scheduler.last_epoch == (0 if skipped else 1)
    assert after == ([] if skipped else [1])


def test_the_decision_reads_accumulation_and_the_skip_flag():
    flags = lambda sync, skip: SimpleNamespace(sync_gradients=sync, optimizer_step_was_skipped=skip)  # noqa: E731
    assert loop.optimizer_stepped(flags(True, False))
    assert not loop.optimizer_stepped(flags(True, True))  # fp16 overflow
    assert not loop.optimizer_stepped(flags(False, False))  # an accumulation batch
