"""Parameter budget: the meta-device count equals the count of the model train builds (5 architectures x 3 heads x
4 presets), roberta-base's 999,172, the over-budget error through the CLI, adapter.r=auto, and save -> reload ->
identical logits for every head design, in loraclf and in stock PEFT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model
from helpers_infer import load_run_model
from loraclf.model import budget
from loraclf import model as model_mod
from loraclf.cli import main
from loraclf.config import load_config
from loraclf.base.errors import BudgetError, ModelError

ROOT = Path(__file__).resolve().parents[2]
SEED_CONFIG = ROOT / "configs" / "agnews_roberta_seed.yaml"
FAMILIES = ("roberta", "bert", "mpnet", "distilbert", "deberta-v2")
HEADS = ("full", "linear", "lora")
PRESETS = ("qv", "qkv", "attention", "all-linear")
H, LAYERS, LABELS = 32, 2, 4  # the tiny models: hidden 32, 2 layers; 4 classes
ID2LABEL = {i: f"c{i}" for i in range(LABELS)}
# PEFT picks modules_to_save by name suffix: distilbert's 'classifier' also picks 'pre_classifier', the LoRA head's layer
UNSUPPORTED = {("distilbert", "lora")}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, minilm_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("budget_models")
    return {t: make_tiny_model(root / t, minilm_path, t) for t in FAMILIES}


def _cfg(folder: Path, *overrides: str):
    return load_config(None, [f"model.name_or_path={folder}", "data.label_names=[a, b, c, d]", *overrides])


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_count_equals_the_built_model(tiny_models, family):
    """budget's count (meta device, no weights) == trainable parameters of the model build_model returns."""
    cases = [(h, p, None) for h in HEADS for p in PRESETS] + [(h, "all-linear", 1) for h in HEADS]
    seen = set()
    for head, preset, top in cases:
        o = [f"adapter.head={head}", f"adapter.target_modules={preset}", "adapter.r=3"]
        if top:
            o.append(f"adapter.layers_to_transform={top}")
        cfg = _cfg(tiny_models[family], *o)
        if (family, head) in UNSUPPORTED:
            for build in (lambda: model_mod.build_model(cfg, ID2LABEL), lambda: budget.count_trainable(cfg, LABELS)):
                with pytest.raises(ModelError, match="adapter.head=lora is not available for distilbert"):
                    build()
            continue
        model, _ = model_mod.build_model(cfg, ID2LABEL)
        real = _trainable(model)
        assert budget.count_trainable(cfg, LABELS) == real, (family, head, preset, top)
        rep = budget.budget_report(cfg)
        assert rep["trainable"] == real
        assert rep["adapter_params"] + rep["head_params"] + rep["other_params"] == real
        assert rep["head_params"] >= H * LABELS + LABELS  # the output layer is always trained
        out_layer = [n for n, p in model.named_parameters() if p.requires_grad and p.shape == (LABELS, H)]
        assert len(out_layer) == 1, out_layer
        seen.add(real)
    assert len(seen) >= 10  # the designs and presets really differ


def test_roberta_base_seed_config_is_999172():
    """The course report's recipe: r=11 on query and value of roberta-base, full head, from RobertaConfig()."""
    cfg = load_config(SEED_CONFIG)
    rep = budget.budget_report(cfg)
    assert rep["trainable"] == 999_172
    assert rep["adapter_params"] == 2 * 12 * 11 * (768 + 768) == 405_504
    assert rep["head_params"] == (768 * 768 + 768) + (768 * 4 + 4) == 593_668
    assert rep["fits"] is True and rep["largest_fitting_r"] == 11
    assert rep["model_params"] == 124_648_708 + 405_504  # roberta-base classifier + the adapter
    assert f"{rep['peft_percent']:.4f}" == "0.7952"  # the report's figure: PEFT also counts its spare head copy
    rows = {(r["module"], r["param"]): r for r in rep["adapter_rows"]}
    assert rows[("attention.self.query", "lora_A")]["shape"] == "11 x 768"
    assert rows[("attention.self.value", "lora_B")]["layers"] == 12
    assert budget.count_trainable(cfg, 4) == 999_172


