"""The report's section "Why: the most confidently wrong validation examples, explained" (issue 41): on a tiny real run,
the section explains the report's first errors with one score per word, the same scores Classifier.explain gives at
the report's steps; it renders in headless Chromium; where captum is missing or the folder has no adapter, one line
says why instead."""

from __future__ import annotations

import html
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import loraclf
from conftest import IN_CI
from helpers_infer import tiny_run_overrides
from loraclf import report, runs
from loraclf.report.html import confidently_wrong
from loraclf.config import load_config
from loraclf.report import explanations
from loraclf.report.files import load_run
from loraclf.training import train

WORD = re.compile(r'<span class="w" style="[^"]*" title="([^"]+)">([^<]*)</span>')


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    root = tmp_path_factory.mktemp("why")
    run = Path(train(load_config(None, tiny_run_overrides(tiny_bert, tiny_data, root, "why")), quiet=True).run_dir)
    report.write_report(run)
    return run


def _blocks(page: str) -> list[str]:
    why = page.split('<div class="why">', 1)[1].split("<h2", 1)[0] if '<div class="why">' in page else ""
    return why.split('<div class="text">')[1:]


def test_the_first_errors_are_explained_word_by_word(reported):
    page = (reported / runs.REPORT / runs.REPORT_HTML).read_text()
    wrong = confidently_wrong(load_run(reported))
    assert len(wrong) >= explanations.ERRORS_EXPLAINED  # a 6-step tiny run gets many validation rows wrong
    assert 'id="why"' in page and page.index('id="wrong"') < page.index('id="why"') < page.index('id="params"')
    blocks = _blocks(page)
    assert len(blocks) == explanations.ERRORS_EXPLAINED
    clf = loraclf.Classifier.from_run(reported, device="cpu")
    for block, row in zip(blocks, wrong):
        shown = [(html.unescape(w), float(s)) for s, w in WORD.findall(block)]
        words = str(row["text"]).split()
        assert [w for w, _ in shown] == words[: len(shown)] and len(shown) >= min(len(words), 8)
        assert f"true <b>{html.escape(str(row['label']))}</b>" in block
        e = clf.explain(str(row["text"]), steps=explanations.REPORT_STEPS, quiet=True)
        assert e["target"] == str(row["predicted"]) or str(e["prediction"]) == str(row["predicted"])
        assert any(s != 0 for _, s in shown)
        assert [w["score"] for w in e["words"]] == pytest.approx([s for _, s in shown], rel=2e-3, abs=1e-9)


def test_a_run_that_cannot_be_explained_says_why(reported, tmp_path, monkeypatch):
    rows = confidently_wrong(load_run(reported))
    bare = tmp_path / "bare"
    shutil.copytree(reported, bare, ignore=shutil.ignore_patterns(runs.ADAPTER, runs.REPORT))
    section = "\n".join(explanations.errors_section(bare, rows, "errors"))
    assert "Not shown: the run folder has no adapter/" in section and 'class="w"' not in section
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "captum" else real(name, *a))
    section = "\n".join(explanations.errors_section(reported, rows, "errors"))
    assert "Not shown: captum is not installed" in section
    assert explanations.errors_section(reported, [], "errors") == []  # no errors: no section


def test_the_section_renders_in_headless_chromium(reported, tmp_path):
    browser = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
    if browser is None:
        if IN_CI:
            pytest.fail("headless Chromium not found (Debian package `chromium`); CI=true, so this is a failure")
        pytest.skip("headless Chromium not found (Debian package `chromium`)")
    page = (reported / runs.REPORT / runs.REPORT_HTML).resolve()
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert 'id="why"' in dom and dom.count('class="text"') == explanations.ERRORS_EXPLAINED
    assert dom.count('class="w"') >= 3 * explanations.ERRORS_EXPLAINED
