"""Dynamic int8 quantization (loraclf.infer.int8): agreement with fp32, the saved form, and bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_rows
from loraclf.base.errors import ModelError
from loraclf.infer.forward import predict_texts
from loraclf.infer.onnx import INT8_ONNX_FILE
from loraclf.infer.int8 import QUANTIZED_FILE, load_quantized, quantize_model, quantized_linears, save_quantized

TEXTS = [r["text"] for r in tiny_rows(120, seed=7)]


def _fp32(tiny_bert: Path, num_labels: int = 4):
    """The tiny BERT with its Linear weights drawn at 1/sqrt(fan-in) and the head centred on these texts.

    At its init scale (0.02) a random tiny BERT gives nearly the same [CLS] output for every text, so every row
    would get the same class and argmax agreement would be 100% whatever int8 did.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=num_labels).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0, mod.in_features ** -0.5)
        enc = tok(TEXTS, truncation=True, max_length=64, padding=True, return_tensors="pt")
        pooled = model.bert(**enc).pooler_output
        model.classifier.bias.copy_(-model.classifier.weight @ pooled.mean(0))
    return model, tok


def _export(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_int8_agrees_with_fp32_on_most_rows(tiny_bert):
    model, tok = _fp32(tiny_bert)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        q = quantize_model(model)
    assert [str(w.message).splitlines()[0] for w in seen if "quantiz" in str(w.message)] == []
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(quantized_linears(q)) == sorted(linears)  # every nn.Linear, the head's included
    assert isinstance(model.classifier, torch.nn.Linear)  # the fp32 model is left as it was
    fp32 = predict_texts(model, tok, TEXTS, batch_size=16, max_length=64)
    int8 = predict_texts(q, tok, TEXTS, batch_size=16, max_length=64)
    assert (np.bincount(fp32.argmax(-1), minlength=4) >= 10).all()  # every class predicted: agreement can fail
    agree = float((fp32.argmax(-1) == int8.argmax(-1)).mean())
    assert agree >= 0.85, agree  # 92.5% with torch 2.13 (a 32-wide model has small margins)
    assert 0 < np.abs(fp32 - int8).max() < 0.05  # quantized (not the same numbers), and close


def test_saved_int8_model_gives_the_in_memory_outputs(tiny_bert, tmp_path):
    model, tok = _fp32(tiny_bert)
    folder = _export(model, tok, tmp_path / "export")
    q = quantize_model(model)
    path = save_quantized(folder, q)
    assert path == folder / QUANTIZED_FILE and sorted(p.name for p in folder.glob("*.safetensors")) == [
        "model.int8.safetensors", "model.safetensors"]
    loaded = load_quantized(folder)
    assert sorted(quantized_linears(loaded)) == sorted(quantized_linears(q))
    a = predict_texts(q, tok, TEXTS, batch_size=16, max_length=64)
    b = predict_texts(loaded, tok, TEXTS, batch_size=16, max_length=64)
    assert np.array_equal(a, b)
    # saving the fp32 model quantizes it the same way
    save_quantized(folder, model)
    assert np.array_equal(predict_texts(load_quantized(folder), tok, TEXTS, batch_size=16, max_length=64), a)


def test_folder_without_int8_model_is_one_error_line(tmp_path):
    with pytest.raises(ModelError) as e:
        load_quantized(tmp_path)
    assert str(e.value) == (f"{tmp_path} holds no int8 model (model.int8.safetensors); write one with `loraclf "
                            f"export RUN --output DIR --quantize int8`, or predict with --precision fp32")


def test_foreign_or_mismatched_int8_file_is_one_error_line(tiny_bert, tmp_path):
    from safetensors.torch import save_file

    model, tok = _fp32(tiny_bert)
    folder = _export(model, tok, tmp_path / "export")
    save_file({"x": torch.zeros(2)}, str(folder / QUANTIZED_FILE))
    with pytest.raises(ModelError, match=r"is not an int8 model written by loraclf \(no 'loraclf dynamic int8"):
        load_quantized(folder)
    (folder / QUANTIZED_FILE).write_bytes(b"torn")
    with pytest.raises(ModelError, match=r"^cannot read the int8 model .*model\.int8\.safetensors: "):
        load_quantized(folder)
    other, _ = _fp32(tiny_bert, num_labels=6)  # 6 classes saved, config.json says 4
    save_quantized(folder, other)
    with pytest.raises(ModelError) as e:
        load_quantized(folder)
    assert str(e.value) == (f"{folder / QUANTIZED_FILE} does not fit the model of {folder / 'config.json'}: "
                            f"classifier is [6, 32] in the file, [4, 32] in the model; export the run again")


def test_an_unmerged_adapter_is_refused(tiny_bert):
    from peft import LoraConfig, TaskType, get_peft_model

    model, _ = _fp32(tiny_bert)
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query"]))
    with pytest.raises(ModelError, match=r"^int8 quantization needs the merged model"):
        quantize_model(peft_model)


# ------------------------------------------------------------------------------------------ wired into the verbs


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    from helpers_infer import tiny_run_overrides
    from loraclf.config import load_config
    from loraclf.training import train

    root = tmp_path_factory.mktemp("int8_run")
    cfg = load_config(None, tiny_run_overrides(tiny_bert, tiny_data, root, "tiny") + ["adapter.lora_alpha=64"])
    return Path(train(cfg, quiet=True).run_dir)


@pytest.fixture(scope="module")
def int8_export(int8_run, tmp_path_factory) -> Path:
    import json

    from loraclf.cli import main

    out = tmp_path_factory.mktemp("int8_export") / "export"
    assert main(["export", str(int8_run), "--output", str(out), "--quantize", "int8"]) == 0
    info = json.loads((out / "loraclf_export.json").read_text())["quantized"]
    assert info["torch"]["file"] == QUANTIZED_FILE and info["torch"]["bytes"] == (out / QUANTIZED_FILE).stat().st_size
    onnx = info["onnxruntime"]  # the test extras install onnxruntime: both files are written
    assert onnx["file"] == INT8_ONNX_FILE and onnx["bytes"] == (out / INT8_ONNX_FILE).stat().st_size
    assert onnx["fused"]["Attention"] == 2 and onnx["fused"]["SkipLayerNormalization"] == 4  # 2 layers, all fused
    assert onnx["argmax_agree_fp32"] >= 0.8 * onnx["checked_texts"]
    assert info["engine_auto"] in ("torch", "onnxruntime")
    return out


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_export_quantize_and_predict_precision_int8(engine, int8_run, int8_export, tiny_data, tmp_path, capsys):
    from loraclf.cli import main
    from loraclf.infer.onnx import OnnxClassifier
    from loraclf.infer.engine import load_inference_model

    out = int8_export
    texts = pd.read_csv(tiny_data["test"])["text"].tolist()
    from_run = load_inference_model(int8_run, int8_engine=engine)
    from_export = load_inference_model(out, int8_engine=engine)
    fp32 = from_run.predict(texts, precision="fp32")
    a, b = from_run.predict(texts, precision="int8"), from_export.predict(texts, precision="int8")
    if engine == "torch":
        assert sorted(quantized_linears(from_run.int8)) == sorted(quantized_linears(from_export.int8)) != []
    else:  # the run's built in memory, the export's read from its model.int8.onnx
        assert isinstance(from_run.int8, OnnxClassifier) and from_export.int8.path == out / INT8_ONNX_FILE
    assert from_export.int8 is not None and not quantized_linears(from_export.model)  # the fp32 model kept as is
    assert np.allclose(a, b, atol=1e-5)  # the saved int8 file is what quantizing the run in memory gives
    assert 0 < np.abs(a - fp32).max() < 0.05
    for source in (int8_run, out):
        dest = tmp_path / f"pred-{Path(source).name}.csv"
        assert main(["predict", str(source), "--input", str(tiny_data["test"]), "--output", str(dest),
                     "--precision", "int8", "--int8-engine", engine, "--format", "full", "--quiet"]) == 0
        probs = pd.read_csv(dest).filter(like="prob_").to_numpy()
        assert probs.shape == a.shape and np.allclose(probs, a, atol=1e-5)
    capsys.readouterr()
    assert main(["evaluate", str(int8_run), "--data", str(tiny_data["test"]), "--precision", "int8",
                 "--int8-engine", engine, "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_the_int8_onnx_file_runs_in_a_stock_onnxruntime_session(int8_export, tiny_data):
    """The documented loader: onnxruntime.InferenceSession on model.int8.onnx, the tokenizer's tensors in, logits out;
    the export's softmax of them is what loraclf predicts from the export."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from loraclf.infer.engine import load_inference_model

    texts = pd.read_csv(tiny_data["test"])["text"].tolist()[:16]
    sess = ort.InferenceSession(str(int8_export / INT8_ONNX_FILE), providers=["CPUExecutionProvider"])
    enc = AutoTokenizer.from_pretrained(str(int8_export))(texts, padding=True, truncation=True, return_tensors="np")
    logits = sess.run(["logits"], {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()})[0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ours = load_inference_model(int8_export, int8_engine="onnxruntime").predict(texts, precision="int8")
    assert np.allclose(probs, ours, atol=1e-5)


def test_classifier_predicts_int8_and_bad_precisions_are_one_line(int8_run, tiny_data, tmp_path, capsys):
    import loraclf
    from loraclf.cli import main
    from loraclf.base.errors import ConfigError

    clf = loraclf.Classifier.from_run(int8_run)
    texts = pd.read_csv(tiny_data["test"])["text"].tolist()[:20]
    assert np.allclose(clf.predict_proba(texts, precision="int8"), clf.model.predict(texts, precision="int8"))
    with pytest.raises(ConfigError, match=r"'precision' must be one of auto, fp32, bf16, fp16, int8, got 'int4'"):
        clf.predict(texts, precision="int4")
    with pytest.raises(SystemExit) as e:
        main(["predict", str(int8_run), "--input", str(tiny_data["test"]), "--output", str(tmp_path / "p.csv"),
              "--precision", "int4"])
    assert e.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(SystemExit) as e:
        main(["export", str(int8_run), "--output", str(tmp_path / "x"), "--quantize", "int4"])
    assert e.value.code == 2 and not (tmp_path / "x").exists()


def test_serving_several_runs_as_adapters_refuses_int8(int8_run):
    from loraclf.base.errors import LoraclfError
    from loraclf.serve import load_models

    with pytest.raises(LoraclfError, match=r"^--precision int8 serves one run or export at a time"):
        load_models([int8_run, int8_run], precision="int8")


def test_int8_says_once_that_bf16_is_faster_where_amx_runs_it(int8_run, tiny_data, monkeypatch, capsys):
    """On a CPU with AMX, bf16 measured faster than int8 (bench/results/predict_speed_amx.md): one warning line per
    loaded model, and none elsewhere. The CPU's flags are the one thing faked (no test can change the CPU)."""
    from loraclf.base import device
    from loraclf.infer.engine import load_inference_model
    from loraclf.infer.int8 import SLOWER_ON_AMX

    texts = pd.read_csv(tiny_data["test"])["text"].tolist()[:8]
    monkeypatch.setattr(device, "bf16_supported", lambda: True)
    monkeypatch.setattr(device, "on_cpu_only", lambda: True)
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512_bf16"})
    assert not device.has_amx()
    load_inference_model(int8_run).predict(texts, precision="int8")
    assert SLOWER_ON_AMX not in capsys.readouterr().err
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512_bf16", "amx_tile", "amx_bf16"})
    assert device.has_amx()
    model = load_inference_model(int8_run)
    model.predict(texts, precision="int8")
    model.predict(texts, precision="int8")
    assert capsys.readouterr().err.count(SLOWER_ON_AMX) == 1
    model.predict(texts, precision="fp32")
    assert SLOWER_ON_AMX not in capsys.readouterr().err


def test_cpu_flags_read_this_machines_cpuinfo():
    from loraclf.base import device

    flags = device.cpu_flags()
    if not Path("/proc/cpuinfo").exists():
        assert flags == set()
        return
    line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    assert flags == set(line.split(":", 1)[1].split()) and flags
    assert device.has_amx() == (device.on_cpu_only() and "amx_bf16" in flags and device.bf16_supported())


# ------------------------------------------------------------------------------------------ the two engines


def test_onnxruntime_int8_agrees_with_fp32_on_most_rows(tiny_bert, tmp_path):
    from loraclf.infer.onnx import OnnxClassifier, write_int8

    model, tok = _fp32(tiny_bert)
    info = write_int8(model, tok, tmp_path, TEXTS[:32], 64)
    assert info["fused"] == {"EmbedLayerNormalization": 1, "Attention": 2, "BiasGelu": 2, "SkipLayerNormalization": 4}
    q = OnnxClassifier(tmp_path / INT8_ONNX_FILE, model.config)
    assert list(q.parameters()) == []  # a session, run by loraclf's predict path as it is
    fp32 = predict_texts(model, tok, TEXTS, batch_size=16, max_length=64)
    int8 = predict_texts(q, tok, TEXTS, batch_size=16, max_length=64)
    assert (np.bincount(fp32.argmax(-1), minlength=4) >= 10).all()  # every class predicted: agreement can fail
    agree = float((fp32.argmax(-1) == int8.argmax(-1)).mean())
    assert agree >= 0.85, agree
    assert 0 < np.abs(fp32 - int8).max() < 0.05


def test_int8_onnx_without_fusion_still_works(tiny_bert, tmp_path, monkeypatch):
    """A family outside the fused list, or a graph the optimizer cannot read, is quantized unfused."""
    from loraclf.infer import onnx as onnx_graph

    model, tok = _fp32(tiny_bert)
    monkeypatch.setattr(onnx_graph, "FUSED_TYPES", ())
    info = onnx_graph.write_int8(model, tok, tmp_path, TEXTS[:32], 64)
    assert info["fused"] == {} and info["fusion"] == "none: bert is not a BERT-layout family"

    def unreadable(*_):
        raise RuntimeError("cannot fuse this graph")

    monkeypatch.setattr(onnx_graph, "FUSED_TYPES", ("bert",))
    monkeypatch.setattr(onnx_graph, "_fuse", unreadable)
    info = onnx_graph.write_int8(model, tok, tmp_path, TEXTS[:32], 64)
    assert info["fusion"] == "skipped: cannot fuse this graph"
    assert info["argmax_agree_fp32"] >= 0.8 * info["checked_texts"]


def test_auto_engine_follows_the_cpus_int8_instructions(monkeypatch):
    """onnxruntime where the CPU has VNNI or AMX-INT8 (measured faster there), torch elsewhere and without
    onnxruntime. The CPU's flags and the install are the things faked (no test can change them)."""
    from loraclf.base import device
    from loraclf.infer import int8 as quantize
    from loraclf.base.errors import ConfigError

    for flags, want in (({"avx2", "avx512_vnni"}, "onnxruntime"), ({"avx2", "avx_vnni"}, "onnxruntime"),
                        ({"amx_bf16", "amx_int8"}, "onnxruntime"), ({"avx2", "fma"}, "torch"), (set(), "torch")):
        monkeypatch.setattr(device, "cpu_flags", lambda flags=flags: flags)
        assert quantize.resolve_engine("auto") == want, flags
        assert quantize.resolve_engine("torch") == "torch"
    monkeypatch.setattr(quantize, "onnxruntime_installed", lambda: False)
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512_vnni"})
    assert quantize.resolve_engine("auto") == "torch"
    with pytest.raises(ConfigError) as e:
        quantize.resolve_engine("onnxruntime")
    assert str(e.value) == ("'--int8-engine' onnxruntime needs onnx and onnxruntime: pip install 'loraclf[export]'; "
                            "or use --int8-engine torch")


def test_bad_int8_engine_is_one_line(int8_run, tiny_data, tmp_path, capsys):
    import loraclf
    from loraclf.cli import main
    from loraclf.base.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^'--int8-engine' must be one of auto, torch, onnxruntime, got 'tpu'$"):
        loraclf.Classifier.from_run(int8_run, int8_engine="tpu")
    with pytest.raises(SystemExit) as e:
        main(["predict", str(int8_run), "--input", str(tiny_data["test"]), "--output", str(tmp_path / "p.csv"),
              "--precision", "int8", "--int8-engine", "tpu"])
    assert e.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_int8_defaults_to_smaller_batches_and_an_explicit_batch_size_wins(int8_run, tiny_data, monkeypatch):
    """batch_size None: PREDICT_BATCH, INT8_PREDICT_BATCH for int8 (faster there, loraclf.config.limits); a given one stays."""
    import loraclf.infer.forward as predict_mod
    from loraclf.config import INT8_PREDICT_BATCH, PREDICT_BATCH
    from loraclf.infer.engine import load_inference_model

    seen = []
    real = predict_mod.token_batches
    monkeypatch.setattr(predict_mod, "token_batches", lambda lengths, bs, cap: seen.append(bs) or real(lengths, bs, cap))
    im = load_inference_model(int8_run, int8_engine="torch")
    texts = pd.read_csv(tiny_data["test"])["text"].tolist()
    for precision in ("fp32", "int8"):
        im.predict(texts, precision=precision)
        im.predict(texts, batch_size=8, precision=precision)
    assert seen == [PREDICT_BATCH, 8, INT8_PREDICT_BATCH, 8] and INT8_PREDICT_BATCH < PREDICT_BATCH
