"""`loraclf audit` on multi-label data (issue 41), on the tiny BERT: cleanlab's multi-label path ranks a planted
wrong label set first and suggests the row's real set, the summary counts each label, and the audit page renders in
headless Chromium with its tables and the flagged row."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pandas as pd
import pytest

from conftest import CLASS_WORDS, IN_CI
from loraclf.config import load_config
from loraclf.trust import run_audit

NAMES = ["world", "sports", "business", "science"]
PLANTED = 9  # row 9: science words only, given world|sports


def frame(n: int, seed: int) -> pd.DataFrame:
    """Rows of one or two topics: 7 words of each topic a row has, its labels those topics."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topics = sorted({i % 4} | ({(i + 1 + i // 4) % 4} if i % 3 else set()))
        words = [rng.choice(CLASS_WORDS[t].split()[:8]) for t in topics for _ in range(7)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": "|".join(NAMES[t] for t in topics)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def audited(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_multi")
    train, val = frame(96, 1), frame(24, 2)
    train.loc[PLANTED, "text"] = " ".join(random.Random(3).choice(CLASS_WORDS[3].split()[:8]) for _ in range(10))
    train.loc[PLANTED, "labels"] = "world|sports"
    train.to_csv(root / "train.csv", index=False)
    val.to_csv(root / "val.csv", index=False)
    cfg = load_config(None, [f"model.name_or_path={tiny_bert}", f"data.train={root / 'train.csv'}",
                             f"data.validation={root / 'val.csv'}", "model.problem_type=multi_label_classification",
                             "data.label_column=labels", "data.label_delimiter='|'", "data.max_length=24",
                             "train.max_steps=300", "train.few_shot=false", "train.per_device_train_batch_size=16",
                             "train.learning_rate=3e-2", "train.mixed_precision=fp32", "eval.eval_steps=100",
                             "output.report=false", f"output.dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}",
                             "train.num_threads=1"])
    return run_audit(cfg, root / "out", folds=2, near_threshold=None, quiet=True), root


def test_a_planted_wrong_label_set_ranks_first_with_the_real_set_suggested(audited):
    result, _ = audited
    issues = result.issues
    assert len(issues) >= 1 and len(issues) < 96 // 4, issues.head()
    first = issues.iloc[0]
    assert first["row"] == PLANTED and first["given_label"] == "sports|world", issues.head()
    assert "science" in first["suggested_label"].split("|")
    summary = json.loads((result.output / "summary.json").read_text())
    assert summary["problem_type"] == "multi_label_classification"
    balance = summary["splits"]["train"]["class_balance"]
    assert set(balance) == set(NAMES), balance


def test_the_audit_page_renders_in_headless_chromium(audited, tmp_path):
    browser = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
    if browser is None:
        if IN_CI:
            pytest.fail("headless Chromium not found (Debian package `chromium`); CI=true, so this is a failure")
        pytest.skip("headless Chromium not found (Debian package `chromium`)")
    result, _ = audited
    page = (result.output / "audit.html").resolve()
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert dom.count("<table>") >= 2 and "sports|world" in dom
    planted_text = pd.read_csv(result.output.parent / "train.csv")["text"][PLANTED]
    assert planted_text in dom  # the flagged row is listed with its text
