"""Every adapter.method (and the LoRA+ optimizer) through the real training loop on a tiny BERT:
exact parameter counts, save -> reload -> identical logits in loraclf and in stock PEFT, predict and evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from helpers_infer import load_run_model
from loraclf.model import budget
from loraclf import model as model_mod
from loraclf import runs
from loraclf.config import load_config
from loraclf.base.errors import ConfigError, ModelError
from loraclf.training import build_optimizer, set_seed, train

H, LAYERS, LABELS = 32, 2, 4  # the tiny_bert fixture: hidden 32, 2 layers; tiny_data: 4 AG-News-shaped classes
HEAD = (H * H + H) + (H * LABELS + LABELS)  # pooler.dense + classifier, trained in full (modules_to_save)
N = LAYERS * 2  # adapted modules: query and value in each layer

# (method, extra overrides, adapter parameters per adapted HxH module), computed by hand from each method's paper
CASES = {
    "lora": (["adapter.r=4"], 4 * (H + H)),
    "dora": (["adapter.r=4"], 4 * (H + H) + H),  # + the magnitude vector
    "rslora": (["adapter.r=4"], 4 * (H + H)),
    "pissa": (["adapter.r=4"], 4 * (H + H)),
    "vera": (["adapter.r=16"], H + 16),  # lambda_b (out) + lambda_d (r); the shared A, B are frozen
    "ia3": ([], H),  # one scaling vector over the output features
    # counted at init_r = 4: A (4 x in) + E (4) + B (out x 4); ranks re-allocated from step 2, final mask at step 4
    "adalora": (["adapter.r=2", "adapter.init_r=4", "adapter.adalora_tinit=1", "adapter.adalora_tfinal=2",
                 "adapter.adalora_deltaT=1"], 4 * (H + H) + 4),
    "loha": (["adapter.r=4"], 2 * 4 * (H + H)),  # two rank-4 pairs, Hadamard product
    # 32 = 4 x 8 on both sides: w1 is the full 4x4 factor, w2 (8x8) is split at rank 2 into 8x2 and 2x8
    "lokr": (["adapter.r=2"], 4 * 4 + 2 * (8 * 2)),
    "loraplus": (["adapter.r=4", "optimizer.name=loraplus"], 4 * (H + H)),
}


def _method(case: str) -> str:
    return "lora" if case == "loraplus" else case


def _overrides(tiny_overrides, case):
    return tiny_overrides + [f"adapter.method={_method(case)}", *CASES[case][0]]


def _logits(model, tokenizer, texts) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        batch = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        return model(**batch).logits.float()


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_counts_exactly_and_reloads_identically(case, tiny_overrides, tiny_bert, tiny_data, monkeypatch, tmp_path):
    cfg = load_config(None, _overrides(tiny_overrides, case))
    captured = {}
    real_save = model_mod.save_adapter

    def capture(model, tokenizer, out_dir):
        captured["model"], captured["tokenizer"] = model, tokenizer
        real_save(model, tokenizer, out_dir)

    monkeypatch.setattr(model_mod, "save_adapter", capture)
    result = train(cfg, quiet=True)
    run = result.run_dir
    trained = captured["model"]

    # budget accounting is exact: hand count == budget's meta-device count == the trained model == params.json
    expected = HEAD + N * CASES[case][1]
    assert budget.param_breakdown(trained)["trainable"] == expected
    assert budget.count_trainable(cfg, LABELS) == expected
    assert json.loads((run / runs.PARAMS).read_text())["trainable"] == expected
    assert result.metrics["trainable_params"] == expected

    # it trained: the adapter weights moved away from their (seeded) initial values
    set_seed(cfg.train.seed)
    fresh, _ = model_mod.build_model(cfg, {i: str(i) for i in range(LABELS)})
    init = {n: p for n, p in fresh.named_parameters() if p.requires_grad and "modules_to_save" not in n}
    now = dict(trained.named_parameters())
    assert init and any(not torch.allclose(p, now[n]) for n, p in init.items())

    # save -> reload: identical logits merged, unmerged, and in stock PEFT on a fresh base model
    texts = pd.read_csv(tiny_data["val"])["text"].tolist()[:12]
    want = _logits(trained, captured["tokenizer"], texts)
    merged, tok, _, _ = load_run_model(run, merge=True)
    unmerged, _, _, _ = load_run_model(run, merge=False)
    torch.testing.assert_close(_logits(merged, tok, texts), want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(_logits(unmerged, tok, texts), want, atol=2e-5, rtol=1e-4)

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=LABELS)
    stock = PeftModel.from_pretrained(base, str(run / runs.ADAPTER))
    torch.testing.assert_close(_logits(stock, tok, texts), want, atol=2e-5, rtol=1e-4)

    # evaluate and predict go through the reloaded (merged) model and agree with the in-training test metrics
    from loraclf.infer.files import evaluate_file, predict_file

    ev = evaluate_file(run, tiny_data["test"], quiet=True)
    assert ev["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"], abs=1e-9)
    assert ev["loss"] == pytest.approx(result.metrics["test"]["loss"], abs=1e-4)
    out = predict_file(run, tiny_data["test"], tmp_path / "pred.csv", quiet=True)
    assert out["rows"] == 80 and len(pd.read_csv(tmp_path / "pred.csv")) == 80

    if case == "adalora":
        _check_adalora(result, run, trained)
    if case == "pissa":
        saved = json.loads((run / runs.ADAPTER / "adapter_config.json").read_text())
        assert saved["r"] == 8 and saved["init_lora_weights"] is True  # converted: rank 2r, plain LoRA init
    if case == "vera":
        saved = json.loads((run / runs.ADAPTER / "adapter_config.json").read_text())
        assert saved["save_projection"] is True and saved["r"] == 16


def _check_adalora(result, run, trained):
    rep = result.metrics["adapter_report"]
    assert rep["method"] == "adalora" and rep["total_step"] == 6 and rep["reallocated"]
    assert rep["total_rank_initial"] == 4 * N and rep["total_rank_budget"] == 2 * N
    # after the final allocation exactly the target budget of singular values survives, shared unevenly
    assert rep["total_rank_final"] == rep["total_rank_budget"]
    assert all(0 <= r <= 4 for r in rep["ranks"].values()) and len(rep["ranks"]) == N
    live = sum(int((p != 0).sum()) for n, p in trained.named_parameters() if ".lora_E." in n)
    assert live <= rep["total_rank_final"]
    saved = json.loads((run / runs.ADAPTER / "adapter_config.json").read_text())
    assert saved["total_step"] == 6 and saved["rank_pattern"]
    assert sum(sum(v) for v in saved["rank_pattern"].values()) == rep["total_rank_final"]


def test_adalora_update_and_allocate_runs_every_step_with_gradients(tiny_overrides, monkeypatch):
    from peft.tuners.adalora import AdaLoraModel

    calls = []
    real = AdaLoraModel.update_and_allocate

    def spy(self, global_step):
        grads = [p.grad for n, p in self.model.named_parameters() if ".lora_E." in n]
        calls.append((global_step, all(g is not None for g in grads)))
        return real(self, global_step)

    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", spy)
    cfg = load_config(None, _overrides(tiny_overrides, "adalora"))
    train(cfg, quiet=True)
    assert calls == [(s, True) for s in range(1, 7)]


def test_loraplus_gives_lora_B_a_larger_learning_rate(tiny_bert):
    cfg = load_config(None, [f"model.name_or_path={tiny_bert}", "optimizer.name=loraplus", "optimizer.loraplus_lr_ratio=8",
                             "train.learning_rate=1e-3"])
    model, _ = model_mod.build_model(cfg, {0: "a", 1: "b"})
    opt = build_optimizer(cfg, model)
    ids = {id(p): n for n, p in model.named_parameters()}
    lr = {ids[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    b = [v for n, v in lr.items() if "lora_B" in n]
    a = [v for n, v in lr.items() if "lora_A" in n]
    assert b and a and b == pytest.approx([8e-3] * len(b)) and a == pytest.approx([1e-3] * len(a))


def test_ia3_layers_to_transform_adapts_only_the_top_layers(tiny_bert):
    cfg = load_config(None, [f"model.name_or_path={tiny_bert}", "adapter.method=ia3", "adapter.target_modules=all-linear",
                             "adapter.layers_to_transform=1"])
    model, _ = model_mod.build_model(cfg, {0: "a", 1: "b"})
    adapted = sorted(n.split(".ia3_l")[0].split("encoder.")[1] for n, p in model.named_parameters() if "ia3_l" in n)
    assert adapted and all(n.startswith("layer.1.") for n in adapted)
    # the FFN's second projection is scaled on its 37 inputs, every other layer on its outputs
    sizes = {n.split(".ia3_l")[0].split("layer.1.")[1]: p.numel() for n, p in model.named_parameters() if "ia3_l" in n}
    assert sizes["output.dense"] == 37 and sizes["intermediate.dense"] == 37 and sizes["attention.self.query"] == 32


def test_bad_method_settings_are_one_line_errors(tiny_overrides, tmp_path):
    with pytest.raises(ConfigError, match="does not apply to adapter.method ia3"):
        load_config(None, ["adapter.method=ia3", "adapter.r=auto", "budget.max_trainable_params=100000"])
    with pytest.raises(ConfigError, match=r"'adapter.init_r' \(2\) must be >= adapter.r \(4\)"):
        load_config(None, ["adapter.method=adalora", "adapter.r=4", "adapter.init_r=2"])
    with pytest.raises(ConfigError, match="did you mean 'adalora'"):
        load_config(None, ["adapter.method=adalorra"])
    with pytest.raises(ConfigError, match="optimizer.name: loraplus"):
        load_config(None, ["adapter.method=vera", "optimizer.name=loraplus"])
    # AdaLoRA's schedule must leave steps to re-allocate ranks; the CLI says so in one line, exit 2, no run folder
    args = _overrides(tiny_overrides, "adalora") + ["adapter.adalora_tinit=4"]
    with pytest.raises(ModelError, match="adalora_tinit"):
        train(load_config(None, args), quiet=True)
    proc = subprocess.run([sys.executable, "-m", "loraclf", "train", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert "Traceback" not in proc.stderr and len(errors) == 1 and "adalora_tinit" in errors[0]
    assert not (tmp_path / "runs" / "tiny").exists()


# adapter parameters per adapted HxH module at rank r, for r=auto
PER_MODULE = {
    "lora": lambda r: r * 2 * H,
    "dora": lambda r: r * 2 * H + H,
    "pissa": lambda r: r * 2 * H,
    "vera": lambda r: H + r,
    "adalora": lambda r: (3 * r // 2) * (2 * H + 1),  # counted at init_r = 1.5 x r, rounded down
    "loha": lambda r: 2 * r * 2 * H,
    "lokr": lambda r: 16 + 2 * 8 * r,  # while w2 (8x8) is split, i.e. r < 4
}


@pytest.mark.parametrize("method", list(PER_MODULE))
def test_r_auto_picks_the_largest_size_under_the_cap(method, tiny_bert):
    cap = HEAD + N * PER_MODULE[method](3)  # exactly r=3 fits; r=4 does not
    cfg = load_config(None, [f"model.name_or_path={tiny_bert}", f"adapter.method={method}", "adapter.r=auto",
                             f"budget.max_trainable_params={cap}"])
    resolved = budget.enforce(cfg, LABELS, log=lambda m: None)
    assert resolved.adapter.r == 3
    assert budget.count_trainable(resolved, LABELS) == cap


def test_adalora_resumes_inside_its_final_phase(tiny_overrides):
    """The checkpoint at step 3 is past AdaLoRA's final allocation (tfinal=3 of 6 steps): resuming must keep masking
    with the same ranks, read back from the pruned (zero) singular values, and end where the uninterrupted run ends."""
    import shutil

    args = _overrides(tiny_overrides, "adalora") + ["adapter.adalora_tfinal=3", "output.save_total_limit=5"]
    full = train(load_config(None, args), quiet=True)
    ranks = full.metrics["adapter_report"]["ranks"]
    shutil.rmtree(full.run_dir / runs.CHECKPOINTS / "step-6")
    resumed = train(load_config(None, args), resume=full.run_dir, quiet=True)
    assert resumed.metrics["global_step"] == 6
    assert resumed.metrics["adapter_report"]["ranks"] == ranks
    assert sum(ranks.values()) == 2 * N
