"""A parameter cap must not change what a seed produces (issue 42): budget.enforce builds a model on the meta device
after the seed is set, and that must leave torch's, python's and numpy's random streams where they were."""

from __future__ import annotations

import random

import numpy as np
import torch
from safetensors.torch import load_file

from loraclf.config import load_config
from loraclf.model import budget
from loraclf.training import train


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_a_cap_that_does_not_bind_leaves_the_trained_adapter_bit_identical(tiny_overrides):
    base = tiny_overrides + ["train.max_steps=3", "eval.eval_steps=3"]
    plain = train(load_config(None, base + ["output.run_name=uncapped"]), quiet=True)
    capped = train(load_config(None, base + ["output.run_name=capped", "budget.max_trainable_params=100000000"]),
                   quiet=True)
    a, b = _adapter(plain.run_dir), _adapter(capped.run_dir)
    assert a.keys() == b.keys() and a
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} adapter tensors differ once a non-binding cap is set: {differ[:3]}"


def test_enforce_leaves_every_random_stream_where_it_was(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["adapter.r=auto", "budget.max_trainable_params=100000000"])
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    before = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    resolved = budget.enforce(cfg, 4, log=lambda m: None)
    assert isinstance(resolved.adapter.r, int)  # the rank was fitted: models were built on the meta device
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
