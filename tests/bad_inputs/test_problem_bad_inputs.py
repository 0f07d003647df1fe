"""Bad input of the problem types (issues 17 and 18): label sets, regression targets, sentence pairs, class
weights, long-text windows, calibration; each message pinned.

Through the CLI (`loraclf.cli.main` in-process, under capfd): exit 2, one line on stderr that names what was
found and the setting that fits, no traceback, nothing on stdout, no run folder, no file created or changed.
Through the Python API (`loraclf.train`): the same message, as a LoraclfError subclass, never SystemExit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import loraclf
from loraclf import cli
from loraclf.config import load_config, parse_override
from loraclf.base.errors import ConfigError, DataError, LoraclfError
from loraclf.training import train

from helpers_problem import MULTI, NAMES, PAIRS, REGRESSION, SINGLE, problem_rows, type_overrides

FLAGS = ["is_" + n for n in NAMES]  # data.label_columns: one 0/1 column per topic


def frames() -> dict[str, pd.DataFrame]:
    """Fresh train/val/test frames with every type's columns, plus the 0/1 columns of label_columns."""
    out = {}
    for seed, (name, n) in enumerate({"train": 32, "val": 12, "test": 12}.items()):
        df = problem_rows(n, seed)
        for flag, topic in zip(FLAGS, NAMES):
            df[flag] = df["labels"].map(lambda s, t=topic: int(t in s.split("|")))
        out[name] = df
    return out


class WS:
    """One case's workspace under tmp_path (snapshotted); its tokenized cache lies beside it, outside."""

    def __init__(self, root: Path, model: Path, pair_run: Path | None = None):
        self.root, self.model, self._pair_run = root, model, pair_run
        self.cache = root.parent / f"{root.name}-cache"
        self.frames = frames()

    def p(self, name: str) -> Path:
        return self.root / name

    def csv(self, name: str, df: pd.DataFrame) -> Path:
        df.to_csv(self.p(name), index=False)
        return self.p(name)

    def overrides(self, kind: str, *extra: str, **changed) -> list[str]:
        """The tiny run's keys for kind, with the frames as changed (a function of the frame) written here."""
        paths = {}
        for split, df in self.frames.items():
            df = changed[split](df.copy()) if split in changed else df
            paths[split] = self.csv(f"{split}.csv", df)
        return [f"model.name_or_path={self.model}", f"data.train={paths['train']}",
                f"data.validation={paths['val']}", f"data.test={paths['test']}", "data.max_length=24",
                "train.max_steps=2", "train.per_device_train_batch_size=8", "train.mixed_precision=fp32",
                "eval.eval_steps=1", "output.report=false", f"output.dir={self.p('runs')}", "output.run_name=run",
                f"data.cache_dir={self.cache}", *type_overrides(kind), *extra]

    def train(self, kind: str, *extra: str, **changed) -> list[str]:
        return ["train", *self.overrides(kind, *extra, **changed), "--quiet"]

    def pair_run(self) -> Path:
        dst = self.p("pair_run")
        shutil.copytree(self._pair_run, dst)
        return dst


def cell(column: str, row: int, value):
    """A frame change: one cell set to value."""
    def change(df):
        df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return df
    return change


def column(name: str, values):
    """A frame change: a column replaced (values: a list cycled over, or a function of the frame)."""
    def change(df):
        df[name] = values(df) if callable(values) else [values[i % len(values)] for i in range(len(df))]
        return df
    return change


def drop(name: str):
    return lambda df: df.drop(columns=[name])


def json_sets(df) -> list[str]:
    return [json.dumps(s.split("|")) for s in df["labels"]]