@pytest.mark.parametrize("head,preset,r", [
    ("full", "qv", 11), ("linear", "qv", 27), ("lora", "qv", 25), ("full", "all-linear", 2), ("linear", "qkv", 18),
])
def test_roberta_base_auto_rank_under_1m(head, preset, r):
    cfg = load_config(SEED_CONFIG, [f"adapter.head={head}", f"adapter.target_modules={preset}", "adapter.r=auto"])
    got = budget.enforce(cfg, 4, log=lambda m: None)
    assert got.adapter.r == r
    assert budget.count_trainable(got, 4) <= 1_000_000
    over = load_config(SEED_CONFIG, [f"adapter.head={head}", f"adapter.target_modules={preset}", f"adapter.r={r + 1}"])
    assert budget.count_trainable(over, 4) > 1_000_000


def test_head_designs_train_what_they_say(tiny_models):
    out = H * LABELS + LABELS
    # roberta: linear = out_proj on an identity dense; lora = out_proj + rank-3 A, B on the frozen dense
    m, _ = model_mod.build_model(_cfg(tiny_models["roberta"], "adapter.head=linear", "adapter.r=3"), ID2LABEL)
    head = {n: p for n, p in m.named_parameters() if "modules_to_save" in n}
    dense = next(p for n, p in head.items() if n.endswith("dense.weight"))
    assert not dense.requires_grad and torch.equal(dense, torch.eye(H))
    assert sum(p.numel() for p in head.values() if p.requires_grad) == out
    m, _ = model_mod.build_model(_cfg(tiny_models["roberta"], "adapter.head=lora", "adapter.r=3"), ID2LABEL)
    rep = budget.breakdown(m, ["classifier.out_proj"], "classifier.dense")
    assert rep["head_params"] == out + 3 * (H + H)
    # bert: linear = the classifier on the pretrained pooler, which stays frozen and unchanged
    cfg = _cfg(tiny_models["bert"], "adapter.head=linear")
    m, _ = model_mod.build_model(cfg, ID2LABEL)
    from transformers import AutoModel

    pretrained = AutoModel.from_pretrained(tiny_models["bert"]).pooler.dense.weight
    pooler = next(p for n, p in m.named_parameters() if "pooler.modules_to_save" in n and n.endswith("dense.weight"))
    assert not pooler.requires_grad and torch.equal(pooler, pretrained)
    assert budget.count_trainable(cfg, LABELS) == 2 * LAYERS * 8 * (H + H) + out


# ------------------------------------------------------------------------------------------ enforcement


def _bert_fit_numbers():
    head = (H * H + H) + (H * LABELS + LABELS)  # bert full head: pooler.dense + classifier
    per_r = LAYERS * 2 * (H + H)  # qv
    return head, per_r


def test_auto_rank_is_the_largest_that_fits(tiny_models):
    head, per_r = _bert_fit_numbers()
    cap = head + 3 * per_r + per_r // 2  # r=3 fits, r=4 does not
    cfg = _cfg(tiny_models["bert"], "adapter.r=auto", f"budget.max_trainable_params={cap}")
    logs = []
    got = budget.enforce(cfg, LABELS, log=logs.append)
    assert got.adapter.r == 3
    assert budget.count_trainable(got, LABELS) == head + 3 * per_r <= cap
    four = _cfg(tiny_models["bert"], "adapter.r=4")
    assert budget.count_trainable(four, LABELS) > cap
    assert "r=3" in logs[0] and "r=4 would need" in logs[0]
    # exactly at the cap still fits
    exact = _cfg(tiny_models["bert"], "adapter.r=auto", f"budget.max_trainable_params={head + 4 * per_r}")
    assert budget.enforce(exact, LABELS, log=lambda m: None).adapter.r == 4


