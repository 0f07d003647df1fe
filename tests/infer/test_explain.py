"""`loraclf explain`, `Classifier.explain` and the explanation page (issue 41): Integrated Gradients on the word
embeddings, merged into words, for every problem type and both sides of a pair, windows of a chunked document
stitched back; the bad inputs; and, on the packaged MiniLM, that deleting the top-attributed words lowers the
predicted class's probability more than deleting random words (the attributions mean something)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import loraclf
from conftest import AG_NEWS, IN_CI, need
from helpers_infer import tiny_run_overrides
from helpers_problem import MULTI, PAIRS, REGRESSION, problem_rows, type_overrides
from loraclf.base.errors import DataError, ModelError
from loraclf.cli import main
from loraclf.config import load_config
from loraclf.infer import explain as explain_mod
from loraclf.infer.engine import load_inference_model
from loraclf.training import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    root = tmp_path_factory.mktemp("explain_tiny")
    return Path(train(load_config(None, tiny_run_overrides(tiny_bert, tiny_data, root, "tiny")), quiet=True).run_dir)


@pytest.fixture(scope="module")
def type_runs(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    """A tiny run of multi-label, regression and sentence pairs, on rows made here."""
    root = tmp_path_factory.mktemp("explain_types")
    paths = {}
    for seed, (name, n) in enumerate({"train": 40, "val": 16}.items()):
        paths[name] = root / f"{name}.csv"
        problem_rows(n, seed).to_csv(paths[name], index=False)
    out = {}
    for kind in (MULTI, REGRESSION, PAIRS):
        cfg = load_config(None, [f"model.name_or_path={tiny_bert}", f"data.train={paths['train']}",
                                 f"data.validation={paths['val']}", "data.max_length=24", "train.max_steps=2",
                                 "train.per_device_train_batch_size=8", "train.mixed_precision=fp32",
                                 "output.report=false", f"output.dir={root / 'runs'}", f"output.run_name={kind}",
                                 f"data.cache_dir={root / 'cache'}", *type_overrides(kind)])
        out[kind] = Path(train(cfg, quiet=True).run_dir)
    return out


def test_one_score_per_word_for_the_predicted_label(tiny_run):
    clf = loraclf.Classifier.from_run(tiny_run, device="cpu")
    text = "the striker scored twice as the league leaders won again"
    e = clf.explain(text, quiet=True)
    assert [w["word"] for w in e["words"]] == text.split()
    assert all(np.isfinite(w["score"]) for w in e["words"])
    assert e["target"] == clf.predict(text, quiet=True) or str(e["target"]) == str(clf.predict(text, quiet=True))
    assert e["prediction"] == clf.predict(text, quiet=True)
    # Integrated Gradients' completeness: the scores add up to output - baseline output, up to the reported gap
    assert abs(e["delta"]) <= 0.05 * max(abs(e["output"]), 1e-3) + 1e-4
    named = clf.explain([text], target=clf.labels[0], quiet=True)[0]
    assert named["target"] == clf.labels[0]


def test_every_problem_type_and_both_sides_of_a_pair(type_runs):
    multi = loraclf.Classifier.from_run(type_runs[MULTI], device="cpu")
    e = multi.explain("coach league striker goal season shares profit", quiet=True)
    assert e["target"] in multi.labels and 0.0 <= e["output"] <= 1.0 and len(e["words"]) == 7
    reg = loraclf.Classifier.from_run(type_runs[REGRESSION], device="cpu")
    e = reg.explain("coach league shares profit", quiet=True)
    assert e["target"] == reg.labels[0] and e["output"] == pytest.approx(e["prediction"], abs=1e-4)
    with pytest.raises(DataError, match="regression model has one output"):
        reg.explain("coach", target="x", quiet=True)
    pairs = loraclf.Classifier.from_run(type_runs[PAIRS], device="cpu")
    e = pairs.explain(["minister election troops"], ["coach league striker goal"], quiet=True)[0]
    assert [w["word"] for w in e["words"]] == ["minister", "election", "troops"]
    assert [w["word"] for w in e["pair_words"]] == ["coach", "league", "striker", "goal"]


def test_a_chunked_document_is_stitched_back_to_its_words(tiny_run):
    im = load_inference_model(tiny_run, device="cpu")
    im.data.long_text, im.data.max_length, im.data.stride = "chunks", 16, 4
    words = [random.Random(0).choice("coach league shares profit minister orbit chip".split()) for _ in range(60)]
    text = " ".join(words)
    windows = explain_mod._encodings(im, text, None)
    assert len(windows) > 3  # the document really is cut into several windows
    (e,) = explain_mod.explain_texts(im, [text], steps=4)
    assert [w for w, _ in e.words] == words  # every word once, in order, overlapping windows merged


def test_cli_writes_json_and_a_page_that_renders(tiny_run, tiny_data, tmp_path, capsys):
    rows = pd.read_csv(tiny_data["test"]).head(5)
    rows.to_csv(tmp_path / "few.csv", index=False)
    out = tmp_path / "why.json"
    assert main(["explain", str(tiny_run), "--input", str(tmp_path / "few.csv"), "--output", str(out), "--steps",
                 "8", "--quiet"]) == 0
    records = json.loads(out.read_text())
    assert len(records) == 5 and [r["ID"] for r in records] == list(range(5))
    assert [w["word"] for w in records[0]["words"]] == str(rows["text"][0]).split()[: len(records[0]["words"])]
    page = out.with_suffix(".html")
    assert page.is_file() and "wrote attributions of 5 texts" in capsys.readouterr().out
    browser = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
    if browser is None:
        if IN_CI:
            pytest.fail("headless Chromium not found (Debian package `chromium`); CI=true, so this is a failure")
        pytest.skip("headless Chromium not found (Debian package `chromium`)")
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('class="text"') == 5 and r.stdout.count('class="w"') >= 5 * 3


BAD = {  # id: (extra argv, input rows or None for the default file, cause words)
    "unknown target": (["--target", "Sportz"], None, "unknown target label 'Sportz'"),
    "int8": (["--precision", "int8"], None, "explain needs fp32 (or bf16) weights"),
    "empty input": ([], "", "empty"),
    "not json output": (["--output-suffix", ".csv"], None, "must be a .json file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, tiny_run, tiny_data, tmp_path, capsys):
    extra, rows, words = BAD[case]
    src = tmp_path / "in.csv"
    if rows is None:
        shutil.copy(tiny_data["test"], src)
    else:
        src.write_text(rows)
    out = tmp_path / ("why.csv" if "--output-suffix" in extra else "why.json")
    extra = [x for x in extra if x not in ("--output-suffix", ".csv")]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["explain", str(tiny_run), "--input", str(src), "--output", str(out), *extra])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert words in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_api_refuses_int8_and_a_wrong_label(tiny_run):
    clf = loraclf.Classifier.from_run(tiny_run, device="cpu")
    with pytest.raises(ModelError, match="gradients do not flow through int8"):
        clf.explain("a text", precision="int8", quiet=True)
    with pytest.raises(DataError, match="unknown target label"):
        clf.explain("a text", target="nope", quiet=True)


# ------------------------------------------------------------------------------------------ do they mean something


@pytest.mark.pretrained
@pytest.mark.slow
def test_deleting_top_attributed_words_hurts_more_than_random_words(minilm_path, tmp_path):
    """A MiniLM run on AG News (600 rows, 60 steps): over 30 validation texts, deleting the 3 top-attributed words
    lowers the predicted class's probability more than deleting 3 random words, on average (AOPC at k=3)."""
    data = need(AG_NEWS, "AG News data")
    pd.read_csv(data / "train.csv").sample(600, random_state=0).to_csv(tmp_path / "train.csv", index=False)
    val = pd.read_csv(data / "val.csv")
    val.head(200).to_csv(tmp_path / "val.csv", index=False)
    cfg = load_config(None, [f"model.name_or_path={minilm_path}", f"data.train={tmp_path / 'train.csv'}",
                             f"data.validation={tmp_path / 'val.csv'}", "data.max_length=64", "train.max_steps=60",
                             "train.per_device_train_batch_size=16", "train.learning_rate=1e-3",
                             "output.report=false", f"output.dir={tmp_path / 'runs'}", "output.run_name=ag",
                             f"data.cache_dir={tmp_path / 'cache'}"])
    clf = loraclf.Classifier.from_run(train(cfg, quiet=True).run_dir, device="cpu")
    texts = val["text"].astype(str).iloc[200:230].tolist()  # texts the run did not select on
    found = clf.explain(texts, steps=16, quiet=True)
    rng = random.Random(0)
    drops = {"top": [], "random": []}
    for text, e in zip(texts, found):
        words = [w["word"] for w in e["words"]]
        j = clf.labels.index(str(e["target"]))
        top = set(np.argsort([-w["score"] for w in e["words"]])[:3].tolist())
        rand = set(rng.sample(range(len(words)), 3))
        for name, gone in (("top", top), ("random", rand)):
            kept = " ".join(w for i, w in enumerate(words) if i not in gone)
            drops[name].append(e["output"] - float(clf.predict_proba(kept, quiet=True)[j]))
    top, rand = np.mean(drops["top"]), np.mean(drops["random"])
    print(f"AOPC@3 over {len(texts)} texts: top-attributed {top:.4f}, random {rand:.4f}")
    assert top > 2 * max(rand, 0.0) and top > 0.02, (top, rand)
