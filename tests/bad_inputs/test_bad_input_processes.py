"""Bad input that is not one matrix row: a process killed while it creates a run folder, bad rows met mid-stream in
real `python -m loraclf` processes (one under --nproc 2), and a 10 MB text, which is a limit and not an error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from loraclf import cli, runs


def class_rows(n_per_class=4, classes=(0, 1)) -> list[tuple[str, int]]:
    return [(f"some text number {i} of class {c}", c) for c in classes for i in range(n_per_class)]


def train_args(model: Path, data: dict, root: Path, *extra: str) -> list[str]:
    return ["train", f"model.name_or_path={model}", f"data.train={data['train']}", f"data.validation={data['val']}",
            "data.max_length=32", "train.max_steps=2", "train.mixed_precision=fp32", "output.report=false",
            f"output.dir={root / 'runs'}", "output.run_name=new", f"data.cache_dir={root / 'cache'}", *extra, "--quiet"]


def real_process(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loraclf", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "LORACLF_CACHE": str(cwd / "lcache")})


def test_a_kill_during_run_folder_creation_leaves_no_temp_folder_behind(tmp_path, tiny_bert, tiny_data):
    """A process killed inside runs.atomic_dir leaves RUNS/.NAME.*.tmp; the next run of that name removes it (and
    only its own: another name's temp folder is not its business)."""
    out = tmp_path / "runs"
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from loraclf import runs\n"
        "with runs.atomic_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'config.yaml').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(out / "new")], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1500:]
    stale = list(out.glob(".new.*.tmp"))
    assert len(stale) == 1 and (stale[0] / "config.yaml").is_file()
    other = out / ".other.abc.tmp"
    other.mkdir()
    assert cli.main(train_args(tiny_bert, tiny_data, tmp_path)) == 0
    assert not list(out.glob(".new.*.tmp")) and other.is_dir()
    assert (out / "new" / runs.METRICS).is_file()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    from loraclf.config import load_config
    from loraclf.training import train

    root = tmp_path_factory.mktemp("processes_run")
    return train(load_config(None, train_args(tiny_bert, tiny_data, root)[1:-1]), quiet=True).run_dir


def test_a_10_mb_text_is_cut_by_max_text_chars_not_a_memory_blowup(tmp_path, trained_run, capfd):
    """Clear limits: one 10 MB text is cut to data.max_text_chars and predicted like any other."""
    from loraclf.config import DataConfig
    from loraclf.data import read_texts

    big = tmp_path / "big.csv"
    pd.DataFrame([("word " * 2_000_000, 0), ("short text", 1)], columns=["text", "label"]).to_csv(big, index=False)
    assert big.stat().st_size > 10_000_000
    texts, _, _ = read_texts(big, DataConfig())
    assert len(texts[0]) == DataConfig().max_text_chars
    rc = cli.main(["predict", str(trained_run), "--input", str(big), "--output", str(tmp_path / "pred.csv"), "--quiet"])
    assert rc == 0, capfd.readouterr().err
    assert len(pd.read_csv(tmp_path / "pred.csv")) == 2


def test_config_yaml_records_no_packaged_dataset_when_data_train_is_given(trained_run):
    """data.train replaces the packaged default (data.name), so the run folder must not say TREC-6 was used."""
    import yaml

    saved = yaml.safe_load((trained_run / runs.CONFIG).read_text())
    assert saved["data"]["name"] is None and saved["data"]["train"]


def _stream_with_bad_label(path: Path, n: int = 60) -> Path:
    lines = [json.dumps({"text": f"some text number {i} of class {i % 2}", "label": i % 2}) for i in range(n)]
    lines[40] = json.dumps({"text": "a class never seen", "label": 7})
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_a_bad_row_mid_stream_under_nproc_2_is_one_error_line_after_the_progress_lines(tmp_path, tiny_bert):
    """Not --quiet: the run started, so its progress lines stand; then the one error line, exit 2, and none of the
    launcher's report or the other process's gloo errors."""
    val = tmp_path / "val.csv"
    pd.DataFrame(class_rows(8), columns=["text", "label"]).to_csv(val, index=False)
    argv = ["train", f"model.name_or_path={tiny_bert}", f"data.train={_stream_with_bad_label(tmp_path / 's.jsonl')}",
            f"data.validation={val}", "data.streaming=true", "data.max_length=32", "train.max_steps=2",
            "train.per_device_train_batch_size=8", "train.mixed_precision=fp32", "eval.eval_steps=1",
            "output.report=false",
            f"output.dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "--nproc", "2"]
    p = real_process(argv, tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr[-3000:]
    assert lines[-1].startswith("loraclf train: error:") and "labels outside the label set" in lines[-1], lines[-1]
    assert all(line.startswith("[loraclf] ") for line in lines[:-1]), p.stderr[-3000:]
    assert "no run folder was kept" in lines[-1] and not (tmp_path / "runs").exists()


def test_a_malformed_streamed_line_is_one_line_in_a_real_process(tmp_path, tiny_bert):
    """datasets' own 'Failed to load JSON' error line is not printed beside loraclf's (a fresh process shows it; the
    in-process matrix cannot, as datasets' handler keeps the stderr of its import)."""
    lines = [json.dumps({"text": f"text {i}", "label": i % 2}) for i in range(60)]
    lines[40] = '{"text": "broken", lab'
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    val = tmp_path / "val.csv"
    pd.DataFrame(class_rows(8), columns=["text", "label"]).to_csv(val, index=False)
    argv = ["train", f"model.name_or_path={tiny_bert}", f"data.train={tmp_path / 's.jsonl'}", f"data.validation={val}",
            "data.streaming=true", "train.max_steps=2", "eval.eval_steps=1", "output.report=false",
            f"output.dir={tmp_path / 'runs'}"]
    p = real_process(argv, tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr[-3000:]
    assert p.stderr.startswith("loraclf train: error: cannot read") and "Traceback" not in p.stderr
    assert "s.jsonl" in p.stderr and "json parse error" in p.stderr.lower()
