"""Train, then predict and evaluate: the `predict` and `evaluate` commands on a tiny run, and a stock PEFT reload (no
loraclf import) that gives loraclf's outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from loraclf import cli
from loraclf.config import load_config


@pytest.fixture
def trained(tiny_overrides):
    from loraclf.training import train

    return train(load_config(None, tiny_overrides), quiet=True)


def test_predict_and_evaluate_commands(trained, tiny_data, tmp_path, capsys):
    run = str(trained.run_dir)
    out = tmp_path / "sub.csv"
    assert cli.main(["predict", run, "--input", str(tiny_data["test_unlabeled"]), "--output", str(out), "--quiet"]) == 0
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["ID", "Label"] and len(sub) == 2000
    assert sub["ID"].tolist() == pd.read_csv(tiny_data["test_unlabeled"])["ID"].tolist()
    assert set(sub["Label"]) <= {0, 1, 2, 3}

    plain = tmp_path / "texts.csv"
    pd.read_csv(tiny_data["test"])[["text"]].to_csv(plain, index=False)
    full = tmp_path / "full.csv"
    assert cli.main(["predict", run, "--input", str(plain), "--output", str(full), "--format", "full", "--quiet"]) == 0
    f = pd.read_csv(full)
    assert f["ID"].tolist() == list(range(80))
    probs = f[[f"prob_{i}" for i in range(4)]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-4) and (probs.argmax(1) == f["label_id"]).all()

    capsys.readouterr()
    assert cli.main(["evaluate", run, "--data", str(tiny_data["test"]), "--quiet"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    acc = float(line.split("accuracy ")[1].split()[0])
    assert abs(acc - trained.metrics["test"]["accuracy"]) < 1e-4


def test_stock_peft_reload_matches_loraclf_predict(trained, tiny_data):
    """No loraclf import in the reload: PeftModel over AutoModelForSequenceClassification gives the same outputs."""
    code = f"""
import json, sys, torch, pandas as pd
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import PeftModel
run = {str(trained.run_dir)!r}
cfg = json.load(open(run + '/adapter/adapter_config.json'))
base = AutoModelForSequenceClassification.from_pretrained(cfg['base_model_name_or_path'], num_labels=4)
model = PeftModel.from_pretrained(base, run + '/adapter').eval()
tok = AutoTokenizer.from_pretrained(run + '/tokenizer')
texts = pd.read_csv({str(tiny_data['test'])!r})['text'].tolist()
with torch.no_grad():
    enc = tok(texts, truncation=True, max_length=32, padding=True, return_tensors='pt')
    probs = torch.softmax(model(**enc).logits, -1)
assert 'loraclf' not in sys.modules
print(json.dumps(probs.tolist()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stock = np.array(json.loads(out.stdout))

    from helpers_infer import load_run_model
    from loraclf.infer.forward import predict_texts

    model, tok, _, _ = load_run_model(trained.run_dir)
    ours = predict_texts(model, tok, pd.read_csv(tiny_data["test"])["text"].tolist(), max_length=32)
    assert (stock.argmax(1) == ours.argmax(1)).all()
    assert np.abs(stock - ours).max() < 1e-4
