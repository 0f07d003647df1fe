"""The bad-input matrix: every verb, every class of bad input (issues 17, 18, 21 and the ones before them).

The promise under test: bad input gets one clear line on stderr (`loraclf VERB: error: ...`) that names its cause,
exit code 2, no traceback, nothing on stdout, and no file created, removed or changed (inputs included). Each case
runs `loraclf.cli.main` in-process under capfd, so whatever any library writes to the stderr descriptor is seen too;
a few also run as real `python -m loraclf` processes. Each case lists words of its cause (and of the fix) that the
line must hold, matched case-insensitively. Cases marked `api` then call `loraclf.train` with the same keys, which
must raise a ConfigError/DataError whose message is that line. Cases that need a run folder get a fresh copy of a
tiny session-scoped run, damaged by the case.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import pandas as pd
import pytest
import torch

import loraclf
from loraclf import cli, runs
from loraclf.base.errors import ConfigError, DataError, LoraclfError
from loraclf.config import load_config, parse_override
from loraclf.training import train

from helpers_problem import MULTI as MULTI_TYPE, NAMES, PAIRS, REGRESSION as REGRESSION_TYPE, SINGLE, problem_rows, \
    type_overrides

HUGE = str(10**30)  # past int64, so anything that reaches torch overflows
WORDS = ("alpha river stone cloud", "market price trade bank", "goal match team season", "chip data code network")
FLAGS = ["is_" + n for n in NAMES]  # data.label_columns of the typed rows: one 0/1 column per topic


# ------------------------------------------------------------------------------------------ data and the runs


def rows(n: int, seed: int, labels=None) -> list[tuple[str, object]]:
    """n short texts, four separable classes; labels (a list cycled over) replaces the class number."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = WORDS[i % 4].split()
        out.append((" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))),
                    labels[i % len(labels)] if labels else i % 4))
    return out


def class_rows(n_per_class=4, classes=(0, 1)) -> list[tuple[str, int]]:
    return [(f"some text number {i} of class {c}", c) for c in classes for i in range(n_per_class)]


def write_csv(path: Path, data: list[tuple], header=("text", "label")) -> Path:
    pd.DataFrame(data, columns=list(header)).to_csv(path, index=False)
    return path


def typed_frames() -> dict[str, pd.DataFrame]:
    """Train/val/test frames with every problem type's columns, plus the 0/1 columns of data.label_columns."""
    out = {}
    for seed, (name, n) in enumerate({"train": 32, "val": 12, "test": 12}.items()):
        df = problem_rows(n, seed)
        for flag, topic in zip(FLAGS, NAMES):
            df[flag] = df["labels"].map(lambda s, t=topic: int(t in s.split("|")))
        out[name] = df
    return out


def base_overrides(model: Path, train_csv: Path, val_csv: Path, out_dir: Path, cache: Path) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={train_csv}", f"data.validation={val_csv}",
            "data.max_length=32", "train.max_steps=2", "train.per_device_train_batch_size=8",
            "train.mixed_precision=fp32", "eval.eval_steps=1", "output.report=false", f"output.dir={out_dir}",
            "output.run_name=run", f"data.cache_dir={cache}", "train.few_shot=false"]


def typed_overrides(kind: str, model: Path, paths: dict[str, Path], out_dir: Path, cache: Path) -> list[str]:
    """The tiny run of one problem type on the typed frames (max_length 24: the stride messages quote it)."""
    return [f"model.name_or_path={model}", f"data.train={paths['train']}", f"data.validation={paths['val']}",
            f"data.test={paths['test']}", "data.max_length=24", "train.max_steps=2",
            "train.per_device_train_batch_size=8", "train.mixed_precision=fp32", "eval.eval_steps=1",
            "output.report=false", f"output.dir={out_dir}", "output.run_name=run", f"data.cache_dir={cache}",
            *type_overrides(kind)]


@pytest.fixture(scope="module")
def matrix_data(tmp_path_factory) -> dict[str, Path]:
    """A few dozen rows written here (no ../shared), copied into each case's workspace."""
    folder = tmp_path_factory.mktemp("matrix_data")
    return {name: write_csv(folder / f"{name}.csv", rows(n, seed))
            for seed, (name, n) in enumerate({"train": 48, "val": 16, "test": 16}.items())}


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory, tiny_bert, matrix_data) -> Path:
    """One finished tiny run (r=8, checkpoints kept), trained once; cases damage copies of it."""
    root = tmp_path_factory.mktemp("matrix_run")
    cfg = load_config(None, base_overrides(tiny_bert, matrix_data["train"], matrix_data["val"], root, root / "cache"))
    return train(cfg, quiet=True).run_dir


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_bert) -> Path:
    """A finished tiny sentence-pair run (title, description -> match/mismatch)."""
    root = tmp_path_factory.mktemp("pair_run")
    paths = {}
    for split, df in typed_frames().items():
        paths[split] = root / f"{split}.csv"
        df.to_csv(paths[split], index=False)
    return train(load_config(None, typed_overrides(PAIRS, tiny_bert, paths, root, root / "cache")), quiet=True).run_dir