def test_no_rank_fits(tiny_models):
    head, _ = _bert_fit_numbers()
    cfg = _cfg(tiny_models["bert"], "adapter.r=auto", f"budget.max_trainable_params={head}")
    with pytest.raises(BudgetError, match=r"even r=1 needs 1,444 .*adapter.head=linear"):
        budget.enforce(cfg, LABELS, log=lambda m: None)
    cfg = _cfg(tiny_models["bert"], "adapter.r=4", f"budget.max_trainable_params={head}")
    with pytest.raises(BudgetError, match=r"r=4 has 2,212 .* even r=1 needs 1,444"):
        budget.enforce(cfg, LABELS, log=lambda m: None)


def test_over_budget_train_exits_2_with_one_line(tiny_overrides, tmp_path):
    head, per_r = _bert_fit_numbers()
    cap = head + 3 * per_r + 1
    env = {**os.environ, "CI": os.environ.get("CI", "")}
    proc = subprocess.run([sys.executable, "-m", "loraclf", "train", *tiny_overrides, "adapter.r=8",
                           f"budget.max_trainable_params={cap}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("loraclf train: error")]
    assert len(err) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    n8 = head + 8 * per_r
    assert f"has {n8:,} trainable parameters" in err[0]
    assert f"budget.max_trainable_params={cap:,}" in err[0]
    assert "largest rank that fits is r=3" in err[0]
    assert not (tmp_path / "runs" / "tiny").exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_auto_rank_in_a_real_training_run(tiny_overrides):
    from loraclf.training import train

    head, per_r = _bert_fit_numbers()
    cfg = load_config(None, tiny_overrides + ["adapter.r=auto", f"budget.max_trainable_params={head + 5 * per_r}",
                                              "train.max_steps=2", "eval.eval_steps=2"])
    result = train(cfg, quiet=True)
    saved = load_config(result.run_dir / "config.yaml")
    assert saved.adapter.r == 5
    assert result.params["trainable"] == head + 5 * per_r
    assert json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())["r"] == 5


# ------------------------------------------------------------------------------------------ the command


def test_budget_command_text_and_json(capsys):
    assert main(["budget", str(SEED_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "999,172" in out and "fits, 828 to spare" in out and "built-in copy of roberta-base" in out
    assert main(["budget", str(SEED_CONFIG), "adapter.r=12", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["fits"] is False and rep["largest_fitting_r"] == 11 and rep["trainable"] == 999_172 + 36_864


def test_budget_counts_labels_from_the_data(tiny_bert, tiny_data, capsys):
    cfg = load_config(None, [f"model.name_or_path={tiny_bert}", f"data.train={tiny_data['train']}"])
    rep = budget.budget_report(cfg)
    assert rep["num_labels"] == 4 and rep["num_labels_from"] == "the training labels"
    assert budget.budget_report(cfg, num_labels=7)["head_params"] == (H * H + H) + (H * 7 + 7)
    assert main(["budget", f"model.name_or_path={tiny_bert}", "data.name=no-such-dataset-offline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-labels" in err[0]


def test_unknown_head_layout_fails_clearly(tmp_path, minilm_path):
    folder = make_tiny_model(tmp_path / "albert", minilm_path, "albert")
    cfg = _cfg(folder, "adapter.head=linear", "adapter.target_modules=[query, value]")
    with pytest.raises(ModelError, match="adapter.head=full"):
        budget.count_trainable(cfg, LABELS)


# ------------------------------------------------------------------------------------------ save and reload


def _randomise(model) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_head_reloads_in_stock_peft(tiny_models, tmp_path, family):
    """Save with loraclf, reload with nothing but transformers + PEFT into a freshly (differently) initialised
    base: the logits are the trained ones, for every head design."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models[family])
    batch = tok(["a short text", "another, longer text about markets"], return_tensors="pt", padding=True)
    if family in ("distilbert", "mpnet"):  # their forward takes no token_type_ids
        batch.pop("token_type_ids", None)
    for head in HEADS:
        if (family, head) in UNSUPPORTED:
            continue
        torch.manual_seed(0)
        model, _ = model_mod.build_model(_cfg(tiny_models[family], f"adapter.head={head}", "adapter.r=3"), ID2LABEL)
        _randomise(model)
        model.eval()
        with torch.no_grad():
            want = model(**batch).logits
        out = tmp_path / family / head
        model_mod.save_adapter(model, None, out)
        torch.manual_seed(123)  # a different random head than the one trained
        base = AutoModelForSequenceClassification.from_pretrained(tiny_models[family], num_labels=LABELS)
        stock = PeftModel.from_pretrained(base, str(out)).eval()
        with torch.no_grad():
            got = stock(**batch).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{family} head={head}")


@pytest.mark.parametrize("head", ["linear", "lora"])
def test_trained_run_reloads_in_loraclf(tiny_overrides, tmp_path, head, minilm_path):
    """A real (6-step) run of a tiny RoBERTa per head design: loraclf's reload, merged and unmerged, predicts the
    validation probabilities the run wrote."""
    import pandas as pd

    from loraclf.training import train

    folder = make_tiny_model(tmp_path / "roberta", minilm_path, "roberta")
    cfg = load_config(None, tiny_overrides + [f"model.name_or_path={folder}", f"adapter.head={head}", "adapter.r=4"])
    result = train(cfg, quiet=True)
    val = pd.read_csv(result.run_dir / "val_predictions.csv")
    tok = None
    for merge in (True, False):
        model, tok, id2label, _ = load_run_model(result.run_dir, merge=merge)
        enc = tok(list(val["text"]), return_tensors="pt", padding=True, truncation=True, max_length=32)
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits.float(), -1)
        assert [id2label[int(i)] for i in probs.argmax(-1)] == list(val["predicted"].astype(str))
        torch.testing.assert_close(probs.max(-1).values, torch.tensor(val["confidence"].to_numpy(), dtype=torch.float32),
                                   atol=2e-5, rtol=0)


METHODS = ("lora", "dora", "rslora", "pissa", "vera", "ia3", "adalora", "loha", "lokr")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_counted_exactly_and_the_lora_head_reloads(tiny_models, tmp_path, method):
    """The budget stays method-agnostic: each PEFT method x each head design counts exactly on the meta device,
    and the lora head (the adapted dense saved merged) reloads in stock PEFT with the same logits."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tiny_models["roberta"]
    extra = ["adapter.adalora_tinit=1", "adapter.adalora_tfinal=1"] if method == "adalora" else []
    for head in HEADS:
        cfg = _cfg(folder, f"adapter.method={method}", f"adapter.head={head}", "adapter.r=4", *extra)
        torch.manual_seed(0)
        model, _ = model_mod.build_model(cfg, ID2LABEL, total_steps=100)
        assert budget.count_trainable(cfg, LABELS) == _trainable(model), (method, head)
    # the last one built is head=lora
    _randomise(model)
    tok = AutoTokenizer.from_pretrained(folder)
    batch = tok(["a short text", "another, longer text about markets"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model.eval()(**batch).logits
    model_mod.save_adapter(model, None, tmp_path / "adapter")
    torch.manual_seed(5)
    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=LABELS)
    stock = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(**batch).logits, want, rtol=1e-5, atol=1e-5)


def test_budget_counts_the_few_shot_recipes_adapter(tiny_bert, capsys):
    """train.few_shot=true adapts every linear layer where the targets are left at their default: budget counts that
    run; under auto it counts the config's own targets and says in one line on stderr that a small data set trains
    more."""
    base = [f"model.name_or_path={tiny_bert}", "--num-labels", "4", "--json"]
    assert main(["budget", *base, "train.few_shot=true"]) == 0
    few = json.loads(capsys.readouterr().out)
    assert main(["budget", *base, "adapter.target_modules=all-linear", "train.few_shot=false"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert main(["budget", *base]) == 0
    out = capsys.readouterr()
    auto = json.loads(out.out)
    assert few["trainable"] == wide["trainable"] > auto["trainable"]
    assert "train.few_shot=auto adapts every linear layer" in out.err and len(out.err.strip().splitlines()) == 1
    assert main(["budget", *base, "budget.max_trainable_params=10000000"]) == 0  # a cap keeps the targets: no note
    assert "train.few_shot" not in capsys.readouterr().err
