"""train.fast_dropout (issue 19): dropout masks from 16-bit uniforms, four per 64-bit random draw.

The masks must keep each element with probability 1 - q and scale by 1 / (1 - q) (the expected output is the
input), pass gradients through the kept elements only, and the swapped model must compute what the stock one does
wherever no element is dropped. Leaving the scope must leave the stock modules and attention behind.
"""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import make_tiny_model
from loraclf import model as model_mod
from loraclf.config import from_dict, load_config
from loraclf.training.speed import dropout as dropout_mod

TEXTS = ["stocks fell sharply as oil prices rose", "the team won the cup final", "a new chip for phones", "rain"]


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_masks_keep_one_minus_p_and_the_scale_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = dropout_mod.masked_dropout(x, p)
    q = round(p * 65536) / 65536
    kept = (y != 0).float().mean().item()
    assert abs(kept - (1 - q)) < 5 * (q * (1 - q) / x.numel()) ** 0.5  # five binomial standard errors
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - q)))
    assert abs(y.mean().item() - 1) < 0.01


def test_masks_are_not_the_same_across_positions_or_calls():
    torch.manual_seed(0)
    a = dropout_mod.masked_dropout(torch.ones(64, 64), 0.5) != 0
    b = dropout_mod.masked_dropout(torch.ones(64, 64), 0.5) != 0
    assert not torch.equal(a, b)
    # the four uniforms of one 64-bit draw land on neighbouring elements: they must not agree more than chance
    flat = a.flatten().float()
    agree = (flat[0::4] == flat[1::4]).float().mean().item()
    assert 0.45 < agree < 0.55


def test_gradients_pass_through_the_kept_elements_only():
    torch.manual_seed(1)
    x = torch.randn(50, 40, requires_grad=True)
    y = dropout_mod.masked_dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    kept = y.detach() != 0
    q = round(0.3 * 65536) / 65536
    torch.testing.assert_close(x.grad, kept.float() / (1 - q))


def test_bf16_keeps_its_dtype_and_an_unbiased_scale():
    """The scale is applied as a float: a bf16 multiplier of 1/0.9 would be 1.109 and shrink every output 0.16%."""
    torch.manual_seed(0)
    x = torch.full((100, 100), 5.5, dtype=torch.bfloat16)  # 5.5 x 1.109 rounds to 6.094, 5.5 / 0.9 to 6.125
    y = dropout_mod.masked_dropout(x, 0.1)
    assert y.dtype == torch.bfloat16
    assert y[y != 0].float().unique().tolist() == [6.125]


def test_identity_outside_training_and_at_p_zero():
    x = torch.randn(8, 8)
    assert dropout_mod.masked_dropout(x, 0.3, training=False) is x
    assert dropout_mod.masked_dropout(x, 0.0) is x
    assert not dropout_mod.masked_dropout(x, 1.0).any()


def _model(folder):
    cfg = from_dict({"model": {"name_or_path": str(folder)}})
    model, tok = model_mod.build_model(cfg, {0: "a", 1: "b"})
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return model, {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert", "mpnet"])
def family_model(request, tmp_path_factory, minilm_path):
    return make_tiny_model(tmp_path_factory.mktemp(request.param) / "m", minilm_path, request.param)


def _keep_everything(monkeypatch):
    monkeypatch.setattr(dropout_mod, "keep_mask", lambda shape, p, dtype, device: (torch.ones(shape, dtype=dtype), 1.0))


def test_the_swapped_model_computes_the_stock_one_where_nothing_is_dropped(family_model, monkeypatch):
    """Evaluation inside the scope, and a training forward whose masks keep every element, give the stock logits:
    the swapped attention (with the eager mask registered beside it) is transformers' own computation."""
    model, batch = _model(family_model)
    swap = dropout_mod.swap_for(model)
    assert len(swap.modules) >= 3  # embeddings, both residual branches, the adapter inputs, the head...
    model.eval()
    with torch.no_grad():
        stock = model(**batch).logits
        with swap.active():
            torch.testing.assert_close(model(**batch).logits, stock)
    _keep_everything(monkeypatch)
    model.train()
    with torch.no_grad(), swap.active():
        torch.testing.assert_close(model(**batch).logits, stock, atol=1e-5, rtol=1e-5)


def test_the_attention_dropout_goes_through_the_cheaper_mask_where_the_family_uses_the_interface(family_model):
    model, batch = _model(family_model)
    swap = dropout_mod.swap_for(model)
    calls = []
    real = dropout_mod.keep_mask
    dropout_mod.keep_mask = lambda shape, p, dtype, device: calls.append(tuple(shape)) or real(shape, p, dtype, device)
    try:
        model.train()
        with swap.active():
            model(**batch).logits.sum().backward()
    finally:
        dropout_mod.keep_mask = real
    four_d = [s for s in calls if len(s) == 4]  # [batch, heads, query, key]: attention probabilities
    assert len(four_d) == 2, calls  # one per layer of the 2-layer encoder
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_leaving_the_scope_restores_the_stock_modules_even_after_an_error(tiny_bert):
    model, batch = _model(tiny_bert)
    swap = dropout_mod.swap_for(model)
    impl = [c._attn_implementation for c in swap.configs]
    with pytest.raises(RuntimeError), swap.active():
        assert all(type(m) is dropout_mod.FastDropout for m in swap.modules)
        assert {c._attn_implementation for c in swap.configs} == {dropout_mod.LORACLF_ATTENTION}
        raise RuntimeError("stop")
    assert all(type(m) is torch.nn.Dropout for m in swap.modules)
    assert [c._attn_implementation for c in swap.configs] == impl == ["sdpa"]


@pytest.mark.parametrize("setting, device, compile_, on", [
    ("auto", "cpu", False, True), ("auto", "cuda", False, False), ("auto", "cpu", True, False),
    ("false", "cpu", False, False), ("true", "cuda", False, True)])
def test_auto_is_on_for_cpu_training_without_compile(tiny_bert, setting, device, compile_, on):
    cfg = load_config(None, [f"model.name_or_path={tiny_bert}", f"train.fast_dropout={setting}",
                             f"train.torch_compile={str(compile_).lower()}", "data.train=x.csv"])
    model, _ = _model(tiny_bert)
    assert (dropout_mod.build(cfg, model, torch.device(device), lambda m: None) is not None) == on


def test_a_training_run_uses_the_cheaper_masks_by_default(tiny_overrides, caplog):
    from loraclf.training import train

    caplog.set_level(logging.INFO, logger="loraclf")
    result = train(load_config(None, tiny_overrides + ["train.max_steps=6", "eval.eval_steps=6"]))
    assert "dropout: cheaper masks (train.fast_dropout)" in caplog.text
    assert result.metrics["global_step"] == 6
