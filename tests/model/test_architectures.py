"""Target modules per architecture (the presets, and the linear layers listed when none fit), and the seed recipe's
trainable-parameter count, from configs alone (random weights, no download)."""

from __future__ import annotations

import pytest

from conftest import ROOT, make_tiny_model
from loraclf.base.errors import ModelError
from loraclf.config import load_config
from loraclf.model.architectures import resolve_targets


@pytest.mark.parametrize("model_type,expected", [
    ("bert", ["query", "value"]), ("roberta", ["query", "value"]), ("mpnet", ["q", "v"]),
    ("distilbert", ["q_lin", "v_lin"]), ("deberta-v2", ["query_proj", "value_proj"]),
])
def test_default_target_modules_per_architecture(model_type, expected, tmp_path, minilm_path):
    from transformers import AutoModelForSequenceClassification


    folder = make_tiny_model(tmp_path / model_type, minilm_path, model_type)
    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    assert resolve_targets(base, model_type, "qv") == expected


def test_unknown_architecture_and_missing_targets_list_the_linear_layers(tiny_bert):
    from transformers import AutoModelForSequenceClassification


    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    with pytest.raises(ModelError, match=r"no target preset for model type 'gpt9'.*query.*value"):
        resolve_targets(base, "gpt9", "qv")
    with pytest.raises(ModelError, match=r"target module\(s\) q_proj not found.*linear layers are: .*query"):
        resolve_targets(base, "bert", ["q_proj"])


def test_roberta_base_seed_recipe_has_999172_trainable_params():
    """The course report's count, from RobertaConfig() (roberta-base's shape) with random weights, no download."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, RobertaConfig

    from loraclf.model import budget
    from loraclf import model as model_mod

    cfg = load_config(ROOT / "configs" / "agnews_roberta_seed.yaml")
    with torch.device("meta"):
        base = AutoModelForSequenceClassification.from_config(RobertaConfig(num_labels=4))
    targets = resolve_targets(base, "roberta", cfg.adapter.target_modules)
    assert targets == ["query", "value"]
    peft_model = get_peft_model(base, model_mod.peft_config(cfg, base, targets))
    b = budget.param_breakdown(peft_model)
    assert b["trainable"] == 999_172
    assert b["head"] == 593_668  # RoBERTa's dense 768x768 + out_proj, as in the report
    assert b["trainable"] == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert f"{100 * b['trainable'] / b['total']:.4f}" == "0.7952"


