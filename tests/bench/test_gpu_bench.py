"""bench/gpu.py (issue 39): `--check` runs every contender of both suites on the CPU with a tiny model, and the table
has its columns, a number from every contender and says that nothing was measured on a GPU; the Probe's steady
state leaves out the warm-up and every step whose span holds an evaluation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_report  # noqa: E402
from gpu_contenders import LABEL, Probe  # noqa: E402


def test_probe_steady_state_leaves_out_warmup_and_evaluations():
    probe = Probe()
    # step starts at 0, 1, 2, 3, 13, 14 s (an evaluation ends at 12.5 s, inside step 3's span), 8 rows, 2 real each
    times = [0.0, 1.0, 2.0, 3.0, 13.0, 14.0]
    probe.steps = [(t, 8, torch.tensor(16)) for t in times]
    probe.evals_end = [12.5]
    s = probe.summary(warmup=1)  # step 0 is warm-up; step 3's span holds the evaluation; step 5 has no end
    assert s["steady_steps"] == 3 and s["step_ms"] == pytest.approx(1000.0)
    assert s["samples_s"] == pytest.approx(8.0) and s["tokens_s"] == pytest.approx(16.0)
    assert Probe().summary(warmup=0)["step_ms"] is None


@pytest.mark.slow
def test_gpu_bench_check_runs_every_contender_on_the_cpu(tiny_data, minilm_path, tmp_path):
    out = tmp_path / "gpu.md"
    job = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--check", "--data",
                          str(tiny_data["train"].parent), "--work", str(tmp_path / "work"), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stderr[-3000:]
    text = out.read_text()
    assert "**Not results: not measured on a GPU.**" in text
    assert text.count("not measured on a GPU (CPU check:") == 5  # every target, none PASS or MISS
    tables = [block for block in text.split("\n## ")[1:] if block.lstrip().startswith(("a tiny encoder",))]
    assert len(tables) == 2
    for block, projected in zip(tables, (False, True)):
        lines = [ln for ln in block.splitlines() if ln.startswith("| ")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        want = list(gpu_report.COLUMNS)
        if projected:
            want[6] = "120,000 rows x 2 epochs (s, projected from samples/s)"
        assert header == want
        rows = {r[0]: r for r in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}
        assert set(rows) == set(LABEL.values())
        for name, cells in rows.items():
            numbers = dict(zip(header, cells))
            for column in ("step ms", "samples/s", "real tokens/s", "share of the matmul rate", "train s",
                           "process s", "peak RSS MiB"):
                assert numbers[column].rstrip("%").replace(",", "").replace(".", "").isdigit(), (name, column, cells)
            assert numbers["peak GPU MiB"] == "n/a (no GPU)"
            assert numbers["val acc"].split("%")[0].replace(".", "").isdigit()
            assert ("means nothing" in numbers["test acc"]) == projected
