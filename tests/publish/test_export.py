"""Fast prediction and `loraclf export`: real trained runs, stock transformers loading the export, ONNX checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from loraclf.cli import main
from loraclf.config import load_config
from loraclf.publish.export import export_run
from loraclf.runs import EXPORT_INFO
from loraclf.infer.engine import load_inference_model
from loraclf.infer.files import predict_file
from loraclf.infer.forward import token_batches
from loraclf.training import train

from helpers_infer import run_blocked, tiny_run_overrides

# A child interpreter in which loraclf and peft cannot be imported (None in sys.modules is how Python marks a
# module as unimportable; transformers' availability probe then sees peft as not installed): proves the export
# stands alone.
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    root = tmp_path_factory.mktemp("export_tiny")
    # lora_alpha large so the merged delta visibly moves the weights: a merge that dropped it would be caught.
    cfg = load_config(None, tiny_run_overrides(tiny_bert, tiny_data, root, "tiny") + ["adapter.lora_alpha=64"])
    res = train(cfg, quiet=True)
    return Path(res.run_dir)


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model"
    export_run(tiny_run, out, onnx=True)
    return out


# ------------------------------------------------------------------------------------------ batching


def test_token_batches_cover_every_index_once_and_respect_the_caps():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 129, size=1000)
    batches = token_batches(lengths, batch_size=16, max_tokens=16 * 128)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    for b in batches:
        assert len(b) <= 64
        assert len(b) * lengths[b].max() <= 16 * 128 or len(b) == 1
    # short texts get larger batches than long ones
    assert len(batches[-1]) > len(batches[0])
    assert len(batches[0]) == 16


def test_predict_texts_returns_input_order_and_matches_one_by_one(tiny_run, tiny_data):
    im = load_inference_model(tiny_run)
    texts = pd.read_csv(tiny_data["test"])["text"].tolist()[:20]
    texts[5] = ""  # an empty text is predicted, not dropped
    texts[7] = "word " * 500  # truncated at max_length
    batched = im.predict(texts, batch_size=8)
    single = np.stack([im.predict([t], batch_size=1)[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.shape == (20, 4)
    assert len(set(batched.argmax(-1).tolist())) >= 1
    np.testing.assert_allclose(batched.sum(-1), 1.0, atol=1e-5)


def test_bf16_precision_stays_close_to_fp32(tiny_run, tiny_data):
    im = load_inference_model(tiny_run)
    texts = pd.read_csv(tiny_data["test"])["text"].tolist()
    p32 = im.predict(texts, precision="fp32")
    p16 = im.predict(texts, precision="bf16")
    assert np.abs(p32 - p16).max() < 0.05
    assert not np.array_equal(p32, p16)  # bf16 really ran


# ------------------------------------------------------------------------------------------ export


def test_export_writes_a_standalone_fp32_folder(tiny_export, tiny_run):
    names = sorted(p.name for p in tiny_export.iterdir())
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert "model.onnx" in names and EXPORT_INFO in names
    assert not any(n.startswith("adapter") for n in names)
    cfg = json.loads((tiny_export / "config.json").read_text())
    labels = json.loads((tiny_run / "label_map.json").read_text())["id2label"]
    assert cfg["id2label"] == labels
    assert cfg["label2id"] == {v: int(k) for k, v in labels.items()}
    from safetensors import safe_open

    with safe_open(str(tiny_export / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
    assert not any("lora" in k or "modules_to_save" in k for k in keys)
    info = json.loads((tiny_export / EXPORT_INFO).read_text())
    assert info["max_length"] == 32 and info["onnx"]["max_abs_diff"] <= 1e-4


def test_export_loads_with_stock_transformers_and_predicts_like_loraclf(tiny_export, tiny_run, tiny_data, tmp_path):
    texts = pd.read_csv(tiny_data["test"])["text"].tolist()
    ours = tmp_path / "ours.csv"
    predict_file(tiny_run, tiny_data["test"], ours, fmt="full", precision="fp32", quiet=True)
    ours_df = pd.read_csv(ours)
    out = run_blocked(f"""
        import json, sys, torch
        import pandas as pd
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
        texts = pd.read_csv({str(tiny_data['test'])!r})["text"].tolist()
        model = AutoModelForSequenceClassification.from_pretrained({str(tiny_export)!r}).eval()
        tok = AutoTokenizer.from_pretrained({str(tiny_export)!r})
        with torch.inference_mode():
            enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits, -1).tolist()
        clf = pipeline("text-classification", model={str(tiny_export)!r}, device="cpu")
        pipe = [r["label"] for r in clf(texts, truncation=True)]
        print(json.dumps({{"probs": probs, "pipe": pipe, "peft": sys.modules.get("peft") is not None}}))
    """)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["peft"] is False
    ref = ours_df[[c for c in ours_df.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(np.array(got["probs"]), ref, atol=1e-5)
    assert got["pipe"] == ours_df["label"].astype(str).tolist()
    assert len(texts) == 80


def test_predict_reads_an_export_folder_too(tiny_export, tiny_run, tiny_data, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    predict_file(tiny_run, tiny_data["test"], a, quiet=True)
    predict_file(tiny_export, tiny_data["test"], b, quiet=True)
    assert pd.read_csv(a).equals(pd.read_csv(b))
    assert list(pd.read_csv(a).columns) == ["ID", "Label"]


def test_export_refuses_a_non_empty_folder_without_overwrite(tiny_run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(tiny_run), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["export", str(tiny_run), "--output", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_export_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run folder not found" in err
    assert not (tmp_path / "out").exists()


def test_onnx_graph_runs_at_other_batch_and_sequence_sizes(tiny_export, tiny_data):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_export))
    model = load_inference_model(tiny_export, device="cpu").model  # onnxruntime's CPU provider against torch on the CPU
    sess = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    texts = pd.read_csv(tiny_data["test"])["text"].tolist()[:11]
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, {n: enc[n].astype(np.int64) for n in names})[0]
    with torch.inference_mode():
        ref = model(**{n: torch.from_numpy(enc[n]) for n in names}).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


# ------------------------------------------------------------------------------------------ predict input formats


def test_predict_txt_ids_are_line_numbers_when_lines_are_blank(tiny_run, tiny_data, tmp_path):
    texts = pd.read_csv(tiny_data["test"])["text"].head(3).tolist()
    (tmp_path / "in.txt").write_text(f"{texts[0]}\n\n{texts[1]}\n   \n{texts[2]}\n")
    assert main(["predict", str(tiny_run), "--input", str(tmp_path / "in.txt"), "--output",
                 str(tmp_path / "out.csv"), "--quiet"]) == 0
    assert pd.read_csv(tmp_path / "out.csv")["ID"].tolist() == [0, 2, 4]


def test_predict_reads_every_input_format_and_writes_both_output_formats(tiny_run, tiny_data, tmp_path, capsys):
    df = pd.read_csv(tiny_data["test"])[["text"]].head(12)
    df.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "in.parquet")
    (tmp_path / "in.txt").write_text("\n".join(df["text"]) + "\n")
    df.to_pickle(tmp_path / "in.pkl")
    results = {}
    for name in ("in.jsonl", "in.parquet", "in.txt"):
        assert main(["predict", str(tiny_run), "--input", str(tmp_path / name), "--output",
                     str(tmp_path / f"{name}.csv"), "--quiet"]) == 0
        results[name] = pd.read_csv(tmp_path / f"{name}.csv")
    assert main(["predict", str(tiny_run), "--input", str(tmp_path / "in.pkl"), "--output", str(tmp_path / "p.csv")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), "--input", str(tmp_path / "in.pkl"), "--output", str(tmp_path / "p.csv"),
                 "--allow-pickle", "--format", "full", "--quiet"]) == 0
    full = pd.read_csv(tmp_path / "p.csv")
    first = results["in.jsonl"]
    assert list(first.columns) == ["ID", "Label"] and first["ID"].tolist() == list(range(12))
    for other in results.values():
        assert other.equals(first)
    id2label = json.loads((tiny_run / "label_map.json").read_text())["id2label"]
    assert list(full.columns) == ["ID", "label", "label_id", "confidence"] + [f"prob_{id2label[str(i)]}" for i in range(4)]
    np.testing.assert_allclose(full.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
    assert full["label_id"].tolist() == first["Label"].tolist()  # AG News labels are integers: Label is the id


# ------------------------------------------------------------------------------------------ real MiniLM


@pytest.mark.pretrained
def test_real_minilm_export_predicts_like_loraclf_predict(minilm_path, tiny_data, tmp_path):
    cfg = load_config(None, [
        "model.name_or_path=packaged:minilm-l6", f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['val']}", f"data.test={tiny_data['test']}", "data.max_length=64",
        "train.max_steps=15", "train.per_device_train_batch_size=16", "train.mixed_precision=fp32",
        "eval.eval_steps=15", "output.report=false", f"output.dir={tmp_path / 'runs'}", "output.run_name=minilm",
        f"data.cache_dir={tmp_path / 'cache'}",
    ])
    run = Path(train(cfg, quiet=True).run_dir)
    export_run(run, tmp_path / "export")
    ours = tmp_path / "ours.csv"
    predict_file(run, tiny_data["test"], ours, fmt="full", precision="fp32", quiet=True)
    ours_df = pd.read_csv(ours)
    out = run_blocked(f"""
        import json
        import pandas as pd
        from transformers import pipeline
        texts = pd.read_csv({str(tiny_data['test'])!r})["text"].tolist()
        clf = pipeline("text-classification", model={str(tmp_path / 'export')!r}, device="cpu", top_k=None)
        res = clf(texts, truncation=True, batch_size=16)
        print(json.dumps([{{d["label"]: d["score"] for d in r}} for r in res]))
    """)
    pipe = json.loads(out.strip().splitlines()[-1])
    names = [c[len("prob_"):] for c in ours_df.columns if c.startswith("prob_")]
    pipe_probs = np.array([[r[n] for n in names] for r in pipe])
    np.testing.assert_allclose(pipe_probs, ours_df[[f"prob_{n}" for n in names]].to_numpy(), atol=1e-4)
    assert [names[i] for i in pipe_probs.argmax(-1)] == ours_df["label"].astype(str).tolist()


def test_predict_the_kaggle_pickle_matches_the_csv_of_the_same_texts(tiny_run, ag_news, tmp_path):
    from conftest import need

    pkl = need(ag_news.parent / "kaggle" / "test_unlabelled.pkl", "the Kaggle-style pickled Dataset")
    assert main(["predict", str(tiny_run), "--input", str(pkl), "--output", str(tmp_path / "a.csv"),
                 "--allow-pickle", "--quiet"]) == 0
    assert main(["predict", str(tiny_run), "--input", str(ag_news / "test_unlabeled.csv"), "--output",
                 str(tmp_path / "b.csv"), "--quiet"]) == 0
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert list(a.columns) == ["ID", "Label"] and a["ID"].tolist() == list(range(2000))
    assert a.equals(b)


def test_an_ia3_run_exports_merged_and_loads_without_peft(tiny_bert, tiny_data, tmp_path):
    cfg = load_config(None, tiny_run_overrides(tiny_bert, tiny_data, tmp_path, "ia3") + ["adapter.method=ia3"])
    run = Path(train(cfg, quiet=True).run_dir)
    export_run(run, tmp_path / "export")
    ours = load_inference_model(run).predict(pd.read_csv(tiny_data["test"])["text"].tolist()[:16])
    out = run_blocked(f"""
        import json, torch
        import pandas as pd
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        texts = pd.read_csv({str(tiny_data['test'])!r})["text"].tolist()[:16]
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / 'export')!r}).eval()
        tok = AutoTokenizer.from_pretrained({str(tmp_path / 'export')!r})
        with torch.inference_mode():
            print(json.dumps(torch.softmax(model(**tok(texts, padding=True, truncation=True, return_tensors="pt")).logits, -1).tolist()))
    """)
    np.testing.assert_allclose(np.array(json.loads(out.strip().splitlines()[-1])), ours, atol=1e-5)