class WS:
    """One case's workspace under tmp_path: its inputs, its run copies, and every path it may (wrongly) write."""

    def __init__(self, root: Path, model: Path, data: dict[str, Path], run: Path, pair: Path):
        self.root, self.model, self._run, self._pair = root, model, run, pair
        (root / "data").mkdir()
        self.data = {k: Path(shutil.copy(v, root / "data" / v.name)) for k, v in data.items()}
        self.cache = root.parent / f"{root.name}-cache"  # tokenized caches are caches: kept out of the snapshot
        self.frames = typed_frames()

    def p(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.p(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def csv(self, name: str, data: list[tuple], header=("text", "label")) -> Path:
        return write_csv(self.p(name), data, header)

    def frame(self, name: str, df: pd.DataFrame) -> Path:
        df.to_csv(self.p(name), index=False)
        return self.p(name)

    def folder(self, name: str) -> Path:
        self.p(name).mkdir(parents=True, exist_ok=True)
        return self.p(name)

    def run(self) -> Path:
        dst = self.p("run")
        if not dst.exists():
            shutil.copytree(self._run, dst)
        return dst

    def pair_run(self) -> Path:
        dst = self.p("pair_run")
        if not dst.exists():
            shutil.copytree(self._pair, dst)
        return dst

    def ckpt(self) -> Path:
        return runs.latest_checkpoint(self.run())

    def train_args(self, *extra: str, train_csv: Optional[Path] = None, val_csv: Optional[Path] = None) -> list[str]:
        return ["train", *base_overrides(self.model, train_csv or self.data["train"], val_csv or self.data["val"],
                                         self.p("runs"), self.cache), *extra]

    def typed_args(self, kind: str, *extra: str, **changed: Callable) -> list[str]:
        """`train` of one problem type on the typed frames, each split changed by changed[split] (a frame change)."""
        paths = {split: self.frame(f"{split}.csv", changed[split](df.copy()) if split in changed else df)
                 for split, df in self.frames.items()}
        return ["train", *typed_overrides(kind, self.model, paths, self.p("runs"), self.cache), *extra]

    def predict_args(self, *extra: str, run: Optional[Path] = None, input: Optional[Path] = None,
                     output: Optional[str | Path] = None) -> list[str]:
        return ["predict", str(run or self.run()), "--input", str(input or self.data["test"]),
                "--output", str(output or self.p("out.csv")), *extra]

    def evaluate_args(self, *extra: str, run: Optional[Path] = None, data: Optional[Path] = None) -> list[str]:
        return ["evaluate", str(run or self.run()), "--data", str(data or self.data["test"]), *extra]

    def augment_args(self, *extra: str, output: Optional[str | Path] = None) -> list[str]:
        return ["augment", "--input", str(self.data["train"]), "--output", str(output or self.p("aug.csv")), *extra]


def snapshot(root: Path) -> dict[str, object]:
    """Every path under root: 'dir', or (size, mtime_ns, sha256) of a file."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            path = os.path.join(dirpath, f)
            st = os.stat(path)
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, digest)
    return out


# ------------------------------------------------------------------------------------------ damage and file helpers


def in_run(name: str, content: str | bytes) -> Callable[[WS], None]:
    """Setup: replace RUN/name with content (valid JSON/YAML of the wrong shape, mostly)."""
    return lambda ws: ws.write(str(ws.run().relative_to(ws.root) / name), content)


def without(name: str) -> Callable[[WS], None]:
    """Setup: RUN/name removed."""
    return lambda ws: shutil.rmtree(ws.run() / name)


def truncated_adapter(ws: WS) -> None:
    f = ws.run() / runs.ADAPTER / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])


def resign(ckpt: Path) -> None:
    """Rewrite a checkpoint's COMPLETE manifest over its present files, so the damage is not skipped as a torn
    checkpoint (checksum mismatch) but read, as a file written wrongly would be."""
    manifest = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                for p in sorted(ckpt.iterdir()) if p.name != runs.COMPLETE}
    (ckpt / runs.COMPLETE).write_text(json.dumps(manifest, indent=2))


def in_ckpt(name: str, content: str | bytes) -> Callable[[WS], None]:
    """Setup: replace name in the newest checkpoint of RUN, with a matching manifest."""
    def damage(ws: WS) -> None:
        (ws.ckpt() / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        resign(ws.ckpt())
    return damage


def tampered_pt(name: str) -> Callable[[WS], None]:
    """Setup: a torch file whose pickle names a callable (builtins.print), which a weights-only load refuses."""
    def damage(ws: WS) -> None:
        torch.save({"state": print}, ws.ckpt() / name)
        resign(ws.ckpt())
    return damage


def broken_model(ws: WS) -> Path:
    (ws.folder("broken_model") / "config.json").write_text("{ this is not json")
    return ws.p("broken_model")


def yaml_file(ws: WS, name: str, text: str | bytes) -> str:
    return str(ws.write(name, text))


def sweep_file(ws: WS, extra: str) -> str:
    """A one-trial sweep over the tiny model, so a sweep that wrongly starts still ends in seconds."""
    overrides = "\n".join(f"  {o.split('=', 1)[0]}: {o.split('=', 1)[1]}" for o in base_overrides(
        ws.model, ws.data["train"], ws.data["val"], ws.p("sweep_runs"), ws.cache))
    return yaml_file(ws, "sweep.yaml", f"overrides:\n{overrides}\nmetric: accuracy\nn_trials: 1\n"
                                       f"output: {ws.p('sweep')}\n{extra}")


LR_SPACE = "space:\n  train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3}\n"
BAD_LABEL_MAP = '{"id2label": ["a", "b"], "label2id": 3}'


def frac_jsonl(ws: WS, name: str, n: int) -> Path:
    """Labels 1.0 and 2.5, as JSON numbers."""
    return ws.write(name, "".join(f'{{"text": "{t}", "label": {[1.0, 2.5][i % 2]}}}\n'
                                  for i, (t, _) in enumerate(rows(n, 4))))


def stream_file(ws: WS, name: str, bad_line: str) -> Path:
    """A streamed training file whose 40th line is malformed."""
    lines = [f'{{"text": "{t}", "label": {label}}}' for t, label in rows(60, 7)]
    lines[40] = bad_line
    return ws.write(name, "\n".join(lines) + "\n")


# frame changes for the typed cases


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


MULTI = ["model.problem_type=multi_label_classification", "data.label_delimiter=';'"]
REGRESSION = "model.problem_type=regression"
LABEL_COLUMNS = ["data.label_delimiter=null", f"data.label_columns=[{','.join(FLAGS)}]"]
RESUME = ["train", "--resume"]


# ------------------------------------------------------------------------------------------ the cases


class Case(NamedTuple):
    id: str  # starts with the verb (or resume/stream, which run `train`)
    argv: Callable[[WS], list[str]]
    words: tuple[str, ...]  # words of the cause (and the fix) that the line must hold
    setup: Optional[Callable[[WS], object]] = None
    api: bool = False  # `train` cases whose keys loraclf.train must refuse with the same line
    head: Optional[str] = None  # the line's start when not `loraclf VERB: error:` (argparse's top level)


def cv_args(ws: WS, *extra: str, train_csv: Optional[Path] = None, output: Optional[Path] = None) -> list[str]:
    return ["cv", *base_overrides(ws.model, train_csv or ws.data["train"], ws.data["val"], ws.p("runs"), ws.cache),
            "--output", str(output or ws.p("cv")), *extra]


def grouped(ws: WS, n_groups: int) -> Path:
    """Training rows of four classes (6 each) with a group column 'g' of n_groups groups."""
    data = [(t, c, f"g{i % n_groups}") for i, (t, c) in enumerate(class_rows(6, (0, 1, 2, 3)))]
    return ws.csv("grouped.csv", data, header=("text", "label", "g"))


def audit_args(ws: WS, *extra: str, train_csv: Optional[Path] = None, val_csv: Optional[Path] = None) -> list[str]:
    return ["audit", *base_overrides(ws.model, train_csv or ws.data["train"], val_csv or ws.data["val"],
                                     ws.p("runs"), ws.cache), "--output", str(ws.p("audit")), *extra]


def resume(ws: WS, *extra: str) -> list[str]:
    return ["train", "--resume", str(ws.run()), *extra]


MUST_BE_AT_MOST = ("must be at most 9,223,372,036,854,775,807 in size", "got a 31-digit number")
REFUSED_ON_RESUME = ("checkpoint step-2 does not match this model", "on --resume only keys that keep the trainable "
                     "shape may change", "model.* and adapter.* must stay as the run's config.yaml has them")
DAMAGED = "it is not what loraclf wrote: restore it or train the run again"
DUPLICATE_KEY = "is not valid yaml: key '{}' is given twice (lines {}); keep one"
FRACTIONAL = ("non-integer numeric label", "they look like regression targets", "set model.problem_type=regression")
NOT_A_FILE_PARENT = "is a file, not a folder"
SAME_AS_INPUT = "is the --input file; writing it would overwrite what is read: give another --output path"
UNSAFE_CHECKPOINT = ("cannot load checkpoint", "safely", "delete that step-n folder to resume from an older checkpoint")

# ------------------------------------------------ config: keys, values, files
CONFIG_CASES = [
    Case("train wrong-typed key", lambda ws: ws.train_args("train.learning_rate=fast"),
         ("'train.learning_rate' expected a number", "got 'fast'")),
    Case("train negative learning rate", lambda ws: ws.train_args("train.learning_rate=-0.001"),
         ("'train.learning_rate' must be > 0", "got -0.001")),
    Case("train rank zero", lambda ws: ws.train_args("adapter.r=0"), ("'adapter.r' must be >= 1 or 'auto'", "got 0")),
    Case("train misspelled key", lambda ws: ws.train_args("train.learnig_rate=0.001"),
         ("unknown key 'train.learnig_rate'", "did you mean 'learning_rate'")),
    Case("train misspelled choice", lambda ws: ws.train_args("adapter.method=lorra"),
         ("'adapter.method' must be one of", "got 'lorra'", "did you mean 'lora'")),
    Case("train dropout out of range", lambda ws: ws.train_args("adapter.lora_dropout=1.5"),
         ("'adapter.lora_dropout' must be < 1", "got 1.5")),
    Case("train max_length too small", lambda ws: ws.train_args("data.max_length=2"),
         ("'data.max_length' must be >= 8", "got 2")),
    Case("train section given a value", lambda ws: ws.train_args("train=3"),
         ("'train' must be a section (a mapping)", "got 3")),
    Case("validate override without =", lambda ws: ["validate", yaml_file(ws, "c.yaml", "train:\n  seed: 1\n"),
                                                    "train.seed"],
         ("override 'train.seed' must look like section.key=value", "e.g. train.learning_rate")),
    Case("train config file missing", lambda ws: ["train", str(ws.p("nope.yaml"))],
         ("config file not found", "nope.yaml", "give the path of a yaml file")),
    Case("train config not yaml", lambda ws: ["train", yaml_file(ws, "bad.yaml", "train: [1, 2\n")],
         ("bad.yaml is not valid yaml", "while parsing a flow sequence")),
    Case("validate config a list", lambda ws: ["validate", yaml_file(ws, "list.yaml", "- 1\n- 2\n")],
         ("list.yaml must hold a mapping of sections", "model:, data:, train:", "got list")),
    Case("validate config not utf-8", lambda ws: ["validate", yaml_file(ws, "latin.yaml", b"train:\n  seed: \xe9\xff\n")],
         ("latin.yaml is not valid yaml", "'utf-8' codec can't decode byte 0xe9")),
    Case("train run name escapes output.dir", lambda ws: ws.train_args("output.run_name=../../escaped"),
         ("'output.run_name' must be a plain folder name", "got '../../escaped'", "put the parent folder in output.dir")),
    Case("train over budget", lambda ws: ws.train_args("budget.max_trainable_params=10"),
         ("trainable parameters, over budget.max_trainable_params=10", "even r=1 needs", "adapter.target_modules")),
    Case("train target module not in model", lambda ws: ws.train_args("adapter.target_modules=[qkv_proj]"),
         ("target module(s) qkv_proj not found", "its linear layers are: classifier, dense, key, query, value")),
    # ------------------------------------------------ duplicate YAML keys and sections
    Case("validate duplicate key (issue)", lambda ws: ["validate", yaml_file(
        ws, "dup.yaml", "train: {learning_rate: 0.001, learning_rate: 0.5}\n")],
        (DUPLICATE_KEY.format("learning_rate", "1 and 1"),)),
    Case("validate duplicate section (issue)", lambda ws: ["validate", yaml_file(
        ws, "dup.yaml", "train:\n  max_steps: 5\ndata:\n  max_length: 32\ntrain:\n  learning_rate: 0.01\n")],
        (DUPLICATE_KEY.format("train", "1 and 5"),)),
    Case("config duplicate block key", lambda ws: ["config", yaml_file(
        ws, "dup.yaml", "data:\n  max_length: 32\n  max_length: 64\n")], (DUPLICATE_KEY.format("max_length", "2 and 3"),)),
    Case("train duplicate key in the config file", lambda ws: ws.train_args()[:1] + [yaml_file(
        ws, "dup.yaml", "train:\n  seed: 1\n  seed: 2\n")] + ws.train_args()[1:], (DUPLICATE_KEY.format("seed", "2 and 3"),)),
    Case("sweep file duplicate key", lambda ws: ["sweep", sweep_file(ws, LR_SPACE + "n_trials: 2\n")],
         ("sweep.yaml is not valid yaml: key 'n_trials' is given twice", "keep one")),
    Case("augment config duplicate key", lambda ws: ws.augment_args("--config", yaml_file(
        ws, "dup.yaml", "augment:\n  synonym_p: 0.1\n  synonym_p: 0.9\n")), (DUPLICATE_KEY.format("synonym_p", "2 and 3"),)),
    # ------------------------------------------------ duplicate label names
    Case("train label_names [a,a,b,c] (issue)", lambda ws: ws.train_args("data.label_names=[a,a,b,c]"),
         ("'data.label_names' names 'a' more than once", "each class id needs its own name")),
    Case("validate label_names [x,y,x,z]", lambda ws: ["validate", "data.label_names=[x,y,x,z]"],
         ("'data.label_names' names 'x' more than once", "each class id needs its own name")),
    Case("validate label_names duplicated in a file", lambda ws: ["validate", yaml_file(
        ws, "labels.yaml", "data:\n  label_names: [World, Sports, World, Tech]\n")],
        ("'data.label_names' names 'World' more than once", "each class id needs its own name")),
]

# ------------------------------------------------ absurd numbers: bounded in validate, before any model build
NUMBER_CASES = [
    Case("budget r 1e30 (issue)", lambda ws: ["budget", f"adapter.r={HUGE}", f"model.name_or_path={ws.model}",
                                              "--num-labels", "4"], ("'adapter.r'", *MUST_BE_AT_MOST)),
    Case("train r 1e30 (issue)", lambda ws: ws.train_args(f"adapter.r={HUGE}"), ("'adapter.r'", *MUST_BE_AT_MOST)),
    Case("validate r 1e30", lambda ws: ["validate", f"adapter.r={HUGE}"], ("'adapter.r'", *MUST_BE_AT_MOST)),
    Case("budget r -1", lambda ws: ["budget", "adapter.r=-1", f"model.name_or_path={ws.model}", "--num-labels", "4"],
         ("'adapter.r' must be >= 1 or 'auto', got -1",)),
    Case("validate batch size 1e30", lambda ws: ["validate", f"train.per_device_train_batch_size={HUGE}"],
         ("'train.per_device_train_batch_size' must be <= 4096", "got a 31-digit number")),
    Case("train batch size -1", lambda ws: ws.train_args("train.per_device_train_batch_size=-1"),
         ("'train.per_device_train_batch_size' must be >= 1, got -1",)),
    Case("validate max_length 1e30", lambda ws: ["validate", f"data.max_length={HUGE}"],
         ("'data.max_length' must be <= 8192", "got a 31-digit number")),
    Case("validate eval batch size 1e30", lambda ws: ["validate", f"eval.per_device_eval_batch_size={HUGE}"],
         ("'eval.per_device_eval_batch_size' must be <= 4096", "got a 31-digit number")),
    Case("validate gradient accumulation 1e30", lambda ws: ["validate", f"train.gradient_accumulation_steps={HUGE}"],
         ("'train.gradient_accumulation_steps' must be <= 1000000000", "got a 31-digit number")),
    Case("validate max_steps 1e30", lambda ws: ["validate", f"train.max_steps={HUGE}"],
         ("'train.max_steps' must be <= 1000000000", "got a 31-digit number")),
    Case("validate adalora init_r 1e30", lambda ws: ["validate", "adapter.method=adalora", f"adapter.init_r={HUGE}"],
         ("'adapter.init_r' must be <= 8192", "got a 31-digit number")),
    Case("budget num-labels 1e30", lambda ws: ["budget", f"model.name_or_path={ws.model}", "--num-labels", HUGE],
         ("argument --num-labels: expected an integer <= 100,000", "got a 31-digit number")),
    Case("budget num-labels -1", lambda ws: ["budget", f"model.name_or_path={ws.model}", "--num-labels", "-1"],
         ("argument --num-labels: expected an integer >= 1, got -1",)),
    Case("budget num-labels 0", lambda ws: ["budget", f"model.name_or_path={ws.model}", "--num-labels", "0"],
         ("argument --num-labels: expected an integer >= 1, got 0",)),
    Case("predict batch size 1e30", lambda ws: ws.predict_args("--batch-size", HUGE),
         ("argument --batch-size: expected an integer <= 4,096", "got a 31-digit number")),
    Case("predict zero batch size", lambda ws: ws.predict_args("--batch-size", "0"),
         ("argument --batch-size: expected an integer >= 1, got 0", "(see `loraclf predict --help`)")),
    Case("explain steps 1e30", lambda ws: ["explain", str(ws.run()), "--input", str(ws.data["test"]), "--output",
                                           str(ws.p("why.json")), "--steps", HUGE],
         ("argument --steps: expected an integer <= 1,024", "got a 31-digit number")),
    Case("evaluate batch size 1e30", lambda ws: ws.evaluate_args("--batch-size", HUGE),
         ("argument --batch-size: expected an integer <= 4,096", "got a 31-digit number")),
    Case("augment num-copies 1e30", lambda ws: ws.augment_args("--num-copies", HUGE),
         ("'augment.num_copies' must be <= 100", "got a 31-digit number")),
    Case("augment num-copies -1", lambda ws: ws.augment_args("--num-copies", "-1"),
         ("'augment.num_copies' must be >= 1, got -1",)),
    Case("serve port 1e30", lambda ws: ["serve", str(ws.run()), "--port", HUGE],
         ("--port must be between 1 and 65535", f"got {HUGE}")),
    Case("serve port -1", lambda ws: ["serve", str(ws.run()), "--port", "-1"],
         ("--port must be between 1 and 65535, got -1",)),
    Case("serve max-wait-ms -5", lambda ws: ["serve", str(ws.run()), "--max-wait-ms", "-5"],
         ("--max-wait-ms must be 0 or more, got -5",)),
    Case("sweep space r 1e30", lambda ws: ["sweep", sweep_file(ws, f"space:\n  adapter.r: {{type: int, low: {HUGE}, "
                                                                   f"high: {HUGE}0}}\n")],
         ("space 'adapter.r' value", *MUST_BE_AT_MOST)),
    Case("sweep n-trials -1", lambda ws: ["sweep", sweep_file(ws, LR_SPACE), "--n-trials", "-1"],
         ("--n-trials must be >= 0, got -1",)),
]

# ------------------------------------------------ CLI arguments
ARGUMENT_CASES = [
    Case("train unknown flag", lambda ws: ["train", "--bogus"], ("unrecognized arguments: --bogus",
                                                                 "(see `loraclf --help`)"), head="loraclf: error:"),
    Case("predict bad choice flag", lambda ws: ["predict", "x", "--input", "a", "--output", "b", "--format", "xml"],
         ("argument --format: invalid choice: 'xml'", "(choose from 'competition', 'full')",
          "(see `loraclf predict --help`)")),
]

# ------------------------------------------------ output paths that cannot be written
OUTPUT_CASES = [
    Case("train output.dir an existing file (issue)", lambda ws: ws.train_args(f"output.dir={ws.data['train']}"),
         ("train.csv is a file, not a folder", "give a folder path")),
    Case("train output.dir under a file", lambda ws: ws.train_args(f"output.dir={ws.data['train']}/runs"),
         ("cannot create output.dir", "train.csv/runs", "train.csv " + NOT_A_FILE_PARENT)),
    Case("train output.dir impossible (/proc)", lambda ws: ws.train_args("output.dir=/proc/loraclf-nope/runs"),
         ("cannot write output.dir /proc/loraclf-nope/runs", "no such file or directory in /proc")),
    Case("predict output an existing folder (issue)", lambda ws: ws.predict_args(output=ws.folder("outdir")),
         ("--output", "outdir is a folder", "give the path of a file to write")),
    Case("predict output under a file", lambda ws: ws.predict_args(output=f"{ws.data['train']}/out.csv"),
         ("cannot write --output", "train.csv " + NOT_A_FILE_PARENT)),
    Case("predict output impossible (/proc)", lambda ws: ws.predict_args(output="/proc/loraclf-nope/out.csv"),
         ("cannot write --output /proc/loraclf-nope/out.csv", "no such file or directory in /proc")),
    Case("predict output equal to input (issue)", lambda ws: ws.predict_args(output=ws.data["test"]),
         ("test.csv " + SAME_AS_INPUT,)),
    Case("predict output equal to input by another path", lambda ws: ws.predict_args(
        output=ws.p("data") / ".." / "data" / ws.data["test"].name), ("data/../data/test.csv " + SAME_AS_INPUT,)),
    Case("predict output format", lambda ws: ws.predict_args(output=ws.p("out.xlsx")),
         ("unknown output format '.xlsx'", "out.xlsx", "use .csv, .tsv, .jsonl or .parquet")),
    Case("evaluate output a folder (issue)", lambda ws: ws.evaluate_args("--output", str(ws.folder("evdir"))),
         ("evdir is a folder", "give the path of a file to write")),
    Case("evaluate output under a file", lambda ws: ws.evaluate_args("--output", f"{ws.data['test']}/m.json"),
         ("cannot write --output", "test.csv " + NOT_A_FILE_PARENT)),
    Case("evaluate output equal to data", lambda ws: ws.evaluate_args("--output", str(ws.data["test"])),
         ("test.csv is the --data file", "writing it would overwrite what is read", "give another --output path")),
    Case("evaluate output impossible (/proc)", lambda ws: ws.evaluate_args("--output", "/proc/loraclf-nope/m.json"),
         ("cannot write --output /proc/loraclf-nope/m.json", "no such file or directory in /proc")),
    # the line says "unknown output format 'augdir'", not that augdir is a folder: see NO_CAUSE
    Case("augment output an existing folder", lambda ws: ws.augment_args(output=ws.folder("augdir")), ()),
    Case("augment output equal to input", lambda ws: ws.augment_args(output=ws.data["train"]),
         ("train.csv " + SAME_AS_INPUT,)),
    Case("augment output under a file", lambda ws: ws.augment_args(output=f"{ws.data['train']}/aug.csv"),
         ("cannot write --output", "train.csv " + NOT_A_FILE_PARENT)),
    Case("augment output a hard link to the input", lambda ws: ws.augment_args(output=ws.p("link.csv")),
         ("link.csv " + SAME_AS_INPUT,), lambda ws: os.link(ws.data["train"], ws.p("link.csv"))),
    Case("augment output impossible (/proc)", lambda ws: ws.augment_args(output="/proc/loraclf-nope/aug.csv"),
         ("cannot write --output /proc/loraclf-nope/aug.csv", "no such file or directory in /proc")),
    Case("compare output an existing file", lambda ws: ["compare", str(ws.run()), "--output", str(ws.data["val"])],
         ("val.csv exists and is not a folder", "give a folder to write the comparison into")),
    Case("compare output under a file", lambda ws: ["compare", str(ws.run()), "--output", f"{ws.data['val']}/cmp"],
         ("cannot write the comparison into", "val.csv/cmp: not a directory")),
    Case("export output an existing file", lambda ws: ["export", str(ws.run()), "--output", str(ws.data["val"])],
         ("val.csv is a file", "give a folder to write the model into")),
    Case("export output equal to the run, --overwrite",
         lambda ws: ["export", str(ws.run()), "--output", str(ws.run()), "--overwrite"],
         ("lies inside the run folder", "export to a folder of its own")),
    Case("explain unknown target", lambda ws: ["explain", str(ws.run()), "--input", str(ws.data["test"]), "--output",
                                               str(ws.p("why.json")), "--target", "weather"],
         ("unknown target label 'weather'", "this model's labels are: 0, 1, 2, 3")),
    Case("explain output not .json", lambda ws: ["explain", str(ws.run()), "--input", str(ws.data["test"]),
                                                 "--output", str(ws.data["test"])],
         ("test.csv must be a .json file", "the html page is written beside it")),
    Case("explain output equal to input", lambda ws: ["explain", str(ws.run()), "--input", str(ws.p("in.json")),
                                                      "--output", str(ws.p("in.json"))],
         ("in.json " + SAME_AS_INPUT,), lambda ws: ws.write("in.json", json.dumps([{"text": "alpha river"}]))),
    Case("audit data with one class", lambda ws: audit_args(ws, train_csv=ws.csv("one.csv", class_rows(8, (0,))),
                                                         val_csv=ws.p("one.csv")),
         ("only one class (0)", "at least two")),
    Case("audit folds above the smallest class", lambda ws: audit_args(ws, "--folds", "13"),
         ("--folds 13 is more than the 12 training rows of class '0'", "lower --folds to at most 12")),
    Case("audit write-clean onto the input", lambda ws: audit_args(ws, "--write-clean", str(ws.data["train"])),
         ("train.csv is one of the config's data files", "the original is never touched", "give another path")),
    Case("audit regression", lambda ws: audit_args(ws, "model.problem_type=regression"),
         ("model.problem_type=regression has none to find", "classification config")),
    Case("audit relabel without write-clean", lambda ws: audit_args(ws, "--relabel"),
         ("--relabel changes the labels of the file --write-clean writes", "give --write-clean file")),
    Case("audit from-cv not a cv folder", lambda ws: audit_args(ws, "--from-cv", str(ws.folder("notcv"))),
         ("notcv is not a cv run folder", "no cv.json", "finished `loraclf cv`")),
    Case("audit from-cv other rows", lambda ws: audit_args(ws, "--from-cv", str(ws.p("othercv"))),
         ("othercv was cross-validated on other training rows", "5 rows there, 48 here", "run cv on this config"),
         lambda ws: ws.write("othercv/cv.json", json.dumps({"problem_type": "single_label_classification",
                                                             "labels": ["0", "1", "2", "3"], "rows": 5}))),
    Case("audit unknown label-probs source", lambda ws: audit_args(ws, "--label-probs", "folds,bert"),
         ("--label-probs takes a comma-separated subset of folds, embeddings, tfidf", "got folds,bert")),
    Case("audit unknown filter-by", lambda ws: audit_args(ws, "--filter-by", "best"),
         ("--filter-by must be one of both, prune_by_noise_rate", "(cleanlab's filter_by), got best")),
    Case("audit from-cv without folds", lambda ws: audit_args(ws, "--from-cv", str(ws.folder("cvdir")),
                                                              "--label-probs", "embeddings"),
         ("--from-cv gives the folds' probabilities", "--label-probs leaves out folds")),
    Case("cv folds above the smallest class", lambda ws: cv_args(ws, "--folds", "13"),
         ("--folds 13 is more than the 12 training rows of class '0'", "lower --folds to at most 12")),
    Case("cv one fold", lambda ws: cv_args(ws, "--folds", "1"), ("--folds must be at least 2, got 1",)),
    Case("cv self-training", lambda ws: cv_args(ws, f"data.unlabeled={ws.data['test']}"),
         ("self-training (data.unlabeled) is not cross-validated", "unset data.unlabeled")),
    Case("cv group column with one group", lambda ws: cv_args(ws, "data.group_column=g", train_csv=grouped(ws, 1)),
         ("group column 'g' has one group ('g0')", "at least 5 groups")),
    Case("cv group column missing", lambda ws: cv_args(ws, "data.group_column=speaker"),
         ("train.csv has no group column 'speaker'", "columns are: text, label", "set data.group_column")),
    Case("cv fewer groups than folds", lambda ws: cv_args(ws, "data.group_column=g", train_csv=grouped(ws, 3)),
         ("group column 'g' has 3 groups, fewer than --folds 5", "lower --folds to at most 3")),
    Case("cv group column is the label column", lambda ws: cv_args(ws, "data.group_column=label"),
         ("'data.group_column' ('label') is also data.label_column",)),
    Case("cv output holds something else", lambda ws: cv_args(ws, output=ws.p("full")),
         ("full is not empty and holds no cv run", "give a new or empty folder"), lambda ws: ws.write("full/x.txt", "x")),
    Case("report folder is a file", lambda ws: ["report", str(ws.run())],
         ("run/report is a file where the report folder goes", "move it away"), in_run(runs.REPORT, "not a folder")),
]

# ------------------------------------------------ run folders: missing, damaged, files of the wrong shape
RUN_CASES = [
    Case("predict missing run folder", lambda ws: ws.predict_args(run=ws.p("no-such-run")),
         ("run folder not found", "no-such-run", "give the folder that `loraclf train` printed")),
    Case("predict run folder without adapter", lambda ws: ws.predict_args(),
         ("run/adapter is missing or incomplete", "the run did not finish", "loraclf train --resume"),
         without(runs.ADAPTER)),
    Case("predict adapter weights truncated", lambda ws: ws.predict_args(),
         ("adapter_model.safetensors is damaged", "invalid header length", "re-run `loraclf train`"), truncated_adapter),
    Case("predict label map not json", lambda ws: ws.predict_args(),
         ("label_map.json is not valid json", "train the run again"), in_run(runs.LABEL_MAP, "{{{ not: [valid\n")),
    Case("predict run config not yaml", lambda ws: ws.predict_args(),
         ("config.yaml is not valid yaml", "train the run again"), in_run(runs.CONFIG, "{{{ not: [valid\n")),
    Case("predict label_map wrong shape (issue)", lambda ws: ws.predict_args(),
         ("label_map.json is damaged ('id2label' is list)", DAMAGED), in_run(runs.LABEL_MAP, BAD_LABEL_MAP)),
    Case("evaluate label_map wrong shape (issue)", lambda ws: ws.evaluate_args(),
         ("label_map.json is damaged ('id2label' is list)", DAMAGED), in_run(runs.LABEL_MAP, BAD_LABEL_MAP)),
    Case("export label_map wrong shape (issue)", lambda ws: ["export", str(ws.run()), "--output", str(ws.p("exp"))],
         ("label_map.json is damaged ('id2label' is list)", DAMAGED), in_run(runs.LABEL_MAP, BAD_LABEL_MAP)),
    Case("predict label_map a list", lambda ws: ws.predict_args(),
         ("label_map.json is damaged (expected a json object, got list)", DAMAGED), in_run(runs.LABEL_MAP, '["a", "b"]')),
    Case("serve label_map wrong shape", lambda ws: ["serve", str(ws.run())],
         ("label_map.json is damaged ('id2label' is list)", DAMAGED), in_run(runs.LABEL_MAP, BAD_LABEL_MAP)),
    Case("resume label_map wrong shape", lambda ws: resume(ws, "train.max_steps=4"),
         ("label_map.json is damaged ('id2label' must map the ids 0..k-1 to class names)", DAMAGED),
         in_run(runs.LABEL_MAP, '{"id2label": {"0": ["x"]}}')),
    # the line says config.yaml "is not valid YAML", but it is valid YAML holding a list: see NO_CAUSE
    Case("predict config.yaml a list", lambda ws: ws.predict_args(), (), in_run(runs.CONFIG, "- 1\n- 2\n")),
    Case("evaluate config.yaml section a number", lambda ws: ws.evaluate_args(),
         ("config.yaml is damaged or was written by another version", "'data' must be a section (a mapping), got 3"),
         in_run(runs.CONFIG, "data: 3\n")),
    Case("report config.yaml a string", lambda ws: ["report", str(ws.run())],
         ("config.yaml is not a valid yaml mapping", "the run folder is damaged"), in_run(runs.CONFIG, "just text\n")),
    Case("resume state.json a list", lambda ws: resume(ws, "train.max_steps=4"),
         ("step-2/state.json is damaged (expected a json object, got list)", DAMAGED), in_ckpt(runs.CKPT_STATE, "[1, 2]")),
    Case("resume state.json step a string", lambda ws: resume(ws, "train.max_steps=4"),
         ("state.json is damaged ('step' is str)", DAMAGED), in_ckpt(runs.CKPT_STATE, '{"step": "two", "epoch": []}')),
    Case("report history.jsonl lines are lists", lambda ws: ["report", str(ws.run())],
         ("history.jsonl is damaged (line 1 is list, not a json object)", DAMAGED),
         in_run(runs.HISTORY, "[1, 2]\n[3, 4]\n")),
    Case("resume history.jsonl lines are numbers", lambda ws: resume(ws, "train.max_steps=4"),
         ("history.jsonl is damaged (line 1 is int, not a json object)", DAMAGED), in_run(runs.HISTORY, "1\n2\n")),
    Case("resume history.jsonl binary", lambda ws: resume(ws, "train.max_steps=4"),
         ("history.jsonl is damaged (byte 0xff at position 0 is not utf-8 text)", DAMAGED),
         in_run(runs.HISTORY, b"\xff\xfe\x00binary")),
    Case("report metrics.json a list", lambda ws: ["report", str(ws.run())],
         ("metrics.json has no 'val' metrics", "the run folder is damaged"), in_run(runs.METRICS, "[1, 2]")),
    Case("compare metrics.json val a list", lambda ws: ["compare", str(ws.run()), "--output", str(ws.p("cmp"))],
         ("metrics.json has no 'val' metrics", "the run folder is damaged"), in_run(runs.METRICS, '{"val": [1, 2]}')),
    Case("report params.json a string", lambda ws: ["report", str(ws.run())],
         ("params.json is damaged (expected a json object, got str)", DAMAGED), in_run(runs.PARAMS, '"many"')),
    Case("report tracking.json a list", lambda ws: ["report", str(ws.run())],
         ("tracking.json is damaged (expected a json object, got list)", DAMAGED), in_run(runs.TRACKING, "[]")),
    Case("resume tracking.json mlflow a string", lambda ws: resume(ws, "train.max_steps=4"),
         ("tracking.json is damaged ('mlflow' must be an object)", DAMAGED), in_run(runs.TRACKING, '{"mlflow": "x"}')),
    Case("report sweep_trial.json a list", lambda ws: ["report", str(ws.run())],
         ("sweep_trial.json is damaged (expected a json object, got list)", DAMAGED), in_run(runs.SWEEP_TRIAL, "[1]")),
    Case("report adapt.json a number", lambda ws: ["report", str(ws.run())],
         ("adapt.json is damaged (expected a json object, got int)", DAMAGED), in_run(runs.ADAPT, "3")),
    Case("resume missing run", lambda ws: ["train", "--resume", str(ws.p("gone"))],
         ("cannot resume: run folder", "gone not found", "give the folder that `loraclf train` printed")),
    Case("resume a non-run folder", lambda ws: ["train", "--resume", str(ws.root)],
         ("cannot resume", "config.yaml not found", "is not a loraclf run folder",
          "give the folder that `loraclf train` printed")),
    Case("train run name clash", lambda ws: ws.train_args(f"output.dir={ws.run().parent}", "output.run_name=run"),
         ("run folder", "run already exists", "pick another output.run_name", "output.overwrite=true", "--resume")),
    # ------------------------------------------------ --resume with an override that changes the trainable shape
    Case("resume adapter.r=4 (issue)", lambda ws: resume(ws, "adapter.r=4"),
         ("lora_a.default.weight is 8 x 32 in the checkpoint but 4 x 32 in this model", *REFUSED_ON_RESUME)),
    Case("resume adapter.target_modules=qkv", lambda ws: resume(ws, "adapter.target_modules=qkv"),
         ("this model has a trainable parameter the checkpoint lacks", "self.key.lora_a", *REFUSED_ON_RESUME)),
    Case("resume adapter.head=linear", lambda ws: resume(ws, "adapter.head=linear"),
         ("it has a parameter this model lacks", "pooler.modules_to_save", *REFUSED_ON_RESUME)),
    Case("resume adapter.method=ia3", lambda ws: resume(ws, "adapter.method=ia3"),
         ("it has a parameter this model lacks", "lora_a.default.weight", *REFUSED_ON_RESUME)),
    # ------------------------------------------------ checkpoints that cannot be loaded safely
    # these lines name the step-N folder and torch's or safetensors' reason, not the file: see the report
    Case("resume tampered optimizer.pt (issue)", lambda ws: resume(ws, "train.max_steps=4"),
         ("checkpoints/step-2", "unpicklingerror: weights only load failed", *UNSAFE_CHECKPOINT),
         tampered_pt(runs.CKPT_OPTIMIZER)),
    Case("resume tampered rng.pt", lambda ws: resume(ws, "train.max_steps=4"),
         ("checkpoints/step-2", "unpicklingerror: weights only load failed", *UNSAFE_CHECKPOINT),
         tampered_pt(runs.CKPT_RNG)),
    Case("resume truncated trainable.safetensors", lambda ws: resume(ws, "train.max_steps=4"),
         ("checkpoints/step-2", "safetensorerror", "invalid header length", *UNSAFE_CHECKPOINT),
         in_ckpt(runs.CKPT_WEIGHTS, b"\x08\x00\x00\x00\x00\x00\x00\x00{}")),
    # ------------------------------------------------ push: no upload is reachable here; bad input fails first
    Case("push repo id without a slash", lambda ws: ["push", str(ws.run()), "no-slash-here"],
         ("'no-slash-here' is not a hugging face repo id", "give it as user/name or org/name")),
    Case("push repo id with spaces", lambda ws: ["push", str(ws.run()), "some one/my model"],
         ("'some one/my model' is not a hugging face repo id", "repo id must use alphanumeric chars")),
    Case("push a folder that is no run", lambda ws: ["push", str(ws.folder("empty")), "someone/model"],
         ("empty is not a loraclf run folder", "config.yaml is missing")),
]

# ------------------------------------------------ data files: missing, unreadable, malformed
DATA_CASES = [
    Case("train data file missing", lambda ws: ws.train_args(train_csv=ws.p("missing.csv")),
         ("data file not found", "missing.csv", "check the path")),
    Case("train data path is a folder", lambda ws: ws.train_args(train_csv=ws.root),
         ("is a folder", "give a data file (.csv")),
    Case("train unknown extension", lambda ws: ws.train_args(train_csv=ws.write("d.xlsx", "x")),
         ("unknown data format '.xlsx'", "d.xlsx", "use one of .csv")),
    Case("train empty file", lambda ws: ws.train_args(train_csv=ws.write("empty.csv", "")),
         ("empty.csv is empty", "give a file with a header line and at least one row")),
    Case("train header only", lambda ws: ws.train_args(train_csv=ws.write("header.csv", "text,label\n")),
         ("header.csv has a header but no rows", "add at least one row")),
    Case("train not utf-8", lambda ws: ws.train_args(train_csv=ws.write("latin.csv", b"text,label\ncaf\xe9 cr\xe8me,1\nhi,0\n")),
         ("latin.csv is not valid utf-8 (byte 3)", "re-save it as utf-8")),
    Case("train ragged csv", lambda ws: ws.train_args(train_csv=ws.write("ragged.csv", "text,label\nhello,1\nworld,0,extra,cols\n")),
         ("cannot read", "ragged.csv as csv", "expected 2 fields in line 3, saw 4", "check that the file is well-formed")),
    Case("train broken jsonl", lambda ws: ws.train_args(
        train_csv=ws.write("b.jsonl", '{"text": "a", "label": 1}\n{"text": "b", lab\n')),
        ("cannot read", "b.jsonl as jsonl", "expected object or value", "check that the file is well-formed jsonl")),
    Case("train json not records", lambda ws: ws.train_args(train_csv=ws.write("obj.json", '{"text": 5}')),
         ("obj.json must hold a list of records", "or be json lines")),
    Case("train nan text with empty_text=error", lambda ws: ws.train_args(
        "data.empty_text=error", train_csv=ws.write("nan.csv", "text,label\nfine,0\n,1\nNaN,1\nok,0\n")),
        ("nan.csv has 1 empty or nan texts/labels (first at row 1)", "set data.empty_text=drop")),
    Case("train file over max_file_mb", lambda ws: ws.train_args(
        "data.max_file_mb=5", train_csv=ws.csv("big.csv", [("x" * 10_000_000, 0), ("y", 1)])),
        ("big.csv is 10 mb, over data.max_file_mb=5", "raise data.max_file_mb")),
    Case("train pickle without opt-in", lambda ws: ws.train_args(
        train_csv=ws.write("d.pkl", pickle.dumps(pd.DataFrame(class_rows(), columns=["text", "label"])))),
        ("d.pkl is a pickle", "unpickling runs code from the file", "data.allow_pickle=true")),
    Case("predict input missing", lambda ws: ws.predict_args(input=ws.p("nope.csv")),
         ("input file not found", "nope.csv")),
    Case("predict pickle without opt-in", lambda ws: ws.predict_args(
        input=ws.write("t.pkl", pickle.dumps(pd.DataFrame({"text": ["a"]})))),
        ("t.pkl is a pickle", "unpickling runs code from the file", "--allow-pickle")),
    # ------------------------------------------------ streamed files with a malformed line deep inside
    Case("stream malformed jsonl line 40", lambda ws: ws.train_args(
        "data.streaming=true", train_csv=stream_file(ws, "s.jsonl", '{"text": "broken", lab')),
        ("cannot read", "s.jsonl", "json parse error", "in row 40", "check that the file is well-formed jsonl")),
    # the line says "Column() changed from object to string in row 0", not that line 40 is a list: see NO_CAUSE
    Case("stream jsonl line 40 a list", lambda ws: ws.train_args(
        "data.streaming=true", train_csv=stream_file(ws, "s.jsonl", "[1, 2, 3]")), ()),
    Case("stream malformed line under --nproc 2", lambda ws: ws.train_args(
        "data.streaming=true", "--nproc", "2", train_csv=stream_file(ws, "s.jsonl", '{"text": "x", "label": }')),
        ("cannot read", "s.jsonl", "json parse error: invalid value. in row 40", "well-formed jsonl")),
    Case("stream unseen label mid-stream under --nproc 2 --quiet", lambda ws: ws.train_args(
        "data.streaming=true", "--nproc", "2", "--quiet", "train.max_steps=30",  # 30: no too-few-steps warning
        train_csv=stream_file(ws, "s.jsonl", '{"text": "alpha", "label": 9}')),
        ("s.jsonl has rows with labels outside the label set read before training: 9", "known labels are 0, 1, 2, 3",
         "no run folder was kept")),
    # ------------------------------------------------ the right error, but with lines before it
    Case("train all texts empty (issue)", lambda ws: ws.train_args(train_csv=write_csv(
        ws.p("empty.csv"), [("", i % 4) for i in range(48)])), ("empty.csv has no usable rows (all texts empty)",)),
    Case("train all validation texts empty", lambda ws: ws.train_args(val_csv=write_csv(
        ws.p("empty_val.csv"), [("   ", i % 4) for i in range(16)])),
        ("empty_val.csv has no usable rows (all texts empty)",)),
    Case("train mlflow postgresql URI unreachable (issue)", lambda ws: ws.train_args(
        "track=[mlflow]", "output.mlflow_tracking_uri=postgresql://u:p@127.0.0.1:1/db"),
        ("could not start the trackers ['mlflow']", "mlflow tracking uri postgresql://u:***@127.0.0.1:1/db")),
    Case("train mlflow URI unknown scheme", lambda ws: ws.train_args(
        "track=[mlflow]", "output.mlflow_tracking_uri=bogus://nowhere"),
        ("could not start the trackers ['mlflow']", "mlflow tracking uri bogus://nowhere cannot be used",
         "fix output.mlflow_tracking_uri")),
    # ------------------------------------------------ model paths
    Case("train model folder without config.json", lambda ws: ws.train_args(f"model.name_or_path={ws.root}"),
         ("is not a model folder (no config.json)", "save_pretrained")),
    Case("train model config.json not json", lambda ws: ws.train_args(f"model.name_or_path={broken_model(ws)}"),
         ("cannot load model", "broken_model/config.json' is not a valid json file", "check the name, the path")),
    Case("train unknown packaged model", lambda ws: ws.train_args("model.name_or_path=packaged:minilm-l7"),
         ("unknown packaged model 'packaged:minilm-l7'", "did you mean 'minilm-l6'")),
]

# ------------------------------------------------ labels and columns
LABEL_CASES = [
    Case("train label only in validation", lambda ws: ws.train_args(val_csv=ws.csv("val7.csv", [("a", 0), ("b", 7)])),
         ("val7.csv has labels never seen in training: 7", "known labels are 0, 1, 2, 3", "add examples")),
    Case("train label only in test", lambda ws: ws.train_args(f"data.test={ws.csv('test9.csv', [('a', 0), ('b', 9)])}"),
         ("test9.csv has labels never seen in training: 9", "add examples")),
    Case("evaluate unseen label", lambda ws: ws.evaluate_args(data=ws.csv("ev.csv", [("a", 0), ("b", 7)])),
         ("ev.csv has labels never seen in training: 7", "add examples")),
    Case("train single class", lambda ws: ws.train_args(train_csv=ws.csv("one.csv", class_rows(classes=(1,)))),
         ("the training data has only one class (1)", "a classifier needs at least two")),
    Case("train few-shot with no class of two rows", lambda ws: ws.train_args(
        "train.few_shot=true", train_csv=ws.csv("ones.csv", class_rows(1, (0, 1, 2, 3)))),
         ("train.few_shot=true needs at least one class with two labelled rows", "no class of the 4 training rows",
          "label more rows"), api=True),
    Case("train few-shot for regression", lambda ws: ws.typed_args(REGRESSION_TYPE, "train.few_shot=true"),
         ("train.few_shot=true is for classification", "regression", "train.few_shot=false or auto"), api=True),
    Case("train missing text column", lambda ws: ws.train_args(train_csv=ws.csv("cols.csv", class_rows(),
                                                                                 header=("texts", "label"))),
         ("cols.csv has no text column 'text' (did you mean 'texts'?)", "columns are: texts, label",
          "set data.text_column")),
    Case("train missing label column", lambda ws: ws.train_args(train_csv=ws.csv("cols.csv", class_rows(),
                                                                                  header=("text", "labels"))),
         ("cols.csv has no label column 'label'", "columns are: text, labels", "set data.label_column")),
    Case("train too many labels", lambda ws: ws.train_args("data.max_labels=2", train_csv=ws.csv(
        "many.csv", class_rows(classes=(0, 1, 2)))), ("3 distinct values, over data.max_labels=2", "right column")),
    Case("train negative int labels", lambda ws: ws.train_args(train_csv=ws.csv("neg.csv", class_rows(classes=(-1, 0, 1)))),
         ("integer labels must be >= 0, found -1", "number the classes 0..k-1")),
    Case("train label_names too short", lambda ws: ws.train_args("data.label_names=[a,b]"),
         ("data.label_names has 2 names but labels go up to 3", "one name per label")),
    Case("train labels 0..3.5 (issue)", lambda ws: ws.train_args(train_csv=write_csv(
        ws.p("frac.csv"), rows(48, 3, [i / 2 for i in range(8)]))), ("4 distinct", "(0.5, 1.5, 2.5, 3.5)", *FRACTIONAL)),
    Case("train labels 1.0 and 2.5 in jsonl", lambda ws: ws.train_args(
        train_csv=frac_jsonl(ws, "frac.jsonl", 48), val_csv=frac_jsonl(ws, "frac_val.jsonl", 16)),
        ("1 distinct", "(2.5)", *FRACTIONAL)),
    Case("train one label 2.5 among integers", lambda ws: ws.train_args(train_csv=write_csv(
        ws.p("frac1.csv"), rows(48, 5, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 2.5]))), ("(2.5)", *FRACTIONAL)),
    Case("train fractional labels with label_names", lambda ws: ws.train_args(
        "data.label_names=[a,b,c,d]", train_csv=write_csv(ws.p("frac2.csv"), rows(48, 6, [0, 1, 2, 0.75]))),
        ("(0.75)", *FRACTIONAL)),
    Case("stream fractional validation labels", lambda ws: ws.train_args(
        "data.streaming=true", val_csv=write_csv(ws.p("frac_val.csv"), rows(16, 8, [0.5, 1.5]))),
        ("(0.5, 1.5)", *FRACTIONAL)),
    Case("predict text-column nope (issue)", lambda ws: ws.predict_args("--text-column", "nope"),
         ("test.csv has no text column 'nope'", "columns are: text, label", "set --text-column")),
    Case("augment text-column nope", lambda ws: ws.augment_args("--text-column", "nope"),
         ("train.csv has no text column 'nope'", "its columns are: text, label")),
    Case("augment label-column nope", lambda ws: ws.augment_args("--label-column", "nope"),
         ("train.csv has no label column 'nope'", "its columns are: text, label")),
    Case("train text_column list with a missing one", lambda ws: ws.train_args("data.text_column=[text,nope]"),
         ("train.csv has no text column 'nope'", "columns are: text, label", "set data.text_column")),
    Case("train id_column nope", lambda ws: ws.train_args("data.id_column=nope"),
         ("train.csv has no id column 'nope'", "columns are: text, label", "set data.id_column")),
    Case("stream id_column nope", lambda ws: ws.train_args("data.id_column=nope", "data.streaming=true"),
         ("train.csv has no id column 'nope'", "columns are: text, label", "set data.id_column")),
    Case("predict text-column nope on a one-column file", lambda ws: ws.predict_args(
        "--text-column", "nope", input=write_csv(ws.p("one.csv"), [(t,) for t, _ in rows(8, 9)], header=("body",))),
        ("one.csv has no text column 'nope'", "columns are: body", "set --text-column")),
]


def typed(id: str, kind: str, extra: tuple, words: tuple, **changed) -> Case:
    """A `train` case of one problem type on the typed frames; loraclf.train must refuse it with the same line."""
    return Case(f"train {id}", lambda ws: ws.typed_args(kind, *extra, **changed), words, api=True)


ONE_ZERO = "one 0/1 column per label"
NEEDS_MULTI = "need model.problem_type=multi_label_classification"
AS_REGRESSION = "set model.problem_type=single_label_classification"
M = MULTI_TYPE
R = REGRESSION_TYPE

# ------------------------------------------------ problem types (issues 17, 18): each refused with its finding and fix
TYPE_CASES = [
    # label sets (multi-label)
    typed("multi-label unknown label in validation", M, (), ("naming labels never seen in training: 'weather'",
          "known labels are business, science, sports, world"), val=cell("labels", 3, "world|weather")),
    typed("multi-label unknown label in test", M, (), ("naming labels never seen in training: 'gossip'",
          "known labels are"), test=cell("labels", 0, "gossip")),
    typed("multi-label empty label set in train", M, (), ("1 rows with an empty label set (first at row 5)",
          "data.allow_empty_labels=true"), train=cell("labels", 5, np.nan)),
    typed("multi-label empty JSON list in validation", M, ("data.label_delimiter=null",),
          ("with an empty label set (first at row 2)", "data.allow_empty_labels=true"),
          val=column("labels", lambda df: ["[]" if i == 2 else s for i, s in enumerate(json_sets(df))]),
          train=column("labels", json_sets), test=column("labels", json_sets)),
    typed("multi-label joined names without a delimiter", M, ("data.label_delimiter=null",),
          ("look like several labels joined by '|'", "set data.label_delimiter='|'")),
    typed("multi-label cell not a JSON list", M, (), ("starts like a json list but is not one", "data.label_delimiter"),
          train=cell("labels", 1, '["world", sports')),
    typed("multi-label one label only", M, (), ("name only 'world'", "at least two labels"),
          train=column("labels", ["world"]), val=column("labels", ["world"]), test=column("labels", ["world"])),
    typed("label_columns holding a 2", M, tuple(LABEL_COLUMNS), ("column 'is_sports' must hold 0 or 1, found 2",
          ONE_ZERO), train=cell("is_sports", 4, 2)),
    typed("label_columns holding words", M, tuple(LABEL_COLUMNS), ("column 'is_world' must hold 0 or 1, found 'yes'",
          ONE_ZERO), val=cell("is_world", 0, "yes")),
    typed("label_columns missing a column", M, ("data.label_delimiter=null", "data.label_columns=[is_world,is_nope]"),
          ("no label column 'is_nope'", "set data.label_columns")),
    typed("label_columns of one column", M, ("data.label_delimiter=null", "data.label_columns=[is_world]"),
          ("'data.label_columns' needs at least two 0/1 columns", "one per label")),
    # regression targets
    typed("regression non-numeric target", R, (), ("non-numeric regression targets: 'high' (first at row 7)",
          AS_REGRESSION), train=cell("score", 7, "high")),
    typed("regression NaN target", R, (), ("1 missing (nan) or infinite regression targets (first at row 3)",
          "fill or drop those rows"), train=cell("score", 3, np.nan)),
    typed("regression infinite target in validation", R, (), ("missing (nan) or infinite regression targets "
          "(first at row 0)", "fill or drop those rows"), val=cell("score", 0, "inf")),
    typed("regression on words", R, ("data.label_column=label",), ("non-numeric regression targets: 'world'",
          AS_REGRESSION)),
    # a type that does not fit the data
    typed("single-label on floats", SINGLE, ("data.label_column=score",), ("non-integer numeric labels",
          "set model.problem_type=regression")),
    typed("single-label on JSON lists", SINGLE, (), ("the labels hold lists",
          "model.problem_type=multi_label_classification"), train=column("label", json_sets)),
    typed("label_delimiter without multi-label", SINGLE, ("data.label_delimiter=';'",),
          ("'data.label_delimiter' gives label sets", NEEDS_MULTI)),
    typed("label_columns without multi-label", R, (f"data.label_columns=[{','.join(FLAGS)}]",),
          ("'data.label_columns' gives label sets", NEEDS_MULTI)),
    # sentence pairs
    typed("pairs missing pair column", PAIRS, ("data.text_pair_column=descriptoin",),
          ("no text-pair column 'descriptoin' (did you mean 'description'?)", "set data.text_pair_column")),
    typed("pairs pair column missing from validation", PAIRS, (), ("val.csv has no text-pair column 'description'",
          "set data.text_pair_column"), val=drop("description")),
    typed("pairs with chunks", PAIRS, ("data.long_text=chunks",), ("'data.long_text: chunks' applies to single texts",
          "data.truncation")),
]

# ------------------------------------------------ settings of another problem type
SETTING_CASES = [
    typed("metric of another type (regression, accuracy)", R, ("eval.metric_for_best_model=accuracy",),
          ("'eval.metric_for_best_model' 'accuracy' is not a regression metric", "choose from rmse, mae, pearson")),
    typed("metric of another type (multi-label, accuracy)", M, ("eval.metric_for_best_model=accuracy",),
          ("is not a multi_label_classification metric (did you mean 'subset_accuracy'?)", "choose from micro_f1")),
    typed("metric of another type (single-label, rmse)", SINGLE, ("eval.metric_for_best_model=rmse",),
          ("'rmse' is not a single_label_classification metric", "choose from accuracy, macro_f1")),
    typed("loss of another type (single-label, mse)", SINGLE, ("train.loss=mse",),
          ("'train.loss' mse does not fit single_label_classification", "choose cross_entropy or focal")),
    typed("loss of another type (regression, bce)", R, ("train.loss=bce",),
          ("'train.loss' bce does not fit regression", "choose mse or huber")),
    typed("loss of another type (multi-label, huber)", M, ("train.loss=huber",),
          ("'train.loss' huber does not fit multi_label_classification", "choose bce or focal")),
    typed("thresholds for regression", R, ("eval.tune_thresholds=f1",),
          ("'eval.tune_thresholds' f1 needs classes", "set it to auto or none")),
    typed("balanced sampling for multi-label", M, ("data.sampling=balanced",),
          ("'data.sampling: balanced' draws classes equally often", "single_label_classification only")),
    typed("label smoothing for regression", R, ("train.label_smoothing=0.1",),
          ("'train.label_smoothing' is for single-label cross-entropy", "model.problem_type is regression")),
    # class weights
    typed("class weight for an unknown label", SINGLE, ("train.class_weights={world: 2.0, weather: 3.0}",),
          ("train.class_weights names 'weather', which is not a label of this data",
           "labels are business, science, sports, world")),
    typed("class weight zero", SINGLE, ("train.class_weights={world: 0}",),
          ("'train.class_weights' must be positive numbers", "label 'world' has 0")),
    typed("class weight negative (multi-label)", M, ("train.class_weights={sports: -1.5}",),
          ("'train.class_weights' must be positive numbers", "label 'sports' has -1.5")),
    typed("class weights for regression", R, ("train.class_weights=balanced",),
          ("'train.class_weights' needs classes", "remove it")),
    typed("balanced weights, a class absent from train", SINGLE, ("train.class_weights=balanced",),
          ("class_weights=balanced needs every class in the training split; '2' has no training rows",
           "give the weights as a mapping"),
          train=column("label", [0, 1, 3]), val=column("label", [0, 1, 3]), test=column("label", [0, 1, 3])),
    typed("balanced weights, a label absent from train (multi-label)", M,
          ("train.class_weights=balanced", "data.allow_empty_labels=true", *LABEL_COLUMNS),
          ("needs every label in the training split; 'is_science' never occurs there", "give the weights as a mapping"),
          train=column("is_science", [0])),
    # long texts
    typed("stride equal to max_length", SINGLE, ("data.long_text=chunks", "data.stride=24"),
          ("'data.stride' (24) must be smaller than data.max_length (24)", "windows advance by max_length - stride")),
    typed("stride over max_length", SINGLE, ("data.long_text=chunks", "data.stride=100"),
          ("'data.stride' (100) must be smaller than data.max_length (24)", "windows advance")),
    typed("head_tokens over max_length", SINGLE, ("data.long_text=head_tail", "data.head_tokens=30"),
          ("'data.head_tokens' (30) must be smaller than data.max_length (24)", "holds the tail")),
    # calibration; without a validation split it cannot be asked for: every run has one (a file, or
    # data.validation_split > 0 carved from train), and the two ways to ask for none are refused before any model loads
    typed("calibration for regression", R, ("eval.calibration=temperature",),
          ("'eval.calibration: temperature' is for single_label_classification", "model.problem_type is regression")),
    typed("calibration for multi-label", M, ("eval.calibration=temperature",),
          ("'eval.calibration: temperature' is for single_label_classification",
           "model.problem_type is multi_label_classification")),
    typed("calibration with validation_split 0", SINGLE, ("eval.calibration=temperature", "data.validation=null",
                                                          "data.validation_split=0"),
          ("'data.validation_split' must be > 0, got 0.0", "data.validation_split")),
    typed("calibration with an empty validation file", SINGLE, ("eval.calibration=temperature",),
          ("val.csv has a header but no rows", "add at least one row"), val=lambda df: df.iloc[:0]),
    # speed options (issue 19)
    typed("prefix cache with every layer adapted", SINGLE, ("train.prefix_cache=true",),
          ("'train.prefix_cache: true' cannot apply: the lowest encoder layer carries an adapter",
           "set adapter.layers_to_transform to adapt only the top layers")),
    typed("prefix cache with augmentation", SINGLE, ("train.prefix_cache=true", "adapter.layers_to_transform=1",
                                                     "augment.enabled=true"),
          ("'train.prefix_cache: true' does not combine with augment.enabled", "set train.prefix_cache=auto or false")),
    typed("fast dropout with torch.compile", SINGLE, ("train.fast_dropout=true", "train.torch_compile=true"),
          ("'train.fast_dropout: true' does not combine with train.torch_compile",
           "set train.fast_dropout=auto or false")),
    # the same checks through `validate`/`config` (no data read) and on integer labels
    Case("validate label_delimiter without multi-label", lambda ws: ["validate", "data.label_delimiter=';'"],
         ("'data.label_delimiter' gives label sets", NEEDS_MULTI, "(model.problem_type is single_label_classification)")),
    Case("validate metric of another type", lambda ws: ["validate", REGRESSION, "eval.metric_for_best_model=accuracy"],
         ("'eval.metric_for_best_model' 'accuracy' is not a regression metric", "choose from rmse, mae")),
    Case("validate loss of another type", lambda ws: ["validate", "train.loss=huber"],
         ("'train.loss' huber does not fit single_label_classification", "choose cross_entropy or focal")),
    Case("validate calibration for regression", lambda ws: ["validate", REGRESSION, "eval.calibration=temperature"],
         ("'eval.calibration: temperature' is for single_label_classification", "model.problem_type is regression")),
    Case("config calibration for multi-label", lambda ws: ["config", *MULTI, "eval.calibration=temperature"],
         ("'eval.calibration: temperature' is for single_label_classification",
          "model.problem_type is multi_label_classification")),
    Case("validate class weight zero", lambda ws: ["validate", "train.class_weights={a: 0}"],
         ("'train.class_weights' must be positive numbers", "label 'a' has 0")),
    Case("train class weight for an unknown integer label", lambda ws: ws.train_args("train.class_weights={7: 2.0}"),
         ("train.class_weights names '7', which is not a label of this data", "labels are 0, 1, 2, 3")),
    Case("validate stride equal to max_length", lambda ws: ["validate", "data.long_text=chunks", "data.max_length=64",
                                                            "data.stride=64"],
         ("'data.stride' (64) must be smaller than data.max_length (64)", "windows advance by max_length - stride")),
    # ------------------------------------------------ a pair run given single texts
    Case("predict pair run without the pair column", lambda ws: ws.predict_args(
        run=ws.pair_run(), input=ws.frame("in.csv", ws.frames["test"][["title"]])),
        ("in.csv has no text-pair column 'description'; columns are: title", "this model reads sentence pairs",
         "data.text_pair_column")),
    Case("evaluate pair run without the pair column", lambda ws: ws.evaluate_args(
        "--output", str(ws.p("m.json")), run=ws.pair_run(), data=ws.frame("in.csv", ws.frames["test"][["title", "match"]])),
        ("in.csv has no text-pair column 'description'; columns are: title, match", "this model reads sentence pairs")),
]

# ------------------------------------------------ select: what to label next (issue 40)


def select_args(ws: WS, pool: Path, *extra: str, output: Optional[Path] = None) -> list[str]:
    return ["select", str(ws.run()), "--pool", str(pool), "--output", str(output or ws.p("next.csv")), *extra]


SELECT_CASES = [
    Case("select k larger than the pool", lambda ws: select_args(ws, ws.csv("pool.csv", rows(6, 9)), "--k", "7"),
         ("--k 7 is more than the 6 rows the pool", "(6 rows, none left out)", "ask for at most 6")),
    Case("select k larger than the pool after exclusions",
         lambda ws: select_args(ws, ws.data["train"], "--k", "1"),
         ("--k 1 is more than the 0 rows the pool", "labelled", "left out", "give rows the run has not seen")),
    Case("select k below 1", lambda ws: select_args(ws, ws.data["test"], "--k", "0"),
         ("--k must be a whole number of rows, 1 or more, got 0",)),
    Case("select empty pool", lambda ws: select_args(ws, ws.write("empty.csv", "text,label\n"), "--k", "1"),
         ("empty.csv has a header but no rows", "add at least one row")),
    Case("select pool without a text column",
         lambda ws: select_args(ws, ws.frame("notext.csv", pd.DataFrame({"title": ["a b", "c d"], "body": ["x", "y"]})),
                                "--k", "1"),
         ("notext.csv has no text column 'text'", "columns are: title, body")),
    Case("select unknown strategy", lambda ws: select_args(ws, ws.data["test"], "--k", "1", "--strategy", "coreset"),
         ("argument --strategy: invalid choice: 'coreset'", "random", "diverse")),
    Case("select output equal to the pool", lambda ws: select_args(ws, ws.data["test"], "--k", "1",
                                                                   output=ws.data["test"]),
         ("test.csv is the --pool file", "writing it would overwrite what is read", "give another --output path")),
    Case("select output in another format", lambda ws: select_args(ws, ws.data["test"], "--k", "1",
                                                                   output=ws.p("next.jsonl")),
         ("next.jsonl must be a .csv file", "in its own format")),
    Case("select pool missing", lambda ws: select_args(ws, ws.p("no-such-pool.csv"), "--k", "1"),
         ("pool file not found", "no-such-pool.csv")),
]

CASES = CONFIG_CASES + NUMBER_CASES + ARGUMENT_CASES + OUTPUT_CASES + RUN_CASES + DATA_CASES + LABEL_CASES + \
    TYPE_CASES + SETTING_CASES + SELECT_CASES

# Cases whose line does not name its cause, so no words are asserted (each is a fault to fix in src/, then pin here)
NO_CAUSE = {
    "augment output an existing folder": "says \"unknown output format 'augdir'\", not that --output is a folder",
    "predict config.yaml a list": "says config.yaml \"is not valid YAML\"; it is valid YAML holding a list, not a mapping",
    "stream jsonl line 40 a list": "says \"JSON parse error: Column() changed from object to string in row 0\"; the fault "
                                   "is line 40, a JSON list where an object belongs",
}


# ------------------------------------------------------------------------------------------ the test


TRAIN_WORDS = ("resume", "stream")  # case ids that start with these run `train`


def verb_of(case: Case) -> str:
    word = case.id.split()[0]
    return "train" if word in TRAIN_WORDS else word


def test_the_matrix_covers_every_verb_and_names_every_cause():
    assert len(CASES) >= 200 and len({c.id for c in CASES}) == len(CASES)
    missing = set(cli.COMMANDS) - {verb_of(c) for c in CASES}
    assert not missing, f"verbs without a case: {missing}"
    assert {c.id for c in CASES if not c.words} == set(NO_CAUSE)


def no_server(*args, **kwargs):
    raise AssertionError("serve started a server: the bad input was accepted")


@pytest.fixture
def no_uvicorn(monkeypatch):
    """A serve case that passes every check would listen forever; make that a failure instead."""
    try:
        import uvicorn
    except ImportError:  # serve then fails with its own one-line error
        return
    monkeypatch.setattr(uvicorn, "run", no_server)


CASE_SECONDS = 60  # the slowest honest case (--nproc 2) takes a fraction of this


def too_long(signum, frame):
    raise TimeoutError(f"the case ran past {CASE_SECONDS} s: the bad input was accepted and is being worked on")


@contextmanager
def capped(extra_gib: int = 4):
    """An absurd size that slips through must fail here (MemoryError, TimeoutError), not wake the OOM killer or spin
    for hours on a shared machine."""
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[0]) * resource.getpagesize()
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    old_handler = signal.signal(signal.SIGALRM, too_long)
    resource.setrlimit(resource.RLIMIT_AS, (now + extra_gib * 2**30, old_limit[1]))
    signal.alarm(CASE_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)
        signal.signal(signal.SIGALRM, old_handler)


def run_case(case: Case, ws: WS, capfd, monkeypatch) -> tuple[list[str], object, str, str, dict, dict]:
    if case.setup:
        case.setup(ws)
    argv = case.argv(ws)
    monkeypatch.setattr(sys, "argv", ["loraclf", *argv])  # --nproc re-launches sys.argv
    capfd.readouterr()
    before = snapshot(ws.root)
    try:
        with capped():
            rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capfd.readouterr()
    return argv, rc, out, err, before, snapshot(ws.root)


def assert_names_its_cause(case: Case, line: str) -> None:
    missing = [w for w in case.words if w.lower() not in line.lower()]
    assert not missing, f"the line lacks {missing}: {line}"


@pytest.fixture
def ws(tmp_path, tiny_bert, matrix_data, matrix_run, pair_run, monkeypatch) -> WS:
    workspace = WS(tmp_path, tiny_bert, matrix_data, matrix_run, pair_run)
    monkeypatch.chdir(tmp_path)  # anything written to the current folder shows up in the snapshot
    monkeypatch.setenv("LORACLF_CACHE", str(workspace.cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return workspace


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_matrix(case, ws, capfd, monkeypatch, no_uvicorn):
    argv, rc, out, err, before, after = run_case(case, ws, capfd, monkeypatch)
    assert argv[0] == verb_of(case)
    lines = err.splitlines()
    assert rc == 2, f"exit {rc}; stderr: {err[-1500:]}"
    assert "Traceback" not in err, err[-1500:]
    assert len(lines) == 1 and lines[0].strip(), f"stderr must be one line, got {len(lines)}:\n{err[-1500:]}"
    assert lines[0].startswith(case.head or f"loraclf {argv[0]}: error: "), lines[0]
    assert_names_its_cause(case, lines[0])
    assert out == "", f"stdout: {out[-500:]}"
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"files created, removed or changed: {changed[:10]}"
    if case.api:
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


REAL_PROCESS = ["train wrong-typed key", "train pickle without opt-in", "predict missing run folder",
                "train unknown flag"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in REAL_PROCESS], ids=REAL_PROCESS)
def test_bad_input_real_process(case, ws):
    """The same cases through the installed entry point in a fresh interpreter."""
    argv = case.argv(ws)
    before = snapshot(ws.root)
    p = subprocess.run([sys.executable, "-m", "loraclf", *argv], capture_output=True, text=True, cwd=ws.root,
                       env={**os.environ, "LORACLF_CACHE": str(ws.cache), "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-1500:]
    assert_names_its_cause(case, lines[0])
    assert p.stdout == "" and snapshot(ws.root) == before
