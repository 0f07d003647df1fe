"""train.batch_tokens (issue 39): batches capped by padded tokens, what `auto` means per device, the learning-rate
rule, and a resumed token-batched run that ends where the uninterrupted one does. All on CPU, tiny model."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from loraclf import runs
from loraclf.config import Config, load_config
from loraclf.data.token_batches import TokenBatchSampler, token_batches
from loraclf.training import train
from loraclf.training.speed import device_defaults as dd


def _sampler(lengths, seed=0, max_tokens=200, max_rows=16):
    g = torch.Generator()
    g.manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g).numpy()
    return TokenBatchSampler(order, np.asarray(lengths), max_tokens, max_rows, g)


def test_token_batches_hold_every_row_once_within_both_caps():
    lengths = np.random.default_rng(0).integers(3, 90, size=500)
    s = _sampler(lengths)
    batches = list(s)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        assert len(b) <= 16
        assert len(b) * lengths[b].max() <= 200 or len(b) == 1
    # the heaviest batch comes first (an out-of-memory error shows at once)
    tokens = [len(b) * lengths[b].max() for b in batches]
    assert tokens[0] == max(tokens)
    # short rows make big batches, long rows small ones: the caps bind, not a fixed row count
    assert min(len(b) for b in batches) < 4 and max(len(b) for b in batches) == 16
    # length grouping: far less padding than batches of random rows of the same sizes
    padded = sum(len(b) * lengths[b].max() for b in batches)
    rng = np.random.default_rng(1)
    perm = rng.permutation(500)
    cuts = np.cumsum([len(b) for b in batches])[:-1]
    random_padded = sum(len(b) * lengths[b].max() for b in np.split(perm, cuts))
    assert padded < 0.8 * random_padded


def test_token_batches_are_seeded_per_epoch_and_map_rows_to_batches():
    lengths = np.random.default_rng(0).integers(3, 90, size=300)
    a, b, c = _sampler(lengths, seed=5), _sampler(lengths, seed=5), _sampler(lengths, seed=6)
    assert [x.tolist() for x in a.batches] == [x.tolist() for x in b.batches]
    assert [x.tolist() for x in a.batches] != [x.tolist() for x in c.batches]
    for k in range(len(a) + 1):
        assert a.batches_before(a.rows_before(k)) == k
    assert a.rows_before(len(a)) == 300
    assert a.mean_rows == pytest.approx(300 / len(a))


def test_evaluation_token_batches_are_longest_first_and_capped():
    lengths = np.array([5, 50, 7, 120, 9, 60])
    batches = token_batches(lengths, batch_size=2, max_tokens=130, max_rows=3)
    assert batches[0].tolist() == [3]  # 120 tokens: alone
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) <= 3 and len(b) * lengths[b].max() <= 130 for b in batches)


def test_accelerate_deals_token_batches_round_robin_to_processes():
    """Several processes take the epoch's batches whole, in turn: together they see exactly one process's batches."""
    from accelerate.data_loader import BatchSamplerShard

    s = _sampler(np.random.default_rng(0).integers(3, 90, size=301))
    shards = [list(BatchSamplerShard(s, num_processes=2, process_index=i, even_batches=False)) for i in (0, 1)]
    dealt = [b for pair in zip(*shards) for b in pair] + shards[0][len(shards[1]):]
    assert dealt == list(s)


@pytest.mark.parametrize("device,few,stream,expected", [
    ("cuda", False, False, dd.GPU_BATCH_TOKENS), ("cpu", False, False, None), ("mps", False, False, None),
    ("cuda", True, False, None), ("cuda", False, True, None)])
def test_auto_batch_tokens_is_on_only_on_a_cuda_gpu_outside_few_shot_and_streams(device, few, stream, expected):
    cfg = Config()
    if stream:
        cfg.data.streaming = True
    d = dd.decide(cfg, device, few_shot=few)
    assert d.batch_tokens == expected
    why = d.batch_tokens_why.lower()
    assert why.startswith("auto") and ("few-shot" if few else "stream" if stream else device) in why
    assert d.pin_memory == (device == "cuda") and d.pad_multiple == (8 if device == "cuda" else None)


def test_explicit_batch_tokens_and_fused_choices_win_over_auto():
    cfg = Config()
    cfg.train.batch_tokens, cfg.optimizer.fused = 4096, True
    d = dd.decide(cfg, "cpu")
    assert (d.batch_tokens, d.fused) == (4096, True)
    cfg.train.batch_tokens = None
    assert dd.decide(cfg, "cuda").batch_tokens is None
    auto = Config()
    assert dd.decide(auto, "cuda").fused is True and dd.decide(auto, "cpu").fused is False
    auto.optimizer.name = "loraplus"
    assert dd.decide(auto, "cuda").fused is False


def test_learning_rate_rule_is_the_square_root_of_the_batch_growth():
    assert dd.lr_scale(32, 32) == 1.0
    assert dd.lr_scale(128, 32) == pytest.approx(2.0)
    assert dd.lr_scale(8, 32) == pytest.approx(0.5)


def test_config_shows_what_auto_resolves_to_and_stays_loadable(capsys):
    from loraclf.cli.commands import main

    assert main(["config", "train.batch_tokens=2048"]) == 0
    out = capsys.readouterr().out
    assert "#   train.batch_tokens: 2048 -> 2048 (train.batch_tokens=2048)" in out
    assert "#   train.mixed_precision: auto -> " in out and "#   optimizer.fused: auto -> " in out
    assert yaml.safe_load(out)["train"]["batch_tokens"] == 2048


def test_a_stream_refuses_an_explicit_token_cap():
    from loraclf.base.errors import ConfigError

    with pytest.raises(ConfigError, match="groups a whole epoch's rows by length, which a stream never holds"):
        load_config(None, ["data.train=x.csv", "data.streaming=true", "train.max_steps=5", "eval.eval_steps=5",
                           "train.batch_tokens=1024"])


TOKEN_RUN = ["train.batch_tokens=1024", "train.max_steps=14", "eval.eval_steps=7", "output.save_steps=1",
             "output.save_total_limit=100"]


def _evals(result) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "time"} for h in result.history if h["type"] == "eval"]


def test_token_batched_run_plans_its_steps_scales_lr_and_resumes_exactly(tiny_overrides, caplog):
    """A run capped at 1,024 tokens a batch (~32 of the tiny rows): an epoch is as many steps as epoch 0's batches,
    the learning rate is scaled by the rule, and a run resumed from a checkpoint in the middle of its second epoch
    ends with the uninterrupted run's adapter and evaluations."""
    caplog.set_level("INFO", logger="loraclf")
    full = train(load_config(None, tiny_overrides + ["output.run_name=full", *TOKEN_RUN]), quiet=False)
    line = next(r.getMessage() for r in caplog.records if "train.batch_tokens=1024" in r.getMessage())
    mean = float(line.split("): ")[1].split(" rows a batch")[0])
    scale = math.sqrt(mean / 16)
    assert mean > 16 and f"x {scale:.3f}" in line
    lrs = [h["learning_rate"] for h in full.history if h["type"] == "train"]
    assert 5e-3 < max(lrs) <= 5e-3 * scale * (1 + 1e-9)
    states = {int(p.name.split("-")[1]): json.loads((p / runs.CKPT_STATE).read_text())
              for p in (full.run_dir / runs.CHECKPOINTS).iterdir()}
    assert states[14]["epoch"] == 1  # 14 steps span two epochs
    mid = next(s for s in sorted(states) if states[s]["epoch"] == 1 and states[s]["batches_in_epoch"] >= 2)
    cut = full.run_dir.parent / "cut"
    shutil.copytree(full.run_dir, cut)
    for s in states:
        if s > mid:
            shutil.rmtree(cut / runs.CHECKPOINTS / f"step-{s}")
    resumed = train(load_config(None, tiny_overrides + ["output.run_name=cut", *TOKEN_RUN]), resume=cut, quiet=True)
    assert resumed.metrics["global_step"] == 14
    a = load_file(str(full.run_dir / runs.CHECKPOINTS / "step-14" / runs.CKPT_WEIGHTS))
    b = load_file(str(cut / runs.CHECKPOINTS / "step-14" / runs.CKPT_WEIGHTS))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert _evals(resumed) == _evals(full)