# Each case: id -> (argv builder, what the line must say: the finding, then the setting that fits). Matching is
# case-insensitive and on parts of the line, so wording around them may change.
CASES = {
    # ---------------------------------------------------------------- issue 17: label sets (multi-label)
    "multi-label unknown label in validation": (
        lambda ws: ws.train(MULTI, val=cell("labels", 3, "world|weather")),
        "naming labels never seen in training: 'weather'", "known labels are business, science, sports, world"),
    "multi-label unknown label in test": (
        lambda ws: ws.train(MULTI, test=cell("labels", 0, "gossip")),
        "naming labels never seen in training: 'gossip'", "known labels are"),
    "multi-label empty label set in train": (
        lambda ws: ws.train(MULTI, train=cell("labels", 5, np.nan)),
        "1 rows with an empty label set (first at row 5)", "data.allow_empty_labels=true"),
    "multi-label empty JSON list in validation": (
        lambda ws: ws.train(MULTI, "data.label_delimiter=null", val=column("labels", lambda df: [
            "[]" if i == 2 else s for i, s in enumerate(json_sets(df))]), train=column("labels", json_sets),
            test=column("labels", json_sets)),
        "with an empty label set (first at row 2)", "data.allow_empty_labels=true"),
    "multi-label joined names without a delimiter": (
        lambda ws: ws.train(MULTI, "data.label_delimiter=null"),
        "look like several labels joined by '|'", "set data.label_delimiter='|'"),
    "multi-label cell not a JSON list": (
        lambda ws: ws.train(MULTI, train=cell("labels", 1, '["world", sports')),
        "starts like a JSON list but is not one", "data.label_delimiter"),
    "multi-label one label only": (
        lambda ws: ws.train(MULTI, train=column("labels", ["world"]), val=column("labels", ["world"]),
                            test=column("labels", ["world"])),
        "name only 'world'", "at least two labels"),
    "label_columns holding a 2": (
        lambda ws: ws.train(MULTI, "data.label_delimiter=null", f"data.label_columns=[{','.join(FLAGS)}]",
                            train=cell("is_sports", 4, 2)),
        "column 'is_sports' must hold 0 or 1, found 2", "one 0/1 column per label"),
    "label_columns holding words": (
        lambda ws: ws.train(MULTI, "data.label_delimiter=null", f"data.label_columns=[{','.join(FLAGS)}]",
                            val=cell("is_world", 0, "yes")),
        "column 'is_world' must hold 0 or 1, found 'yes'", "one 0/1 column per label"),
    "label_columns missing a column": (
        lambda ws: ws.train(MULTI, "data.label_delimiter=null", "data.label_columns=[is_world,is_nope]"),
        "no label column 'is_nope'", "set data.label_columns"),
    "label_columns of one column": (
        lambda ws: ws.train(MULTI, "data.label_delimiter=null", "data.label_columns=[is_world]"),
        "'data.label_columns' needs at least two 0/1 columns", "one per label"),
    # ---------------------------------------------------------------- issue 17: regression targets
    "regression non-numeric target": (
        lambda ws: ws.train(REGRESSION, train=cell("score", 7, "high")),
        "non-numeric regression targets: 'high' (first at row 7)", "model.problem_type=single_label_classification"),
    "regression NaN target": (
        lambda ws: ws.train(REGRESSION, train=cell("score", 3, np.nan)),
        "1 missing (nan) or infinite regression targets (first at row 3)", "fill or drop those rows"),
    "regression infinite target in validation": (
        lambda ws: ws.train(REGRESSION, val=cell("score", 0, "inf")),
        "missing (nan) or infinite regression targets (first at row 0)", "fill or drop those rows"),
    "regression on words": (
        lambda ws: ws.train(REGRESSION, "data.label_column=label"),
        "non-numeric regression targets: 'world'", "set model.problem_type=single_label_classification"),
    # ---------------------------------------------------------------- issue 17: a type that does not fit the data
    "single-label on floats": (
        lambda ws: ws.train(SINGLE, "data.label_column=score"),
        "non-integer numeric labels", "set model.problem_type=regression"),
    "single-label on JSON lists": (
        lambda ws: ws.train(SINGLE, train=column("label", json_sets)),
        "the labels hold lists", "model.problem_type=multi_label_classification"),
    "label_delimiter without multi-label": (
        lambda ws: ws.train(SINGLE, "data.label_delimiter=';'"),
        "'data.label_delimiter' gives label sets", "need model.problem_type=multi_label_classification"),
    "label_columns without multi-label": (
        lambda ws: ws.train(REGRESSION, f"data.label_columns=[{','.join(FLAGS)}]"),
        "'data.label_columns' gives label sets", "need model.problem_type=multi_label_classification"),
    # ---------------------------------------------------------------- issue 17: sentence pairs
    "pairs missing pair column": (
        lambda ws: ws.train(PAIRS, "data.text_pair_column=descriptoin"),
        "no text-pair column 'descriptoin' (did you mean 'description'?)", "set data.text_pair_column"),
    "pairs pair column missing from validation": (
        lambda ws: ws.train(PAIRS, val=drop("description")),
        "val.csv has no text-pair column 'description'", "set data.text_pair_column"),
    "pairs with chunks": (
        lambda ws: ws.train(PAIRS, "data.long_text=chunks"),
        "'data.long_text: chunks' applies to single texts", "data.truncation"),
    # ---------------------------------------------------------------- issue 17: settings of another type
    "metric of another type (regression, accuracy)": (
        lambda ws: ws.train(REGRESSION, "eval.metric_for_best_model=accuracy"),
        "'eval.metric_for_best_model' 'accuracy' is not a regression metric", "choose from rmse, mae, pearson"),
    "metric of another type (multi-label, accuracy)": (
        lambda ws: ws.train(MULTI, "eval.metric_for_best_model=accuracy"),
        "is not a multi_label_classification metric (did you mean 'subset_accuracy'?)", "choose from micro_f1"),
    "metric of another type (single-label, rmse)": (
        lambda ws: ws.train(SINGLE, "eval.metric_for_best_model=rmse"),
        "'rmse' is not a single_label_classification metric", "choose from accuracy, macro_f1"),
    "loss of another type (single-label, mse)": (
        lambda ws: ws.train(SINGLE, "train.loss=mse"),
        "'train.loss' mse does not fit single_label_classification", "choose cross_entropy or focal"),
    "loss of another type (regression, bce)": (
        lambda ws: ws.train(REGRESSION, "train.loss=bce"),
        "'train.loss' bce does not fit regression", "choose mse or huber"),
    "loss of another type (multi-label, huber)": (
        lambda ws: ws.train(MULTI, "train.loss=huber"),
        "'train.loss' huber does not fit multi_label_classification", "choose bce or focal"),
    "thresholds for regression": (
        lambda ws: ws.train(REGRESSION, "eval.tune_thresholds=f1"),
        "'eval.tune_thresholds' f1 needs classes", "set it to auto or none"),
    "balanced sampling for multi-label": (
        lambda ws: ws.train(MULTI, "data.sampling=balanced"),
        "'data.sampling: balanced' draws classes equally often", "single_label_classification only"),
    "label smoothing for regression": (
        lambda ws: ws.train(REGRESSION, "train.label_smoothing=0.1"),
        "'train.label_smoothing' is for single-label cross-entropy", "model.problem_type is regression"),
    # ---------------------------------------------------------------- issue 18: class weights
    "class weight for an unknown label": (
        lambda ws: ws.train(SINGLE, "train.class_weights={world: 2.0, weather: 3.0}"),
        "train.class_weights names 'weather', which is not a label of this data",
        "labels are business, science, sports, world"),
    "class weight zero": (
        lambda ws: ws.train(SINGLE, "train.class_weights={world: 0}"),
        "'train.class_weights' must be positive numbers", "label 'world' has 0"),
    "class weight negative (multi-label)": (
        lambda ws: ws.train(MULTI, "train.class_weights={sports: -1.5}"),
        "'train.class_weights' must be positive numbers", "label 'sports' has -1.5"),
    "class weights for regression": (
        lambda ws: ws.train(REGRESSION, "train.class_weights=balanced"),
        "'train.class_weights' needs classes", "remove it"),
    "balanced weights, a class absent from train": (
        lambda ws: ws.train(SINGLE, "train.class_weights=balanced", train=column("label", [0, 1, 3]),
                            val=column("label", [0, 1, 3]), test=column("label", [0, 1, 3])),
        "class_weights=balanced needs every class in the training split; '2' has no training rows",
        "give the weights as a mapping"),
    "balanced weights, a label absent from train (multi-label)": (
        lambda ws: ws.train(MULTI, "train.class_weights=balanced", "data.label_delimiter=null",
                            "data.allow_empty_labels=true", f"data.label_columns=[{','.join(FLAGS)}]",
                            train=column("is_science", [0])),
        "needs every label in the training split; 'is_science' never occurs there", "give the weights as a mapping"),
    # ---------------------------------------------------------------- issue 18: long texts
    "stride equal to max_length": (
        lambda ws: ws.train(SINGLE, "data.long_text=chunks", "data.stride=24"),
        "'data.stride' (24) must be smaller than data.max_length (24)", "windows advance by max_length - stride"),
    "stride over max_length": (
        lambda ws: ws.train(SINGLE, "data.long_text=chunks", "data.stride=100"),
        "'data.stride' (100) must be smaller than data.max_length (24)", "windows advance"),
    "head_tokens over max_length": (
        lambda ws: ws.train(SINGLE, "data.long_text=head_tail", "data.head_tokens=30"),
        "'data.head_tokens' (30) must be smaller than data.max_length (24)", "holds the tail"),
    # ---------------------------------------------------------------- issue 18: calibration
    "calibration for regression": (
        lambda ws: ws.train(REGRESSION, "eval.calibration=temperature"),
        "'eval.calibration: temperature' is for single_label_classification", "model.problem_type is regression"),
    "calibration for multi-label": (
        lambda ws: ws.train(MULTI, "eval.calibration=temperature"),
        "'eval.calibration: temperature' is for single_label_classification",
        "model.problem_type is multi_label_classification"),
    # calibration without a validation split cannot be asked for: every run has one (a file, or data.validation_split
    # > 0 carved from train), and the two ways to ask for none are refused before any model loads
    "calibration with validation_split 0": (
        lambda ws: ws.train(SINGLE, "eval.calibration=temperature", "data.validation=null", "data.validation_split=0"),
        "'data.validation_split' must be > 0, got 0.0", "data.validation_split"),
    "calibration with an empty validation file": (
        lambda ws: ws.train(SINGLE, "eval.calibration=temperature", val=lambda df: df.iloc[:0]),
        "val.csv has a header but no rows", "add at least one row"),
    # ---------------------------------------------------------------- issue 19: train.prefix_cache=true
    "prefix cache with every layer adapted": (
        lambda ws: ws.train(SINGLE, "train.prefix_cache=true"),
        "'train.prefix_cache: true' cannot apply: the lowest encoder layer carries an adapter",
        "set adapter.layers_to_transform to adapt only the top layers"),
    "prefix cache with augmentation": (
        lambda ws: ws.train(SINGLE, "train.prefix_cache=true", "adapter.layers_to_transform=1", "augment.enabled=true"),
        "'train.prefix_cache: true' does not combine with augment.enabled", "set train.prefix_cache=auto or false"),
    "fast dropout with torch.compile": (
        lambda ws: ws.train(SINGLE, "train.fast_dropout=true", "train.torch_compile=true"),
        "'train.fast_dropout: true' does not combine with train.torch_compile", "set train.fast_dropout=auto or false"),
    # ---------------------------------------------------------------- predict: a pair run given single texts
    "predict pair run without the pair column": (
        lambda ws: ["predict", str(ws.pair_run()), "--input", str(ws.csv("in.csv", ws.frames["test"][["title"]])),
                    "--output", str(ws.p("out.csv")), "--quiet"],
        "no text-pair column 'description'", "data.text_pair_column"),
}


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_bert) -> Path:
    """A finished tiny sentence-pair run (title, description -> match/mismatch)."""
    ws = WS(tmp_path_factory.mktemp("pair_run"), tiny_bert)
    return train(load_config(None, ws.overrides(PAIRS)), quiet=True).run_dir


