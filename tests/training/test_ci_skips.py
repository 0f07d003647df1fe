"""Under CI=true a missing dependency is a failure, never a quiet skip (issue 42).

Tests reach optional packages through conftest.need_module and real files through conftest.need, which skip on a
user's clone and fail under CI; pytest's own importorskip and skipif would skip in both places.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import conftest

TESTS = Path(__file__).resolve().parents[1]
QUIET = re.compile(r"\bimportor" r"skip\(|\bmark\.skip" r"if\(")  # split, so this file does not match itself


def test_no_test_skips_quietly_on_a_missing_package_or_file():
    found = [f"{p.relative_to(TESTS)}:{n}: {line.strip()}" for p in sorted(TESTS.rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if QUIET.search(line)]
    assert not found, "use conftest.need_module / conftest.need, which fail under CI=true:\n" + "\n".join(found)


def test_need_module_imports_skips_on_a_clone_and_fails_under_ci(monkeypatch):
    assert conftest.need_module("json").dumps([1]) == "[1]"
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="loraclf_no_such_package is not installed"):
        conftest.need_module("loraclf_no_such_package")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="loraclf_no_such_package is not installed.*CI=true, so this is a "
                                                    "failure, not a skip"):
        conftest.need_module("loraclf_no_such_package")
