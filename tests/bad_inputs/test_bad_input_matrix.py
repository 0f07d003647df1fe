"""The bad-input matrix of issue 21: every verb, every class of input the independent tester found holes in.

The promise under test: bad input gets one clear line on stderr (`loraclf VERB: error: ...`) and exit code 2, no
traceback, nothing on stdout, and no file created, removed or changed (inputs included). Each case runs
`loraclf.cli.main` in-process under capfd, so whatever any library writes to the stderr descriptor is seen too.
Cases that need a run folder get a fresh copy of one tiny session-scoped run, damaged by the case.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import pandas as pd
import pytest
import torch

from loraclf import cli, runs
from loraclf.config import load_config
from loraclf.training import train

HUGE = str(10**30)  # past int64, so anything that reaches torch overflows
WORDS = ("alpha river stone cloud", "market price trade bank", "goal match team season", "chip data code network")


# ------------------------------------------------------------------------------------------ data and the run


def rows(n: int, seed: int, labels=None) -> list[tuple[str, object]]:
    """n short texts, four separable classes; labels (a list cycled over) replaces the class number."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = WORDS[i % 4].split()
        out.append((" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))),
                    labels[i % len(labels)] if labels else i % 4))
    return out


def write_csv(path: Path, data: list[tuple], header=("text", "label")) -> Path:
    pd.DataFrame(data, columns=list(header)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def matrix_data(tmp_path_factory) -> dict[str, Path]:
    """A few dozen rows written here (no ../shared), copied into each case's workspace."""
    folder = tmp_path_factory.mktemp("matrix_data")
    return {name: write_csv(folder / f"{name}.csv", rows(n, seed))
            for seed, (name, n) in enumerate({"train": 48, "val": 16, "test": 16}.items())}


def base_overrides(model: Path, train_csv: Path, val_csv: Path, out_dir: Path, cache: Path) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={train_csv}", f"data.validation={val_csv}",
            "data.max_length=32", "train.max_steps=2", "train.per_device_train_batch_size=8",
            "train.mixed_precision=fp32", "eval.eval_steps=1", "output.report=false", f"output.dir={out_dir}",
            "output.run_name=run", f"data.cache_dir={cache}"]


@pytest.fixture(scope="session")
def matrix_run(tmp_path_factory, tiny_bert, matrix_data) -> Path:
    """One finished tiny run (r=8, checkpoints kept), trained once; cases damage copies of it."""
    root = tmp_path_factory.mktemp("matrix_run")
    cfg = load_config(None, base_overrides(tiny_bert, matrix_data["train"], matrix_data["val"], root, root / "cache"))
    return train(cfg, quiet=True).run_dir


