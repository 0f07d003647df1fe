"""bench/common.py: a child process run (output, exit, timeout, environment, peak RSS), the machine header, the load
line and Markdown tables. Real child processes, a second or two each."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
common = sys.modules["bench_common"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(common)

PY = sys.executable


def test_child_output_exit_and_cost():
    child = common.run_child([PY, "-c", "import sys; print('out line'); print('err line', file=sys.stderr)"])
    assert child.ok and child.returncode == 0 and not child.timed_out
    assert child.stdout == "out line\n"
    assert child.stderr == "err line\n"
    assert child.wall_s > 0 and child.cpu_s > 0 and child.other_cpu_s >= 0
    assert child.load == common.Load(child.other_cpu_s, child.wall_s)


def test_child_peak_rss_grows_with_what_it_allocates():
    idle = common.run_child([PY, "-c", "pass"])
    # bytes * n writes every byte, so all 200 MiB are resident (a zeroed bytearray may never touch its pages)
    big = common.run_child([PY, "-c", "b = b'x' * (200 * 2**20); print(len(b))"])
    assert big.ok and big.stdout.strip() == str(200 * 2**20)
    assert 180 < big.peak_rss_mb - idle.peak_rss_mb < 260, (idle.peak_rss_mb, big.peak_rss_mb)


def test_child_peak_rss_is_not_the_parents():
    """Linux keeps a process's peak RSS across exec: a child started straight from a big process would report it."""
    ballast = b"x" * (300 * 2**20)  # this process's peak is now above 300 MiB
    idle = common.run_child([PY, "-c", "pass"])
    assert len(ballast) and idle.peak_rss_mb < 100, idle.peak_rss_mb


def test_child_environment_and_threads():
    code = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['OPENBLAS_NUM_THREADS'], os.environ['X_BENCH'])"
    child = common.run_child([PY, "-c", code], env={"X_BENCH": "yes"}, threads=3)
    assert child.stdout.split() == ["3", "3", "yes"]
    assert common.thread_env(1) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def test_child_failure_gives_its_last_error_line():
    child = common.run_child([PY, "-c", "import sys; print('first', file=sys.stderr); sys.exit('boom: bad input')"])
    assert not child.ok and child.returncode == 1
    assert child.error() == "boom: bad input"
    assert child.error(limit=4) == "boom"
    assert child.tail() == "first\nboom: bad input"
    silent = common.run_child([PY, "-c", "raise SystemExit(3)"])
    assert silent.error() == "exit code 3"


def test_child_timeout_kills_it():
    child = common.run_child([PY, "-c", "import time; print('started', flush=True); time.sleep(60)"], timeout=1)
    assert child.timed_out and not child.ok
    assert child.wall_s < 30
    assert re.fullmatch(r"timed out after \d+ s: started", child.error())


def test_child_streams_merge_or_go():
    merged = common.run_child([PY, "-c", "import sys; print('a', flush=True); print('b', file=sys.stderr)"],
                              stderr="stdout")
    assert merged.stdout.split() == ["a", "b"] and merged.stderr == ""
    gone = common.run_child([PY, "-c", "print('a')"], stdout="discard")
    assert gone.ok and gone.stdout == ""
    with pytest.raises(ValueError, match="stream must be capture, inherit, discard or stdout, got 'pipe'"):
        common.run_child([PY, "-c", "pass"], stdout="pipe")


def test_md_table():
    lines = common.md_table(["name", "texts/s", "note"], [["fp32", 91, "x"], ["bf16", "181", ""]], align="lr")
    assert lines == ["| name | texts/s | note |", "| --- | ---: | --- |", "| fp32 | 91 | x |", "| bf16 | 181 |  |"]
    assert common.md_table(["a"]) == ["| a |", "| --- |"]


def test_machine_header_fields():
    import torch

    from loraclf.base.device import bf16_supported, cpu_flags, cpu_name

    m = common.machine()
    assert m.cpu == cpu_name()
    assert m.cpu_threads == os.cpu_count()
    assert m.native_bf16 == bf16_supported("cpu")
    assert m.torch == torch.__version__
    assert set(m.flags) <= set(common.ISA_FLAGS) and set(m.flags) <= cpu_flags()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    assert m.commit.split(" ")[0] == head.strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", m.date)

    lines = common.machine_lines([common.Load(1.0, 100.0)], what="timed rounds", m=m)
    assert lines[0].startswith(f"- Machine: {m.cpu}, {m.cpu_threads} CPU threads, CPU flags ")
    assert f"native CPU bf16: {m.native_bf16}" in lines[0] and f"torch {m.torch}" in lines[0]
    assert lines[1] == f"- Code: commit {m.commit}; written {m.date}."
    assert lines[2] == ("- Load: other processes used 1.0 CPU s during the 100 s of timed rounds (1% of one core; "
                        "/proc/stat less this benchmark's own).")
    assert len(lines) == 3


def test_load_lines_say_when_timings_are_not_results():
    runs = [common.Load(2.0, 100.0), common.Load(30.0, 200.0)]
    lines = common.load_lines(runs, what="contender")
    assert lines == ["- Load: CPU time other processes used while a contender ran (/proc/stat less the contender's "
                     "own): at most 30.0 s in one contender, 15% of a contender's wall time at most.",
                     "- **The machine was busy** (other processes used up to 15% of a contender's wall time): these "
                     "timings are not results."]
    assert common.load_lines(runs, what="job", timings=False)[1] == (
        "- **The machine was busy** (other processes used up to 15% of a job's wall time): its times measure nothing "
        "about speed; the other columns do not depend on them.")
    assert common.load_lines([]) == ["- Load: CPU time of other processes not measured."]
    assert not common.Load(5.0, 100.0).busy and common.Load(5.1, 100.0).busy


def test_load_meter_and_result_files(tmp_path):
    load = common.LoadMeter().read()
    assert load.other_cpu_s >= 0 and load.wall_s >= 0
    rows = tmp_path / "r.jsonl"
    assert common.read_jsonl(rows) == []
    common.append_jsonl(rows, {"a": 1})
    common.append_jsonl(rows, {"a": None})
    assert common.read_jsonl(rows) == [{"a": 1}, {"a": None}]
    assert common.median([3, None, 1, 2]) == 2 and common.median([None]) is None
    common.write_text(tmp_path / "sub" / "t.md", "| a |\n")
    assert (tmp_path / "sub" / "t.md").read_text() == "| a |\n"
