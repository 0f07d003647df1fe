"""Optuna sweeps: the sweep file, budget rejection, pruning, results, and many workers on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import IN_CI, need_module

optuna = need_module("optuna")

from loraclf import cli  # noqa: E402
from loraclf.config import load_config  # noqa: E402
from loraclf.base.errors import ConfigError  # noqa: E402
from loraclf.sweep import SweepError, load_sweep, run_sweep, with_driver  # noqa: E402

PG_URL = os.environ.get("LORACLF_TEST_POSTGRES_URL", "postgresql://loraclf:loraclf@127.0.0.1:5432/loraclf_test")
ROOT = Path(__file__).resolve().parents[2]


def _overrides(tiny_overrides, **extra) -> dict:
    """tiny_overrides (key=value strings) as the sweep file's overrides mapping, minus the run-folder keys."""
    out = {}
    for text in tiny_overrides:
        key, value = text.split("=", 1)
        if not key.startswith("output."):
            out[key] = yaml.safe_load(value)
    out["output.report"] = False
    out["data.test"] = None  # trials are chosen on validation; scoring a test split too only costs time here
    out.update(extra)
    return out


def _write_sweep(tmp_path: Path, name: str = "sweep.yaml", **body) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _summary(folder: Path) -> list[dict]:
    with open(folder / "sweep_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _worker(sweep: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "loraclf", "sweep", str(sweep), "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


# ------------------------------------------------------------------------------------------ the sweep file


def test_bad_sweep_files_are_one_line_errors(tmp_path, capsys):
    path = _write_sweep(tmp_path, n_trial=3, sampler="gird", metric="accuracy", direction="minimize", space={
        "train.learning_rat": {"type": "float", "low": 1e-4, "high": 1e-2},
        "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "adapter.r": {"type": "int", "low": 4, "high": 2},
        "adapter.lora_dropout": {"type": "float", "low": 0.0, "high": 1.5},
    })
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    msg = str(e.value)
    assert "unknown sweep key 'n_trial' (did you mean 'n_trials'?)" in msg
    assert "'sampler' must be one of tpe, random, grid, got 'gird' (did you mean 'grid'?)" in msg
    assert "space key 'train.learning_rat' is not a config key (did you mean 'train.learning_rate'?)" in msg
    assert "'direction: minimize' contradicts metric 'accuracy'" in msg
    assert "space 'adapter.r' low=4 is above high=2" in msg
    assert "space 'adapter.lora_dropout' value 1.5: 'adapter.lora_dropout' must be < 1" in msg

    # the CLI prints it on one line, exit code 2, and writes nothing
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("loraclf sweep: error: sweep file") and "Traceback" not in err
    assert not (ROOT / "sweeps" / "sweep").exists()

    grid = _write_sweep(tmp_path, "grid.yaml", sampler="grid", space={"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}})
    with pytest.raises(ConfigError, match="the grid sampler needs a finite grid; give 'step'"):
        load_sweep(grid)
    assert load_sweep(_write_sweep(tmp_path, "g2.yaml", sampler="grid", space={
        "adapter.r": {"type": "int", "low": 2, "high": 8, "step": 2}, "adapter.target_modules": ["qv", "qkv"]})).n_trials == 8


def test_bad_storage_is_one_line_error(tmp_path, tiny_overrides, capsys):
    path = _write_sweep(tmp_path, n_trials=1, output=str(tmp_path / "sw"), overrides=_overrides(tiny_overrides),
                        space={"adapter.r": [2, 4]})
    with pytest.raises(SweepError, match="is not a database URL"):
        run_sweep(path, storage="nowhere.db")
    assert not (tmp_path / "sw").exists()  # nothing written for bad input
    assert cli.main(["sweep", str(path), "--storage", "postgresql://u:secret@127.0.0.1:1/none", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loraclf sweep: error: cannot open storage 127.0.0.1:1/none") and "secret" not in err


# ------------------------------------------------------------------------------------------ one worker


def test_sweep_writes_trials_summary_best_and_plots_and_resumes(tmp_path, tiny_overrides):
    out = tmp_path / "sw"
    body = dict(overrides=_overrides(tiny_overrides), metric="accuracy", sampler="random", pruner="none",
                n_trials=2, output=str(out), space={
                    "train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                    "adapter.r": {"type": "int", "low": 2, "high": 8},
                    "adapter.target_modules": {"type": "categorical", "choices": ["qv", "qkv"]}})
    path = _write_sweep(tmp_path, **body)
    assert run_sweep(path, quiet=True) == out

    rows = _summary(out)
    assert [r["trial"] for r in rows] == ["0", "1"] and {r["state"] for r in rows} == {"COMPLETE"}
    for r in rows:
        run = out / f"trial-{int(r['trial']):04d}"
        assert Path(r["run_dir"]) == run and (run / "adapter" / "adapter_config.json").is_file()
        cfg = load_config(run / "config.yaml")
        assert cfg.train.learning_rate == pytest.approx(float(r["train.learning_rate"]))
        assert cfg.adapter.r == int(r["adapter.r"]) and cfg.adapter.target_modules == r["adapter.target_modules"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert float(r["val_accuracy"]) == pytest.approx(metrics["val"]["accuracy"])
        assert int(r["trainable_params"]) == metrics["trainable_params"] > 0
        assert float(r["run_time_s"]) > 0
        assert json.loads((run / "sweep_trial.json").read_text())["state"] == "complete"

    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    best_cfg = load_config(out / "best.yaml")
    assert best_cfg.train.learning_rate == pytest.approx(float(best["train.learning_rate"]))
    assert best_cfg.adapter.r == int(best["adapter.r"])
    assert best_cfg.model.name_or_path == load_config(None, tiny_overrides).model.name_or_path
    for name in ("history.png", "importances.png", "metric_vs_train.learning_rate.png", "metric_vs_adapter.r.png",
                 "metric_vs_adapter.target_modules.png"):
        assert (out / "plots" / name).stat().st_size > 1000, name

    # resume: the same study in the same folder grows to the new total, keeping the old trials
    path = _write_sweep(tmp_path, **{**body, "n_trials": 3})
    run_sweep(path, quiet=True)
    rows2 = _summary(out)
    assert len(rows2) == 3 and rows2[:2] == rows
    assert rows2[2]["state"] == "COMPLETE" and (out / "trial-0002" / "adapter").is_dir()
    # a study is tied to its search space
    path = _write_sweep(tmp_path, **{**body, "space": {"adapter.r": [2, 4]}})
    with pytest.raises(SweepError, match="created with another search space"):
        run_sweep(path, quiet=True)


def test_over_budget_trial_is_rejected_without_training(tmp_path, tiny_overrides):
    # tiny BERT (hidden 32, 2 layers), LoRA on q,v: 256*r adapter + 1,188 head parameters
    out = tmp_path / "sw"
    path = _write_sweep(tmp_path, overrides=_overrides(tiny_overrides, **{"budget.max_trainable_params": 5000,
                                                                          "output.report": True}),
                        sampler="random", pruner="none", n_trials=2, output=str(out),
                        enqueue=[{"adapter.r": 64}, {"adapter.r": 2}], space={"adapter.r": {"type": "int", "low": 1, "high": 64}})
    run_sweep(path, quiet=True)
    rejected, ok = _summary(out)
    assert rejected["state"] == "REJECTED" and rejected["adapter.r"] == "64"
    assert "over budget.max_trainable_params=5,000" in rejected["note"]
    assert not (out / "trial-0000").exists()  # never trained: no run folder at all
    assert ok["state"] == "COMPLETE" and ok["adapter.r"] == "2" and int(ok["trainable_params"]) <= 5000
    assert (out / "trial-0001" / "adapter").is_dir()
    page = (out / "trial-0001" / "report" / "report.html").read_text()
    assert "Sweep trial 1 of study <code>sweep</code>: adapter.r=2." in page and "sweep_summary.csv" in page


def test_pruner_stops_a_bad_trial_early(tmp_path, tiny_overrides):
    # trial 0 trains sensibly for 12 steps; trial 1's learning rate of 1.0 blows the val loss up at the first
    # evaluation (step 3), where the median pruner compares it with trial 0 at the same step and stops it
    out = tmp_path / "sw"
    path = _write_sweep(tmp_path, overrides=_overrides(tiny_overrides, **{"train.max_steps": 12, "eval.eval_steps": 3}),
                        metric="loss", sampler="random", pruner={"name": "median", "n_startup_trials": 1},
                        n_trials=2, output=str(out), enqueue=[{"train.learning_rate": 5e-3}, {"train.learning_rate": 1.0}],
                        space={"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}})
    run_sweep(path, quiet=True)
    good, bad = _summary(out)
    assert good["state"] == "COMPLETE" and good["last_step"] == "12"
    assert bad["state"] == "PRUNED" and bad["last_step"] == "3"
    assert float(bad["val_loss"]) > float(good["val_loss"])
    run = out / "trial-0001"
    steps = [json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()]
    assert max(steps) == 3  # it stopped at step 3 of 12
    assert not (run / "adapter").exists() and not (run / "metrics.json").exists()
    assert json.loads((run / "sweep_trial.json").read_text())["state"] == "pruned"


# ------------------------------------------------------------------------------------------ many workers


def _two_workers(tmp_path, tiny_overrides, storage: str, study: str) -> list[dict]:
    """Two concurrent `loraclf sweep` processes on one grid study of 4 points."""
    out = tmp_path / "sw"
    path = _write_sweep(tmp_path, overrides=_overrides(tiny_overrides), sampler="grid", pruner="none", output=str(out),
                        heartbeat_interval=2, grace_period=10, space={
                            "train.learning_rate": {"type": "categorical", "choices": [2e-3, 1e-2]},
                            "adapter.r": {"type": "int", "low": 2, "high": 4, "step": 2}})
    workers = [_worker(path, "--storage", storage, "--study", study) for _ in range(2)]
    results = [w.communicate(timeout=240) for w in workers]
    for w, (_, err) in zip(workers, results):
        assert w.returncode == 0, err[-2000:]
    all_rows = _summary(out)
    # two workers may both start a trial while the study is one short of n_trials; the later one is recorded as
    # SKIPPED and trains nothing, so it is no duplicate
    skipped = [r for r in all_rows if r["state"] == "SKIPPED"]
    rows = [r for r in all_rows if r["state"] != "SKIPPED"]
    assert len(skipped) <= 1
    for r in skipped:
        assert not (out / f"trial-{int(r['trial']):04d}" / "adapter").exists()
    assert len(rows) == 4 and {r["state"] for r in rows} == {"COMPLETE"}
    grid = {(float(r["train.learning_rate"]), int(r["adapter.r"])) for r in rows}
    assert grid == {(lr, r) for lr in (2e-3, 1e-2) for r in (2, 4)}  # every point once, none twice
    assert len({r["worker"] for r in rows}) == 2  # both workers trained trials
    for r in rows:
        info = json.loads((out / f"trial-{int(r['trial']):04d}" / "sweep_trial.json").read_text())
        assert info["state"] == "complete" and info["worker"] == r["worker"]
    study_obj = optuna.load_study(study_name=study, storage=with_driver(storage))
    complete = [t for t in study_obj.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and len(study_obj.trials) == 4 + len(skipped)
    return rows


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study(tmp_path, tiny_overrides):
    _two_workers(tmp_path, tiny_overrides, f"sqlite:///{tmp_path / 'study.db'}", "grid")


def _postgres_reachable() -> str | None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(with_driver(PG_URL), connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means: no server here
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


@pytest.mark.slow
def test_two_workers_share_a_postgres_study(tmp_path, tiny_overrides):
    why = _postgres_reachable()
    if why is not None:
        msg = f"PostgreSQL not reachable at {PG_URL.split('@')[-1]} ({why}); run .ci/services-postgres.sh"
        if IN_CI:
            pytest.fail(msg + "; CI=true, so this is a failure, not a skip")
        pytest.skip(msg)
    study = f"test-{uuid.uuid4().hex[:10]}"
    try:
        _two_workers(tmp_path, tiny_overrides, PG_URL, study)
    finally:
        try:
            optuna.delete_study(study_name=study, storage=with_driver(PG_URL))
        except KeyError:
            pass


@pytest.mark.slow
def test_killed_worker_leaves_its_trial_failed_and_the_sweep_resumes(tmp_path, tiny_overrides):
    out = tmp_path / "sw"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    path = _write_sweep(tmp_path, overrides=_overrides(tiny_overrides, **{"train.max_steps": 400}), sampler="random",
                        pruner="none", n_trials=1, output=str(out), heartbeat_interval=1, grace_period=3,
                        space={"adapter.r": [2, 4]})
    victim = _worker(path, "--storage", storage, "--study", "k")
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            trials = optuna.load_study(study_name="k", storage=storage).trials
        except KeyError:
            trials = []
        if any(t.state.name == "RUNNING" for t in trials) and (out / "trial-0000" / "sweep_trial.json").is_file():
            break
        assert victim.poll() is None, victim.communicate()[1][-2000:]
        time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert optuna.load_study(study_name="k", storage=storage).trials[0].state.name == "RUNNING"
    time.sleep(4)  # past the grace period: the heartbeat has gone stale

    fast = _write_sweep(tmp_path, overrides=_overrides(tiny_overrides), sampler="random", pruner="none", n_trials=1,
                        output=str(out), heartbeat_interval=1, grace_period=3, space={"adapter.r": [2, 4]})
    run_sweep(fast, storage=storage, study_name="k", quiet=True)
    rows = _summary(out)
    assert [r["state"] for r in rows] == ["FAIL", "COMPLETE"]  # the killed trial does not count towards n_trials
    assert json.loads((out / "trial-0000" / "sweep_trial.json").read_text())["state"] == "running"  # as it was killed