def run_cli(argv: list[str], capfd) -> tuple[int, str, str]:
    capfd.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capfd.readouterr()
    return rc, out, err


def test_the_cases_cover_issue_17_and_18():
    assert len(CASES) >= 40  # 43 when written


@pytest.mark.parametrize("case", list(CASES))
def test_problem_bad_input(case, tmp_path, tiny_bert, pair_run, capfd, monkeypatch):
    build, finding, fix = CASES[case]
    ws = WS(tmp_path / "ws", tiny_bert, pair_run)
    ws.root.mkdir()
    argv = build(ws)
    monkeypatch.chdir(ws.root)  # anything written to the current folder shows up in the snapshot
    monkeypatch.setenv("LORACLF_CACHE", str(ws.cache))
    before = snapshot(ws.root)
    rc, out, err = run_cli(argv, capfd)
    lines = err.strip().splitlines()
    assert rc == 2, f"exit {rc}; stderr: {err[-1500:]}"
    assert "Traceback" not in err, err[-1500:]
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}:\n{err[-1500:]}"
    assert lines[0].startswith(f"loraclf {argv[0]}: error: "), lines[0]
    assert finding.lower() in lines[0].lower(), lines[0]
    assert fix.lower() in lines[0].lower(), lines[0]
    assert out == "", out[-500:]
    assert not ws.p("runs").exists() or not any(ws.p("runs").iterdir()), "a run folder was written"
    assert snapshot(ws.root) == before, "files created, removed or changed"
    if argv[0] == "train":
        api_raises_the_same_line(argv, lines[0].split(": error: ", 1)[1], ws)


