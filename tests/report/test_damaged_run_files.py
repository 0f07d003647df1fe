"""`loraclf report` and `compare` on damaged run-folder files (issue 42: a binary history.jsonl gave a traceback).

Every file the report reads (config.yaml, metrics.json, history.jsonl, val_predictions.csv, params.json,
tracking.json, adapt.json, sweep_trial.json) is damaged three ways: binary bytes, cut short, and the wrong types
where loraclf writes numbers, lists or objects. Each case ends in one of two ways, never a traceback: one error line
naming the file and what is wrong, exit 2 and no report folder; or, where only some lines or rows of a file are
damaged and the report can go on without them, one warning line naming the file and the report written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from helpers_problem import MULTI, REGRESSION, SINGLE, problem_rows, type_overrides
from loraclf import runs
from loraclf.cli import main
from loraclf.config import load_config
from loraclf.training import train

BINARY = bytes(range(256)) * 4  # every byte value: not UTF-8, not JSON, NUL bytes inside


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    """One finished tiny run of each problem type (6 steps), by type."""
    root = tmp_path_factory.mktemp("damaged_runs")
    rows = problem_rows(96, 0)
    rows.head(64).to_csv(root / "train.csv", index=False)
    rows.tail(32).to_csv(root / "val.csv", index=False)
    out = {}
    for kind in (SINGLE, MULTI, REGRESSION):
        cfg = load_config(None, [
            f"model.name_or_path={tiny_bert}", f"data.train={root / 'train.csv'}", f"data.validation={root / 'val.csv'}",
            "data.max_length=24", "train.max_steps=6", "train.per_device_train_batch_size=16", "train.logging_steps=2",
            "train.mixed_precision=fp32", "eval.eval_steps=3", "output.report=false", f"output.dir={root / 'runs'}",
            f"output.run_name={kind}", f"data.cache_dir={root / 'cache'}", *type_overrides(kind)])
        out[kind] = train(cfg, quiet=True).run_dir
    return out


@dataclass
class Case:
    name: str
    kind: str  # the run's problem type
    file: str
    damage: Callable[[Path], None]  # damages the file, given its path
    outcome: str  # "error" (exit 2, one line) or "warning" (report written, one warning line)
    words: str  # the cause, as the line says it


def _write(content: str | bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(content if isinstance(content, bytes) else content.encode())


def _cut(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _json(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(p: Path) -> None:
        obj = json.loads(p.read_text())
        edit(obj)
        p.write_text(json.dumps(obj))
    return damage


def _lines(edit: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    return lambda p: p.write_text("\n".join(edit(p.read_text().splitlines())) + "\n")


def _eval_line(**fields) -> Callable[[list[str]], list[str]]:
    return lambda lines: lines + [json.dumps({"type": "eval", "split": "val", "epoch": 1.0, **fields})]


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(obj: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            obj = obj[key]
        obj[last] = value
    return edit


H, M, P = runs.HISTORY, runs.METRICS, runs.VAL_PREDICTIONS
CASES = [
    # history.jsonl
    Case("history binary", SINGLE, H, _write(BINARY), "error", "history.jsonl is damaged (not UTF-8 text"),
    Case("history binary after good lines", MULTI, H, lambda p: p.write_bytes(p.read_bytes() + BINARY), "error",
         "history.jsonl is damaged (not UTF-8 text"),
    Case("history every line cut short", SINGLE, H, _lines(lambda ls: [x[: len(x) // 2] for x in ls]), "warning",
         "history.jsonl: left out 5 of 5 lines that are not JSON (cut short by a kill, or damaged)"),
    Case("history last line cut short", REGRESSION, H, _lines(lambda ls: ls[:-1] + [ls[-1][:9]]), "warning",
         "history.jsonl: left out 1 of 5 lines that are not JSON"),
    Case("history lines are lists", SINGLE, H, _write("[1, 2]\n[3, 4]\n"), "error",
         "history.jsonl is damaged (line 1 is list, not a JSON object)"),
    Case("history step a string", SINGLE, H, _lines(_eval_line(step="three", loss=0.5, accuracy=0.5)), "warning",
         "history.jsonl: left out 1 record whose step, loss or main metric is not a finite number"),
    Case("history step infinite", REGRESSION, H, _lines(_eval_line(step=1e400, loss=0.5, rmse=0.5)), "warning",
         "history.jsonl: left out 1 record whose step, loss or main metric is not a finite number"),
    Case("history metric an object", MULTI, H, _lines(_eval_line(step=4, loss=0.5, micro_f1={"x": 1})), "warning",
         "history.jsonl: left out 1 record whose step, loss or main metric is not a finite number"),
    Case("history a folder", SINGLE, H, lambda p: (p.unlink(), p.mkdir()), "error", "cannot read"),
    # metrics.json
    Case("metrics binary", SINGLE, M, _write(BINARY), "error", "metrics.json is not valid JSON"),
    Case("metrics cut short", REGRESSION, M, _cut, "error", "metrics.json is not valid JSON"),
    Case("metrics val a list", SINGLE, M, _json(_set("val", [1])), "error", "metrics.json has no 'val' metrics"),
    Case("metrics confusion matrix a string", SINGLE, M, _json(_set("val.confusion_matrix", "x")), "error",
         "metrics.json is damaged ('val.confusion_matrix' is str, expected a square list of lists of numbers)"),
    Case("metrics confusion matrix ragged", SINGLE, M, _json(_set("val.confusion_matrix", [[1, 2], [3]])), "error",
         "metrics.json is damaged ('val.confusion_matrix' is not square"),
    Case("metrics labels a number", SINGLE, M, _json(_set("val.labels", 5)), "error",
         "metrics.json is damaged ('val.labels' is int, expected a list)"),
    Case("metrics per_class a list", SINGLE, M, _json(_set("val.per_class", [1, 2])), "error",
         "metrics.json is damaged ('val.per_class' is list, expected an object of objects)"),
    Case("metrics per_label values numbers", MULTI, M, _json(_set("val.per_label", {"a": 3})), "error",
         "metrics.json is damaged ('val.per_label.a' is int, expected an object)"),
    Case("metrics test a string", SINGLE, M, _json(_set("test", "x")), "error",
         "metrics.json is damaged ('test' is str, expected an object)"),
    Case("metrics best_step a string", SINGLE, M, _json(_set("best_step", "six")), "error",
         "metrics.json is damaged ('best_step' is str, expected a whole number)"),
    Case("metrics thresholds a string", MULTI, M, _json(_set("decision.thresholds", "abc")), "error",
         "metrics.json is damaged ('decision.thresholds' is str, expected a list of numbers)"),
    Case("metrics target_std a string", REGRESSION, M, _json(_set("decision.target_std", "big")), "error",
         "metrics.json is damaged ('decision.target_std' is str, expected a number)"),
    Case("metrics hardware a list", SINGLE, M, _json(_set("hardware", [1])), "error",
         "metrics.json is damaged ('hardware' is list, expected an object)"),
    Case("metrics calibration a list", SINGLE, M, _json(_set("calibration", [1])), "error",
         "metrics.json is damaged ('calibration' is list, expected an object)"),
    # val_predictions.csv
    Case("predictions binary", SINGLE, P, _write(BINARY), "error", "val_predictions.csv is not a readable UTF-8 CSV"),
    Case("predictions cut mid-row", MULTI, P, lambda p: p.write_text(p.read_text()[:-30]), "warning",
         "val_predictions.csv: left out 1 row whose fields do not match the header"),
    Case("predictions a row with extra fields", MULTI, P, lambda p: p.write_text(p.read_text() + "a,b,c,d,e,f,g,h,i,j\n"),
         "warning", "val_predictions.csv: left out 1 row whose fields do not match the header"),
    Case("predictions numbers are words", REGRESSION, P,
         _lines(lambda ls: ls[:1] + [",".join("many" for _ in ls[0].split(",")) for _ in ls[1:]]), "warning",
         "val_predictions.csv: left out 32 rows with a non-number in label, predicted, residual"),
    # config.yaml
    Case("config binary", SINGLE, runs.CONFIG, _write(BINARY), "error", "config.yaml is not a valid YAML mapping"),
    Case("config cut short", MULTI, runs.CONFIG, lambda p: p.write_text(p.read_text()[:40] + "\n  - [\n"), "error",
         "config.yaml is not a valid YAML mapping"),
    Case("config sections of the wrong types", SINGLE, runs.CONFIG,
         _write("train: {loss: [focal], focal_gamma: x, label_smoothing: [1], class_weights: {a: b}}\nadapter: 7\n"
                "adapt: {weighting: [soft]}\nmodel: [x]\n"), "ok", ""),
    # the side files
    Case("params binary", SINGLE, runs.PARAMS, _write(BINARY), "error", "params.json is not valid JSON"),
    Case("params cut short", REGRESSION, runs.PARAMS, _cut, "error", "params.json is not valid JSON"),
    Case("params groups a list", SINGLE, runs.PARAMS, _json(_set("groups", [1, 2])), "error",
         "params.json is damaged ('groups' is list, expected an object)"),
    Case("tracking binary", SINGLE, runs.TRACKING, _write(BINARY), "error", "tracking.json is not valid JSON"),
    Case("tracking a tracker a string", SINGLE, runs.TRACKING, _write('{"mlflow": "x"}'), "error",
         "tracking.json is damaged ('mlflow' is str, expected an object)"),
    Case("adapt binary", SINGLE, runs.ADAPT, _write(BINARY), "error", "adapt.json is not valid JSON"),
    Case("adapt cut short", SINGLE, runs.ADAPT, _write('{"rounds": [{"round": 1, "pseu'), "error",
         "adapt.json is not valid JSON"),
    Case("sweep_trial binary", SINGLE, runs.SWEEP_TRIAL, _write(BINARY), "error", "sweep_trial.json is not valid JSON"),
    Case("sweep_trial trial a string", SINGLE, runs.SWEEP_TRIAL, _write('{"trial": "1", "study": "s"}'), "error",
         "sweep_trial.json is damaged ('trial' is str)"),
]


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(runs.CHECKPOINTS, runs.ADAPTER, runs.TOKENIZER))
    (dest / runs.TRACKING).write_text('{"tensorboard": {"dir": "tb"}}')  # the side files a plain run lacks
    (dest / runs.ADAPT).write_text('{"rounds": []}')
    (dest / runs.SWEEP_TRIAL).write_text('{"trial": 1, "study": "s", "params": {"lr": 0.1}}')
    return dest


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_damaged_file_is_one_error_line_or_one_warning_never_a_traceback(case, finished, tmp_path, capsys):
    run = _copy(finished[case.kind], tmp_path / "run")
    assert (run / case.file).exists()
    case.damage(run / case.file)
    capsys.readouterr()
    rc = main(["report", str(run)])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    if case.outcome == "error":
        assert rc == 2 and len(lines) == 1, err
        assert lines[0].startswith("loraclf report: error: ") and str(run / case.file) in lines[0], err
        assert case.words in lines[0], err
        assert not (run / runs.REPORT).exists()
        return
    assert rc == 0, err
    assert (run / runs.REPORT / runs.REPORT_HTML).is_file()
    if case.outcome == "warning":
        assert len(lines) == 1 and lines[0].startswith("[loraclf] warning: "), err
        assert case.words in lines[0], err
    else:
        assert not lines, err


def test_compare_refuses_a_damaged_run_before_writing_anything(finished, tmp_path, capsys):
    good = _copy(finished[SINGLE], tmp_path / "good")
    bad = _copy(finished[SINGLE], tmp_path / "bad")
    (bad / H).write_bytes(BINARY)
    capsys.readouterr()
    assert main(["compare", str(good), str(bad), "--output", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad / H} is damaged (not UTF-8 text" in err, err
    assert not (tmp_path / "cmp").exists()
