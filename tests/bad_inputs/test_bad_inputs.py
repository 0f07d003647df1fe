"""The bad-input matrix: malformed configs, data files, CLI arguments, model paths and run folders.

Every case must give exit code 2, exactly one line on stderr that names the problem and says how to fix it,
no traceback, and leave the workspace (data, outputs, caches, current folder) byte-for-byte unchanged.
Cases run through `loraclf.cli.main` in-process (the same code as the `loraclf` command, minus interpreter start);
a few also run as real `python -m loraclf` subprocesses.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from loraclf import cli, runs


# ------------------------------------------------------------------------------------------ workspace


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    """A finished tiny run folder, copied into each case's workspace by the cases that need one."""
    from loraclf.config import load_config
    from loraclf.training import train

    root = tmp_path_factory.mktemp("bad_inputs_run")
    cfg = load_config(None, [
        f"model.name_or_path={tiny_bert}", f"data.train={tiny_data['train']}", f"data.validation={tiny_data['val']}",
        "data.max_length=32", "train.max_steps=2", "train.mixed_precision=fp32", "output.report=false",
        f"output.dir={root}", "output.run_name=run", f"data.cache_dir={root / 'cache'}",
    ])
    return train(cfg, quiet=True).run_dir


class WS:
    """One case's workspace: every path a case may read or (wrongly) write is inside it."""

    def __init__(self, root: Path, tiny_bert: Path, tiny_data: dict, trained_run: Path):
        self.root, self.tiny_bert, self.tiny_data, self._trained = root, tiny_bert, tiny_data, trained_run

    def p(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.p(name)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def csv(self, name: str, rows: list[tuple], header=("text", "label")) -> Path:
        pd.DataFrame(rows, columns=list(header)).to_csv(self.p(name), index=False)
        return self.p(name)

    def run(self) -> Path:
        dst = self.p("run")
        shutil.copytree(self._trained, dst, ignore=shutil.ignore_patterns("cache"))
        return dst

    def train(self, *extra: str, train: Path | None = None) -> list[str]:
        return ["train", f"model.name_or_path={self.tiny_bert}", f"data.train={train or self.tiny_data['train']}",
                f"data.validation={self.tiny_data['val']}", "data.max_length=32", "train.max_steps=2",
                "train.mixed_precision=fp32", "output.report=false", f"output.dir={self.p('runs')}",
                "output.run_name=new", f"data.cache_dir={self.p('cache')}", *extra, "--quiet"]

    def predict(self, run: Path, *extra: str, input: Path | None = None, output: str = "out.csv") -> list[str]:
        return ["predict", str(run), "--input", str(input or self.tiny_data["test"]), "--output", str(self.p(output)),
                "--quiet", *extra]


def _snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _ragged_csv(ws):
    return ws.write("ragged.csv", "text,label\nhello,1\nworld,0,extra,cols\n")


def _rows(n_per_class=4, classes=(0, 1)):
    return [(f"some text number {i} of class {c}", c) for c in classes for i in range(n_per_class)]


# Each case: id -> (argv builder, words naming the problem, words saying the fix). Matching is case-insensitive.
CASES = {
    # ---------------------------------------------------------------- config
    "wrong-typed key": (lambda ws: ws.train("train.learning_rate=fast"),
                        "'train.learning_rate' expected a number", "train.learning_rate"),
    "negative learning rate": (lambda ws: ws.train("train.learning_rate=-0.001"),
                               "'train.learning_rate' must be > 0", "> 0"),
    "rank zero": (lambda ws: ws.train("adapter.r=0"), "'adapter.r' must be >= 1", "or 'auto'"),
    "misspelled key": (lambda ws: ws.train("train.learnig_rate=0.001"),
                       "unknown key 'train.learnig_rate'", "did you mean 'learning_rate'"),
    "misspelled choice": (lambda ws: ws.train("adapter.method=lorra"),
                          "'adapter.method' must be one of", "did you mean 'lora'"),
    "dropout out of range": (lambda ws: ws.train("adapter.lora_dropout=1.5"), "'adapter.lora_dropout' must be < 1", "< 1"),
    "max_length too small": (lambda ws: ws.train("data.max_length=2"), "'data.max_length' must be >= 8", ">= 8"),
    "section given a value": (lambda ws: ws.train("train=3"), "'train' must be a section", "a mapping"),
    "override without =": (lambda ws: ["validate", str(ws.write("c.yaml", "train:\n  seed: 1\n")), "train.seed"],
                           "override 'train.seed' must look like section.key=value", "e.g. train.learning_rate"),
    "config file missing": (lambda ws: ["train", str(ws.p("nope.yaml")), "--quiet"],
                            "config file not found", "give the path of a yaml file"),
    "config not yaml": (lambda ws: ["train", str(ws.write("bad.yaml", "train: [1, 2\n")), "--quiet"],
                        "is not valid yaml", "bad.yaml"),
    "config a list": (lambda ws: ["validate", str(ws.write("list.yaml", "- 1\n- 2\n"))],
                      "must hold a mapping of sections", "model:, data:, train:"),
    "config not utf-8": (lambda ws: ["validate", str(ws.write("latin.yaml", b"train:\n  seed: \xe9\xff\n"))],
                         "is not valid yaml", "latin.yaml"),
    "run name escapes output.dir": (lambda ws: ws.train("output.run_name=../../escaped"),
                                    "'output.run_name' must be a plain folder name", "output.dir"),
    "over budget": (lambda ws: ws.train("budget.max_trainable_params=10"),
                    "over budget.max_trainable_params=10", "adapter."),
    "target module not in model": (lambda ws: ws.train("adapter.target_modules=[qkv_proj]"),
                                   "target module(s) qkv_proj not found", "its linear layers are"),
    # ---------------------------------------------------------------- data files
    "data file missing": (lambda ws: ws.train(train=ws.p("missing.csv")), "data file not found", "check the path"),
    "data path is a folder": (lambda ws: ws.train(train=ws.root), "is a folder", "give a data file"),
    "unknown extension": (lambda ws: ws.train(train=ws.write("d.xlsx", "x")), "unknown data format '.xlsx'",
                          "use one of"),
    "empty file": (lambda ws: ws.train(train=ws.write("empty.csv", "")), "empty.csv is empty", "at least"),
    "header only": (lambda ws: ws.train(train=ws.write("header.csv", "text,label\n")), "has a header but no rows",
                    "add"),
    "not utf-8": (lambda ws: ws.train(train=ws.write("latin.csv", b"text,label\ncaf\xe9 cr\xe8me,1\nhi,0\n")),
                  "is not valid utf-8", "re-save it as utf-8"),
    "ragged csv": (lambda ws: ws.train(train=_ragged_csv(ws)), "cannot read", "check"),
    "broken jsonl": (lambda ws: ws.train(train=ws.write("b.jsonl", '{"text": "a", "label": 1}\n{"text": "b", lab\n')),
                     "cannot read", "check"),
    "json not records": (lambda ws: ws.train(train=ws.write("obj.json", '{"text": 5}')),
                         "must hold a list of records", "json lines"),
    "nan text with empty_text=error": (
        lambda ws: ws.train("data.empty_text=error", train=ws.write("nan.csv", "text,label\nfine,0\n,1\nNaN,1\nok,0\n")),
        "empty or nan texts", "data.empty_text=drop"),
    "file over max_file_mb": (lambda ws: ws.train("data.max_file_mb=5", train=ws.csv("big.csv", [("x" * 10_000_000, 0), ("y", 1)])),
                              "over data.max_file_mb=5", "raise data.max_file_mb"),
    "label only in test": (lambda ws: ws.train(f"data.test={ws.csv('test.csv', [('a', 0), ('b', 9)])}"),
                           "labels never seen in training: 9", "add examples"),
    "single class": (lambda ws: ws.train(train=ws.csv("one.csv", _rows(classes=(1,)))), "only one class", "at least two"),
    "missing text column": (lambda ws: ws.train(train=ws.csv("cols.csv", _rows(), header=("texts", "label"))),
                            "no text column 'text' (did you mean 'texts'?)", "set data.text_column"),
    "missing label column": (lambda ws: ws.train(train=ws.csv("cols.csv", _rows(), header=("text", "labels"))),
                             "no label column 'label'", "set data.label_column"),
    "too many labels": (lambda ws: ws.train("data.max_labels=2", train=ws.csv("many.csv", _rows(classes=(0, 1, 2)))),
                        "over data.max_labels=2", "right column"),
    "negative int labels": (lambda ws: ws.train(train=ws.csv("neg.csv", _rows(classes=(-1, 0, 1)))),
                            "integer labels must be >= 0", "0..k-1"),
    "label_names too short": (lambda ws: ws.train("data.label_names=[a,b]"), "data.label_names has 2 names",
                              "one name per label"),
    "pickle without opt-in": (lambda ws: ws.train(train=ws.write("d.pkl", pickle.dumps(pd.DataFrame(_rows())))),
                              "is a pickle", "data.allow_pickle=true"),
    # ---------------------------------------------------------------- model paths
    "model folder without config.json": (lambda ws: ws.train(f"model.name_or_path={ws.root}"), "no config.json",
                                         "save_pretrained"),
    "model config.json not json": (lambda ws: ws.train(f"model.name_or_path={_broken_model(ws)}"),
                                   "cannot load model", "check the name, the path"),
    "unknown packaged model": (lambda ws: ws.train("model.name_or_path=packaged:minilm-l7"),
                               "unknown packaged model 'packaged:minilm-l7'", "did you mean 'minilm-l6'"),
    # ---------------------------------------------------------------- CLI arguments
    "unknown flag": (lambda ws: ["train", "--bogus"], "unrecognized arguments: --bogus", "(see `loraclf --help`)"),
    "bad choice flag": (lambda ws: ["predict", "x", "--input", "a", "--output", "b", "--format", "xml"],
                        "invalid choice: 'xml'", "(see `loraclf predict --help`)"),
    "zero batch size": (lambda ws: ws.predict(ws.run(), "--batch-size", "0"), "--batch-size", "an integer >= 1"),
    "predict output format": (lambda ws: ws.predict(ws.run(), output="out.xlsx"), "unknown output format '.xlsx'",
                              "use .csv"),
    "predict input missing": (lambda ws: ws.predict(ws.run(), input=ws.p("nope.csv")), "file not found",
                              "nope.csv"),
    "predict pickle without opt-in": (
        lambda ws: ws.predict(ws.run(), input=ws.write("t.pkl", pickle.dumps(pd.DataFrame({"text": ["a"]})))),
        "is a pickle", "--allow-pickle"),
    "evaluate unseen label": (lambda ws: ["evaluate", str(ws.run()), "--data", str(ws.csv("ev.csv", [("a", 0), ("b", 7)])),
                                          "--quiet"], "labels never seen in training: 7", "add examples"),
    # ---------------------------------------------------------------- run folders
    "missing run folder": (lambda ws: ws.predict(ws.p("no-such-run")), "run folder not found",
                           "give the folder that `loraclf train` printed"),
    "run folder without adapter": (lambda ws: ws.predict(_without(ws.run(), runs.ADAPTER)),
                                   "adapter is missing or incomplete", "--resume"),
    "adapter weights truncated": (lambda ws: ws.predict(_truncated_adapter(ws.run())), "adapter_model.safetensors is damaged",
                                  "re-run `loraclf train`"),
    "label map damaged": (lambda ws: ws.predict(_garbled(ws.run(), runs.LABEL_MAP)), "label_map.json is not valid json",
                          "train the run again"),
    "run config damaged": (lambda ws: ws.predict(_garbled(ws.run(), runs.CONFIG)), "config.yaml is not valid yaml",
                           "train the run again"),
    "resume missing run": (lambda ws: ["train", "--resume", str(ws.p("gone")), "--quiet"], "run folder",
                           "give the folder that `loraclf train` printed"),
    "resume a non-run folder": (lambda ws: ["train", "--resume", str(ws.root), "--quiet"], "not a loraclf run folder",
                                "give the folder that `loraclf train` printed"),
    "run name clash": (lambda ws: ws.train(f"output.dir={ws.run().parent}", "output.run_name=run"),
                       "already exists", "output.overwrite=true"),
}


def _without(run: Path, name: str) -> Path:
    shutil.rmtree(run / name)
    return run


def _garbled(run: Path, name: str) -> Path:
    (run / name).write_text("{{{ not: [valid\n")
    return run


def _truncated_adapter(run: Path) -> Path:
    f = run / runs.ADAPTER / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return run


def _broken_model(ws) -> Path:
    d = ws.p("broken_model")
    d.mkdir()
    (d / "config.json").write_text("{ this is not json")
    return d


def test_the_matrix_is_big_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path, tiny_bert, tiny_data, trained_run, capfd, monkeypatch):
    build, problem, fix = CASES[case]
    ws = WS(tmp_path, tiny_bert, tiny_data, trained_run)
    argv = build(ws)
    monkeypatch.chdir(tmp_path)  # anything written to the current folder would show up in the snapshot
    monkeypatch.setenv("LORACLF_CACHE", str(tmp_path / "lcache"))
    capfd.readouterr()
    before = _snapshot(tmp_path)
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capfd.readouterr()
    after = _snapshot(tmp_path)
    lines = err.strip().splitlines()
    assert rc == 2, f"exit {rc}; stderr: {err[-1500:]}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}:\n{err[-1500:]}"
    assert lines[0].startswith("loraclf") and "error:" in lines[0]
    assert problem.lower() in lines[0].lower(), lines[0]
    assert fix.lower() in lines[0].lower(), lines[0]
    assert after == before, f"files changed: {set(after.items()) ^ set(before.items())}"