def api_raises_the_same_line(argv: list[str], line: str, ws: WS) -> None:
    """loraclf.train with the same keys raises a LoraclfError subclass whose message is the CLI's line."""
    overrides = {}
    for text in argv[1:]:
        if "=" in text:
            keys, value = parse_override(text)
            overrides[".".join(keys)] = value
    before = snapshot(ws.root)
    try:
        loraclf.train(None, quiet=True, **overrides)
    except SystemExit as e:
        pytest.fail(f"loraclf.train called sys.exit({e.code}) instead of raising")
    except LoraclfError as e:
        assert isinstance(e, (ConfigError, DataError)), type(e)
        assert " ".join(str(e).split("\n")) == line
    else:
        pytest.fail("loraclf.train accepted the bad input")
    assert snapshot(ws.root) == before


def test_label_delimiter_given_as_a_bare_pipe_on_the_command_line(tmp_path):
    """`data.label_delimiter=|` is what a user types after reading "set data.label_delimiter='|'" (the shell eats
    the quotes). YAML reads a bare | as an empty block scalar, so the key silently became '' (no delimiter) and the
    run then refused the '|'-joined cells, telling the user to set what they had set (`label_delimiter: |` in a YAML
    file does the same). Either the pipe is taken as the delimiter, or the empty value is refused; never an empty
    delimiter read as none."""
    try:
        cfg = load_config(None, [f"model.problem_type={MULTI}", "data.label_delimiter=|"])
    except ConfigError as e:
        assert "data.label_delimiter" in str(e)
        return
    assert cfg.data.label_delimiter == "|"