class WS:
    """One case's workspace under tmp_path: its inputs, its run copy, and every path it may (wrongly) write."""

    def __init__(self, root: Path, model: Path, data: dict[str, Path], run: Path):
        self.root, self.model, self._run = root, model, run
        (root / "data").mkdir()
        self.data = {k: Path(shutil.copy(v, root / "data" / v.name)) for k, v in data.items()}
        self.cache = root.parent / f"{root.name}-cache"  # tokenized caches are caches: kept out of the snapshot

    def p(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.p(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def folder(self, name: str) -> Path:
        self.p(name).mkdir(parents=True, exist_ok=True)
        return self.p(name)

    def run(self) -> Path:
        dst = self.p("run")
        if not dst.exists():
            shutil.copytree(self._run, dst)
        return dst

    def ckpt(self) -> Path:
        return runs.latest_checkpoint(self.run())

    def train_args(self, *extra: str, train_csv: Optional[Path] = None, val_csv: Optional[Path] = None) -> list[str]:
        return ["train", *base_overrides(self.model, train_csv or self.data["train"], val_csv or self.data["val"],
                                         self.p("runs"), self.cache), *extra]

    def predict_args(self, *extra: str, input: Optional[Path] = None, output: Optional[str | Path] = None) -> list[str]:
        return ["predict", str(self.run()), "--input", str(input or self.data["test"]),
                "--output", str(output or self.p("out.csv")), *extra]

    def evaluate_args(self, *extra: str, data: Optional[Path] = None) -> list[str]:
        return ["evaluate", str(self.run()), "--data", str(data or self.data["test"]), *extra]

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


# ------------------------------------------------------------------------------------------ damage helpers


def in_run(name: str, content: str | bytes) -> Callable[[WS], None]:
    """Setup: replace RUN/name with content (valid JSON/YAML of the wrong shape, mostly)."""
    return lambda ws: ws.write(str(ws.run().relative_to(ws.root) / name), content)


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


def yaml_file(ws: WS, name: str, text: str) -> str:
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


def sets_csv(ws: WS, name: str, n: int, seed: int, sets=("alpha;market", "market", "goal;chip", "chip")) -> Path:
    """Multi-label rows: label sets joined by ';' (cycled over), for data.label_delimiter=';'."""
    return write_csv(ws.p(name), rows(n, seed, list(sets)))


def flags_csv(ws: WS, name: str, n: int, seed: int, bad=None) -> Path:
    """Multi-label rows as 0/1 columns a, b, c; bad: (row, value) put in column b."""
    df = pd.DataFrame([(t, int(i % 4 == k), int(i % 4 != k), int(i % 2)) for i, (t, k) in
                       enumerate(rows(n, seed))], columns=["text", "a", "b", "c"])
    if bad is not None:
        df["b"] = df["b"].astype(object)
        df.loc[bad[0], "b"] = bad[1]
    df.to_csv(ws.p(name), index=False)
    return ws.p(name)


MULTI = ["model.problem_type=multi_label_classification", "data.label_delimiter=';'"]
REGRESSION = "model.problem_type=regression"


# ------------------------------------------------------------------------------------------ the cases


class Case(NamedTuple):
    id: str
    argv: Callable[[WS], list[str]]
    setup: Optional[Callable[[WS], object]] = None


CASES = [
    # ------------------------------------------------ 1. absurd numbers: bounded in validate, before any model build
    Case("budget r 1e30 (issue)", lambda ws: ["budget", f"adapter.r={HUGE}", f"model.name_or_path={ws.model}",
                                              "--num-labels", "4"]),
    Case("train r 1e30 (issue)", lambda ws: ws.train_args(f"adapter.r={HUGE}")),
    Case("validate r 1e30", lambda ws: ["validate", f"adapter.r={HUGE}"]),
    Case("budget r -1", lambda ws: ["budget", "adapter.r=-1", f"model.name_or_path={ws.model}", "--num-labels", "4"]),
    Case("validate batch size 1e30", lambda ws: ["validate", f"train.per_device_train_batch_size={HUGE}"]),
    Case("train batch size -1", lambda ws: ws.train_args("train.per_device_train_batch_size=-1")),
    Case("validate max_length 1e30", lambda ws: ["validate", f"data.max_length={HUGE}"]),
    Case("validate eval batch size 1e30", lambda ws: ["validate", f"eval.per_device_eval_batch_size={HUGE}"]),
    Case("validate gradient accumulation 1e30", lambda ws: ["validate", f"train.gradient_accumulation_steps={HUGE}"]),
    Case("validate max_steps 1e30", lambda ws: ["validate", f"train.max_steps={HUGE}"]),
    Case("validate adalora init_r 1e30", lambda ws: ["validate", "adapter.method=adalora", f"adapter.init_r={HUGE}"]),
    Case("budget num-labels 1e30", lambda ws: ["budget", f"model.name_or_path={ws.model}", "--num-labels", HUGE]),
    Case("budget num-labels -1", lambda ws: ["budget", f"model.name_or_path={ws.model}", "--num-labels", "-1"]),
    Case("budget num-labels 0", lambda ws: ["budget", f"model.name_or_path={ws.model}", "--num-labels", "0"]),
    Case("predict batch size 1e30", lambda ws: ws.predict_args("--batch-size", HUGE)),
    Case("evaluate batch size 1e30", lambda ws: ws.evaluate_args("--batch-size", HUGE)),
    Case("augment num-copies 1e30", lambda ws: ws.augment_args("--num-copies", HUGE)),
    Case("augment num-copies -1", lambda ws: ws.augment_args("--num-copies", "-1")),
    Case("serve port 1e30", lambda ws: ["serve", str(ws.run()), "--port", HUGE]),
    Case("serve port -1", lambda ws: ["serve", str(ws.run()), "--port", "-1"]),
    Case("serve max-wait-ms -5", lambda ws: ["serve", str(ws.run()), "--max-wait-ms", "-5"]),
    Case("sweep space r 1e30", lambda ws: ["sweep", sweep_file(ws, f"space:\n  adapter.r: {{type: int, low: {HUGE}, "
                                                                   f"high: {HUGE}0}}\n")]),
    Case("sweep n-trials -1", lambda ws: ["sweep", sweep_file(ws, LR_SPACE), "--n-trials", "-1"]),
    # ------------------------------------------------ 1. output paths that cannot be written
    Case("train output.dir an existing file (issue)", lambda ws: ws.train_args(f"output.dir={ws.data['train']}")),
    Case("train output.dir under a file", lambda ws: ws.train_args(f"output.dir={ws.data['train']}/runs")),
    Case("train output.dir impossible (/proc)", lambda ws: ws.train_args("output.dir=/proc/loraclf-nope/runs")),
    Case("predict output an existing folder (issue)", lambda ws: ws.predict_args(output=ws.folder("outdir"))),
    Case("predict output under a file", lambda ws: ws.predict_args(output=f"{ws.data['train']}/out.csv")),
    Case("predict output impossible (/proc)", lambda ws: ws.predict_args(output="/proc/loraclf-nope/out.csv")),
    Case("predict output equal to input (issue)", lambda ws: ws.predict_args(output=ws.data["test"])),
    Case("evaluate output a folder (issue)", lambda ws: ws.evaluate_args("--output", str(ws.folder("evdir")))),
    Case("evaluate output under a file", lambda ws: ws.evaluate_args("--output", f"{ws.data['test']}/m.json")),
    Case("evaluate output equal to data", lambda ws: ws.evaluate_args("--output", str(ws.data["test"]))),
    Case("augment output an existing folder", lambda ws: ws.augment_args(output=ws.folder("augdir"))),
    Case("augment output equal to input", lambda ws: ws.augment_args(output=ws.data["train"])),
    Case("augment output under a file", lambda ws: ws.augment_args(output=f"{ws.data['train']}/aug.csv")),
    Case("predict output equal to input by another path", lambda ws: ws.predict_args(
        output=ws.p("data") / ".." / "data" / ws.data["test"].name)),
    Case("evaluate output impossible (/proc)", lambda ws: ws.evaluate_args("--output", "/proc/loraclf-nope/m.json")),
    Case("augment output a hard link to the input", lambda ws: ws.augment_args(output=ws.p("link.csv")),
         lambda ws: os.link(ws.data["train"], ws.p("link.csv"))),
    Case("augment output impossible (/proc)", lambda ws: ws.augment_args(output="/proc/loraclf-nope/aug.csv")),
    Case("compare output an existing file", lambda ws: ["compare", str(ws.run()), "--output", str(ws.data["val"])]),
    Case("compare output under a file", lambda ws: ["compare", str(ws.run()), "--output", f"{ws.data['val']}/cmp"]),
    Case("export output an existing file", lambda ws: ["export", str(ws.run()), "--output", str(ws.data["val"])]),
    Case("export output equal to the run, --overwrite",
         lambda ws: ["export", str(ws.run()), "--output", str(ws.run()), "--overwrite"]),
    Case("report folder is a file", lambda ws: ["report", str(ws.run())], in_run(runs.REPORT, "not a folder")),
    # ------------------------------------------------ 1. run-folder and checkpoint files of the wrong shape
    Case("predict label_map wrong shape (issue)", lambda ws: ws.predict_args(), in_run(runs.LABEL_MAP, BAD_LABEL_MAP)),
    Case("evaluate label_map wrong shape (issue)", lambda ws: ws.evaluate_args(),
         in_run(runs.LABEL_MAP, BAD_LABEL_MAP)),
    Case("export label_map wrong shape (issue)", lambda ws: ["export", str(ws.run()), "--output", str(ws.p("exp"))],
         in_run(runs.LABEL_MAP, BAD_LABEL_MAP)),
    Case("predict label_map a list", lambda ws: ws.predict_args(), in_run(runs.LABEL_MAP, '["a", "b"]')),
    Case("serve label_map wrong shape", lambda ws: ["serve", str(ws.run())], in_run(runs.LABEL_MAP, BAD_LABEL_MAP)),
    Case("resume label_map wrong shape", lambda ws: ["train", "--resume", str(ws.run()), "train.max_steps=4"],
         in_run(runs.LABEL_MAP, '{"id2label": {"0": ["x"]}}')),
    Case("predict config.yaml a list", lambda ws: ws.predict_args(), in_run(runs.CONFIG, "- 1\n- 2\n")),
    Case("evaluate config.yaml section a number", lambda ws: ws.evaluate_args(), in_run(runs.CONFIG, "data: 3\n")),
    Case("report config.yaml a string", lambda ws: ["report", str(ws.run())], in_run(runs.CONFIG, "just text\n")),
    Case("resume state.json a list", lambda ws: ["train", "--resume", str(ws.run()), "train.max_steps=4"],
         in_ckpt(runs.CKPT_STATE, "[1, 2]")),
    Case("resume state.json step a string", lambda ws: ["train", "--resume", str(ws.run()), "train.max_steps=4"],
         in_ckpt(runs.CKPT_STATE, '{"step": "two", "epoch": []}')),
    Case("report history.jsonl lines are lists", lambda ws: ["report", str(ws.run())],
         in_run(runs.HISTORY, "[1, 2]\n[3, 4]\n")),
    Case("resume history.jsonl lines are numbers", lambda ws: ["train", "--resume", str(ws.run()),
                                                               "train.max_steps=4"], in_run(runs.HISTORY, "1\n2\n")),
    Case("report metrics.json a list", lambda ws: ["report", str(ws.run())], in_run(runs.METRICS, "[1, 2]")),
    Case("compare metrics.json val a list", lambda ws: ["compare", str(ws.run()), "--output", str(ws.p("cmp"))],
         in_run(runs.METRICS, '{"val": [1, 2]}')),
    Case("report params.json a string", lambda ws: ["report", str(ws.run())], in_run(runs.PARAMS, '"many"')),
    Case("report tracking.json a list", lambda ws: ["report", str(ws.run())], in_run(runs.TRACKING, "[]")),
    Case("resume tracking.json mlflow a string", lambda ws: ["train", "--resume", str(ws.run()), "train.max_steps=4"],
         in_run(runs.TRACKING, '{"mlflow": "x"}')),
    Case("report sweep_trial.json a list", lambda ws: ["report", str(ws.run())], in_run(runs.SWEEP_TRIAL, "[1]")),
    Case("report adapt.json a number", lambda ws: ["report", str(ws.run())], in_run(runs.ADAPT, "3")),
    # ------------------------------------------------ 1. --resume with an override that changes the trainable shape
    Case("resume adapter.r=4 (issue)", lambda ws: ["train", "--resume", str(ws.run()), "adapter.r=4"]),
    Case("resume adapter.target_modules=qkv", lambda ws: ["train", "--resume", str(ws.run()),
                                                          "adapter.target_modules=qkv"]),
    Case("resume adapter.head=linear", lambda ws: ["train", "--resume", str(ws.run()), "adapter.head=linear"]),
    Case("resume adapter.method=ia3", lambda ws: ["train", "--resume", str(ws.run()), "adapter.method=ia3"]),
    # ------------------------------------------------ 2. duplicate YAML keys and sections
    Case("validate duplicate key (issue)", lambda ws: ["validate", yaml_file(
        ws, "dup.yaml", "train: {learning_rate: 0.001, learning_rate: 0.5}\n")]),
    Case("validate duplicate section (issue)", lambda ws: ["validate", yaml_file(
        ws, "dup.yaml", "train:\n  max_steps: 5\ndata:\n  max_length: 32\ntrain:\n  learning_rate: 0.01\n")]),
    Case("config duplicate block key", lambda ws: ["config", yaml_file(
        ws, "dup.yaml", "data:\n  max_length: 32\n  max_length: 64\n")]),
    Case("train duplicate key in the config file", lambda ws: ws.train_args()[:1] + [yaml_file(
        ws, "dup.yaml", "train:\n  seed: 1\n  seed: 2\n")] + ws.train_args()[1:]),
    Case("sweep file duplicate key", lambda ws: ["sweep", sweep_file(ws, LR_SPACE + "n_trials: 2\n")]),
    Case("augment config duplicate key", lambda ws: ws.augment_args("--config", yaml_file(
        ws, "dup.yaml", "augment:\n  synonym_p: 0.1\n  synonym_p: 0.9\n"))),
    # ------------------------------------------------ 2. duplicate label names
    Case("train label_names [a,a,b,c] (issue)", lambda ws: ws.train_args("data.label_names=[a,a,b,c]")),
    Case("validate label_names [x,y,x,z]", lambda ws: ["validate", "data.label_names=[x,y,x,z]"]),
    Case("validate label_names duplicated in a file", lambda ws: ["validate", yaml_file(
        ws, "labels.yaml", "data:\n  label_names: [World, Sports, World, Tech]\n")]),
    # ------------------------------------------------ 2. fractional labels
    Case("train labels 0..3.5 (issue)", lambda ws: ws.train_args(train_csv=write_csv(
        ws.p("frac.csv"), rows(48, 3, [i / 2 for i in range(8)])))),
    Case("train labels 1.0 and 2.5 in jsonl", lambda ws: ws.train_args(
        train_csv=frac_jsonl(ws, "frac.jsonl", 48), val_csv=frac_jsonl(ws, "frac_val.jsonl", 16))),
    Case("train one label 2.5 among integers", lambda ws: ws.train_args(train_csv=write_csv(
        ws.p("frac1.csv"), rows(48, 5, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 2.5])))),
    Case("train fractional labels with label_names", lambda ws: ws.train_args(
        "data.label_names=[a,b,c,d]", train_csv=write_csv(ws.p("frac2.csv"), rows(48, 6, [0, 1, 2, 0.75])))),
    Case("stream fractional validation labels", lambda ws: ws.train_args(
        "data.streaming=true", val_csv=write_csv(ws.p("frac_val.csv"), rows(16, 8, [0.5, 1.5])))),
    # ------------------------------------------------ 2. named columns that are missing
    Case("predict text-column nope (issue)", lambda ws: ws.predict_args("--text-column", "nope")),
    Case("augment text-column nope", lambda ws: ws.augment_args("--text-column", "nope")),
    Case("augment label-column nope", lambda ws: ws.augment_args("--label-column", "nope")),
    Case("train text_column list with a missing one", lambda ws: ws.train_args("data.text_column=[text,nope]")),
    Case("train id_column nope", lambda ws: ws.train_args("data.id_column=nope")),
    Case("stream id_column nope", lambda ws: ws.train_args("data.id_column=nope", "data.streaming=true")),
    Case("predict text-column nope on a one-column file", lambda ws: ws.predict_args(
        "--text-column", "nope", input=write_csv(ws.p("one.csv"), [(t,) for t, _ in rows(8, 9)], header=("body",)))),
    # ------------------------------------------------ 3. the right error, but with lines before it
    Case("train all texts empty (issue)", lambda ws: ws.train_args(train_csv=write_csv(
        ws.p("empty.csv"), [("", i % 4) for i in range(48)]))),
    Case("train all validation texts empty", lambda ws: ws.train_args(val_csv=write_csv(
        ws.p("empty_val.csv"), [("   ", i % 4) for i in range(16)]))),
    Case("train mlflow postgresql URI unreachable (issue)", lambda ws: ws.train_args(
        "track=[mlflow]", "output.mlflow_tracking_uri=postgresql://u:p@127.0.0.1:1/db")),
    Case("train mlflow URI unknown scheme", lambda ws: ws.train_args(
        "track=[mlflow]", "output.mlflow_tracking_uri=bogus://nowhere")),
    Case("resume tampered optimizer.pt (issue)", lambda ws: ["train", "--resume", str(ws.run()), "train.max_steps=4"],
         tampered_pt(runs.CKPT_OPTIMIZER)),
    Case("resume tampered rng.pt", lambda ws: ["train", "--resume", str(ws.run()), "train.max_steps=4"],
         tampered_pt(runs.CKPT_RNG)),
    Case("resume truncated trainable.safetensors", lambda ws: ["train", "--resume", str(ws.run()),
                                                              "train.max_steps=4"],
         in_ckpt(runs.CKPT_WEIGHTS, b"\x08\x00\x00\x00\x00\x00\x00\x00{}")),
    # ------------------------------------------------ 5. streamed files with a malformed line deep inside
    Case("stream malformed jsonl line 40", lambda ws: ws.train_args(
        "data.streaming=true", train_csv=stream_file(ws, "s.jsonl", '{"text": "broken", lab'))),
    Case("stream jsonl line 40 a list", lambda ws: ws.train_args(
        "data.streaming=true", train_csv=stream_file(ws, "s.jsonl", "[1, 2, 3]"))),
    Case("stream malformed line under --nproc 2", lambda ws: ws.train_args(
        "data.streaming=true", "--nproc", "2", train_csv=stream_file(ws, "s.jsonl", '{"text": "x", "label": }'))),
    Case("stream unseen label mid-stream under --nproc 2 --quiet", lambda ws: ws.train_args(
        "data.streaming=true", "--nproc", "2", "--quiet", train_csv=stream_file(ws, "s.jsonl", '{"text": "alpha", "label": 9}'))),
    # ------------------------------------------------ issues 17/18: problem types, class weights, windows, calibration
    Case("train multi-label set naming an unknown label in validation", lambda ws: ws.train_args(
        *MULTI, train_csv=sets_csv(ws, "sets.csv", 48, 10), val_csv=sets_csv(ws, "sets_val.csv", 16, 11,
                                                                           ("alpha;weather", "market")))),
    Case("train multi-label empty label set", lambda ws: ws.train_args(
        *MULTI, train_csv=sets_csv(ws, "sets.csv", 48, 12, ("alpha;market", "", "chip")),
        val_csv=sets_csv(ws, "sets_val.csv", 16, 13))),
    Case("train label_columns holding a 2", lambda ws: ws.train_args(
        "model.problem_type=multi_label_classification", "data.label_columns=[a,b,c]",
        train_csv=flags_csv(ws, "flags.csv", 48, 14, bad=(5, 2)), val_csv=flags_csv(ws, "flags_val.csv", 16, 15))),
    Case("train regression on words", lambda ws: ws.train_args(
        REGRESSION, train_csv=write_csv(ws.p("words.csv"), rows(48, 16, ["low", "high"])))),
    Case("train regression NaN target", lambda ws: ws.train_args(
        REGRESSION, train_csv=write_csv(ws.p("nan.csv"), rows(48, 17, [0.5, 1.25, float("nan"), 2.0])))),
    Case("train single-label on label lists", lambda ws: ws.train_args(
        train_csv=write_csv(ws.p("lists.csv"), rows(48, 18, ['["a", "b"]', '["b"]'])))),
    Case("train text_pair_column missing", lambda ws: ws.train_args("data.text_pair_column=second")),
    Case("validate label_delimiter without multi-label", lambda ws: ["validate", "data.label_delimiter=';'"]),
    Case("validate metric of another type", lambda ws: ["validate", REGRESSION, "eval.metric_for_best_model=accuracy"]),
    Case("validate loss of another type", lambda ws: ["validate", "train.loss=huber"]),
    Case("validate calibration for regression", lambda ws: ["validate", REGRESSION, "eval.calibration=temperature"]),
    Case("config calibration for multi-label", lambda ws: ["config", *MULTI, "eval.calibration=temperature"]),
    Case("validate class weight zero", lambda ws: ["validate", "train.class_weights={a: 0}"]),
    Case("train class weight for an unknown label", lambda ws: ws.train_args("train.class_weights={7: 2.0}")),
    Case("train balanced class weights, class 2 absent from train", lambda ws: ws.train_args(
        "train.class_weights=balanced", train_csv=write_csv(ws.p("no2.csv"), rows(48, 19, [0, 1, 3])),
        val_csv=write_csv(ws.p("no2_val.csv"), rows(16, 20, [0, 1, 3])))),
    Case("validate stride equal to max_length", lambda ws: ["validate", "data.long_text=chunks", "data.max_length=64",
                                                            "data.stride=64"]),
    Case("train stride over max_length", lambda ws: ws.train_args("data.long_text=chunks", "data.stride=40")),
    # ------------------------------------------------ push: no upload is reachable here; bad input fails first
    Case("push repo id without a slash", lambda ws: ["push", str(ws.run()), "no-slash-here"]),
    Case("push repo id with spaces", lambda ws: ["push", str(ws.run()), "some one/my model"]),
    Case("push a folder that is no run", lambda ws: ["push", str(ws.folder("empty")), "someone/model"]),
]


# ------------------------------------------------------------------------------------------ the test


TRAIN_WORDS = ("resume", "stream")  # case ids that start with these run `train`


def verb_of(case: Case) -> str:
    word = case.id.split()[0]
    return "train" if word in TRAIN_WORDS else word


def test_the_matrix_covers_every_verb_with_at_least_60_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    missing = set(cli.COMMANDS) - {verb_of(c) for c in CASES}
    assert not missing, f"verbs without a case: {missing}"


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


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_matrix(case, tmp_path, tiny_bert, matrix_data, matrix_run, capfd, monkeypatch, no_uvicorn):
    ws = WS(tmp_path, tiny_bert, matrix_data, matrix_run)
    monkeypatch.chdir(tmp_path)  # anything written to the current folder shows up in the snapshot
    monkeypatch.setenv("LORACLF_CACHE", str(ws.cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv, rc, out, err, before, after = run_case(case, ws, capfd, monkeypatch)
    assert argv[0] == verb_of(case)
    lines = err.splitlines()
    assert rc == 2, f"exit {rc}; stderr: {err[-1500:]}"
    assert "Traceback" not in err, err[-1500:]
    assert len(lines) == 1 and lines[0].strip(), f"stderr must be one line, got {len(lines)}:\n{err[-1500:]}"
    assert lines[0].startswith(f"loraclf {argv[0]}: error:"), lines[0]
    assert out == "", f"stdout: {out[-500:]}"
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"files created, removed or changed: {changed[:10]}"
