"""The speed options of issue 19 that are off by default: optimizer.fused and train.torch_compile."""

from __future__ import annotations

import torch

from loraclf.config import from_dict
from loraclf.training import build_optimizer


def _model():
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))


def test_fused_adamw_is_torch_fused_kernel_and_steps():
    cfg = from_dict({"optimizer": {"fused": True}})
    model = _model()
    opt = build_optimizer(cfg, model)
    assert opt.defaults["fused"] is True and not opt.defaults.get("foreach")
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_default_optimizer_is_foreach_and_matches_fused_numerically():
    torch.manual_seed(0)
    a, b = _model(), _model()
    b.load_state_dict(a.state_dict())
    oa = build_optimizer(from_dict({}), a)
    ob = build_optimizer(from_dict({"optimizer": {"fused": True}}), b)
    assert oa.defaults["foreach"] is True
    x = torch.randn(4, 8)
    for m, o in ((a, oa), (b, ob)):
        for _ in range(3):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_torch_compile_hands_accelerate_an_inductor_plugin(tmp_path):
    from loraclf.training.setup import _accelerator

    acc = _accelerator(from_dict({"train": {"torch_compile": True}}), tmp_path, "no")
    plugin = acc.state.dynamo_plugin
    assert str(plugin.backend).lower().endswith("inductor") and plugin.dynamic and plugin.use_regional_compilation
    plain = _accelerator(from_dict({}), tmp_path, "no")
    assert str(plain.state.dynamo_plugin.backend).lower().endswith("no")