@pytest.mark.parametrize("case", ["wrong-typed key", "pickle without opt-in", "missing run folder", "unknown flag"])
def test_bad_input_real_process(case, tmp_path, tiny_bert, tiny_data, trained_run):
    """The same cases through the installed entry point in a fresh interpreter."""
    build, problem, fix = CASES[case]
    ws = WS(tmp_path, tiny_bert, tiny_data, trained_run)
    argv = build(ws)
    before = _snapshot(tmp_path)
    p = subprocess.run([sys.executable, "-m", "loraclf", *argv], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "LORACLF_CACHE": str(tmp_path / "lcache"), "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-1500:]
    assert problem.lower() in lines[0].lower() and fix.lower() in lines[0].lower()
    assert _snapshot(tmp_path) == before


def test_a_10_mb_text_is_cut_by_max_text_chars_not_a_memory_blowup(tmp_path, tiny_bert, tiny_data, trained_run, capfd):
    """Clear limits: one 10 MB text is cut to data.max_text_chars and predicted like any other."""
    ws = WS(tmp_path, tiny_bert, tiny_data, trained_run)
    big = ws.csv("big.csv", [("word " * 2_000_000, 0), ("short text", 1)])
    assert big.stat().st_size > 10_000_000
    from loraclf.config import DataConfig
    from loraclf.data import read_texts

    texts, _, _ = read_texts(big, DataConfig())
    assert len(texts[0]) == DataConfig().max_text_chars
    rc = cli.main(ws.predict(ws.run(), input=big, output="pred.csv"))
    assert rc == 0, capfd.readouterr().err
    assert len(pd.read_csv(tmp_path / "pred.csv")) == 2


def test_paths_in_a_config_file_are_resolved_and_outputs_stay_in_the_run_folder(tmp_path, tiny_bert, tiny_data):
    """Relative data paths in a YAML file resolve against the file's folder; `config` prints them absolute."""
    from loraclf.config import load_config

    sub = tmp_path / "cfg"
    sub.mkdir()
    shutil.copy(tiny_data["train"], sub / "train.csv")
    (sub / "c.yaml").write_text("data:\n  train: train.csv\n")
    cfg = load_config(sub / "c.yaml")
    assert Path(cfg.data.train) == sub / "train.csv" and Path(cfg.data.train).is_absolute()
    for bad in ("..", "a/b", "../x", "/abs"):
        with pytest.raises(Exception, match="plain folder name"):
            load_config(None, [f"output.run_name={bad}"])


# ------------------------------------------------------------------------------------------ issue 21, section 5


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
    ws = WS(tmp_path, tiny_bert, tiny_data, trained_run=None)
    assert cli.main(ws.train()) == 0
    assert not list(out.glob(".new.*.tmp")) and other.is_dir()
    assert (out / "new" / runs.METRICS).is_file()


def test_config_yaml_records_no_packaged_dataset_when_data_train_is_given(trained_run):
    """data.train replaces the packaged default (data.name), so the run folder must not say TREC-6 was used."""
    import yaml

    saved = yaml.safe_load((trained_run / runs.CONFIG).read_text())
    assert saved["data"]["name"] is None and saved["data"]["train"]


def test_report_progress_table_says_at_which_step_the_training_loss_was_logged(tmp_path):
    """Evaluation at step 66 with train losses logged every 50 steps: the row shows the loss of step 50, labelled."""
    from loraclf.report import files as report_files, html as report

    history = [{"type": "train", "step": s, "loss": 1.0 / s, "learning_rate": 1e-3} for s in (50, 100)]
    history += [{"type": "eval", "split": "val", "step": s, "epoch": s / 100, "loss": 0.5, "accuracy": 0.8,
                 "macro_f1": 0.7} for s in (66, 100)]
    rf = report_files.RunFiles(tmp_path, {}, {"val": {}}, history=history)
    rows = report.progress_table(rf)
    assert [(r["step"], r["train_loss_step"]) for r in rows] == [(66, 50), (100, 100)]
    page = "".join(report._curves_section(rf, b""))
    assert "training loss (last logged)" in page
    assert "0.0200 (step 50)" in page and "0.0100 (step" not in page


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
    pd.DataFrame(_rows(8), columns=["text", "label"]).to_csv(val, index=False)
    argv = ["train", f"model.name_or_path={tiny_bert}", f"data.train={_stream_with_bad_label(tmp_path / 's.jsonl')}",
            f"data.validation={val}", "data.streaming=true", "data.max_length=32", "train.max_steps=2",
            "train.per_device_train_batch_size=8", "train.mixed_precision=fp32", "eval.eval_steps=1",
            "output.report=false",
            f"output.dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "--nproc", "2"]
    p = subprocess.run([sys.executable, "-m", "loraclf", *argv], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300, env={**os.environ, "LORACLF_CACHE": str(tmp_path / "lcache")})
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
    pd.DataFrame(_rows(8), columns=["text", "label"]).to_csv(val, index=False)
    argv = ["train", f"model.name_or_path={tiny_bert}", f"data.train={tmp_path / 's.jsonl'}", f"data.validation={val}",
            "data.streaming=true", "train.max_steps=2", "eval.eval_steps=1", "output.report=false",
            f"output.dir={tmp_path / 'runs'}"]
    p = subprocess.run([sys.executable, "-m", "loraclf", *argv], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300, env={**os.environ, "LORACLF_CACHE": str(tmp_path / "lcache")})
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr[-3000:]
    assert p.stderr.startswith("loraclf train: error: cannot read") and "Traceback" not in p.stderr
