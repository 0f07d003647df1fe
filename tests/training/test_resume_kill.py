"""Crash safety of training: SIGKILL at random points + --resume gives the uninterrupted run's result;
SIGINT/SIGTERM save a checkpoint and exit 130/143; a damaged newest checkpoint is skipped on resume.

The killed runs are real `loraclf train` processes. To keep the test fast they are forked from a helper process
that has already imported torch/transformers (a fresh interpreter spends ~8 s importing); the uninterrupted
reference run is a plain `python -m loraclf train` subprocess, so the fork shortcut is itself checked against it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_kill import KILL_ENV, ForkServer
from helpers_kill import assert_checkpoint_matches as _assert_checkpoint_matches
from helpers_kill import max_diff as _max_diff
from helpers_kill import newest_step as _newest_step
from helpers_kill import run_until as _run_until
from safetensors.torch import load_file

from loraclf import runs

pytestmark = pytest.mark.slow

TOTAL_STEPS = 36  # 3 epochs of 12 batches (180 train rows after the 20-row validation split, batch 16)

def _overrides(model: Path, data: dict, root: Path, name: str, keep: int) -> list[str]:
    return [
        f"model.name_or_path={model}", f"data.train={data['train']}", f"data.test={data['test']}",
        "data.validation_split=20", "data.max_length=32", f"data.cache_dir={root / 'cache'}",
        "train.num_train_epochs=3", "train.per_device_train_batch_size=16", "train.learning_rate=5e-3",
        "train.mixed_precision=fp32", "train.num_threads=1", "train.logging_steps=4", "eval.eval_steps=5",
        "output.save_steps=1", f"output.save_total_limit={keep}", "output.report=false",
        f"output.dir={root / 'runs'}", f"output.run_name={name}", "train.few_shot=false",
    ]


def _assert_same_result(run: Path, ref: Path, server: ForkServer, test_csv: Path, logdir: Path) -> None:
    """Same final adapter weights, metrics, history and test-set predictions as the uninterrupted run."""
    w = load_file(str(run / runs.ADAPTER / "adapter_model.safetensors"))
    w_ref = load_file(str(ref / runs.ADAPTER / "adapter_model.safetensors"))
    assert _max_diff(w, w_ref) <= 1e-6
    m, m_ref = (json.loads((p / runs.METRICS).read_text()) for p in (run, ref))
    assert m["best_step"] == m_ref["best_step"] and m["global_step"] == m_ref["global_step"] == TOTAL_STEPS
    for split in ("val", "test"):
        assert abs(m[split]["loss"] - m_ref[split]["loss"]) <= 1e-6
        assert m[split]["confusion_matrix"] == m_ref[split]["confusion_matrix"]
    h, h_ref = runs.read_jsonl(run / runs.HISTORY), runs.read_jsonl(ref / runs.HISTORY)
    assert [(r["type"], r["step"]) for r in h] == [(r["type"], r["step"]) for r in h_ref]  # no duplicates, none lost
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(h, h_ref)) <= 1e-6
    assert (run / runs.VAL_PREDICTIONS).read_text() == (ref / runs.VAL_PREDICTIONS).read_text()
    preds = []
    for r in (run, ref):
        out = logdir / f"pred-{r.name}.csv"
        pid, _ = server.start(["predict", str(r), "--input", str(test_csv), "--output", str(out), "--format", "full",
                               "--quiet"], logdir)
        assert server.wait(pid) == 0
        preds.append(out.read_text().splitlines())
    assert len(preds[0]) == 101 and preds[0][0] == preds[1][0]
    for a, b in zip(preds[0][1:], preds[1][1:]):
        ra, rb = a.split(","), b.split(",")
        assert ra[:3] == rb[:3]  # ID, label, label_id: identical predictions
        assert all(abs(float(x) - float(y)) <= 1e-6 for x, y in zip(ra[3:], rb[3:]))
    leftovers = [p for p in [*run.iterdir(), *(run / runs.CHECKPOINTS).iterdir()] if p.name.startswith(".")]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert, tiny_data):
    import pandas as pd

    root = tmp_path_factory.mktemp("kill")
    data = {"train": root / "train.csv", "test": root / "test.csv"}
    pd.read_csv(tiny_data["train"]).head(200).to_csv(data["train"], index=False)
    pd.concat([pd.read_csv(tiny_data["val"]), pd.read_csv(tiny_data["test"])]).head(100).to_csv(data["test"], index=False)
    logdir = root / "logs"
    logdir.mkdir()
    env = KILL_ENV
    # the reference: one uninterrupted run in a fresh interpreter, keeping every checkpoint for comparison
    ref_cmd = [sys.executable, "-m", "loraclf", "train", *_overrides(tiny_bert, data, root, "reference", 1000), "--quiet"]
    ref_proc = subprocess.Popen(ref_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = ForkServer(env)
    _, err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, err
    yield {"root": root, "data": data, "model": tiny_bert, "server": server, "ref": root / "runs" / "reference",
           "logdir": logdir}
    server.close()


def test_sigkill_at_10_random_points_then_resume_matches_uninterrupted(setup):
    s = setup
    server, root, ref = s["server"], s["root"], s["ref"]
    run = root / "runs" / "killed"
    rng = random.Random(int(os.environ.get("LORACLF_KILL_SEED", "1234")))  # another seed: other kill points
    # kill points spread over the whole run: a checkpoint step to wait for, then a random delay that lands the
    # kill anywhere inside the following step (forward, backward, checkpoint write, evaluation, pruning)
    # one target in each tenth of steps 0..32 (the last few steps are left so a kill cannot come after the end)
    targets = [rng.randrange(i * 33 // 10, (i + 1) * 33 // 10) for i in range(10)]
    fresh = _overrides(s["model"], s["data"], root, "killed", 2)
    kills = []
    for target in targets:
        argv = ["train", "--resume", str(run), "--quiet"] if (run / runs.CONFIG).exists() else ["train", *fresh, "--quiet"]
        rc, pid, log = _run_until(server, argv, s["logdir"], run, target, rng.uniform(0.0, 0.15), signal.SIGKILL)
        assert rc == -signal.SIGKILL, f"job for kill point {target} ended with {rc} before the kill: " \
                                      f"{Path(f'{log}.err').read_text()[-2000:]}"
        newest = newest_valid = None
        if (run / runs.CONFIG).exists():
            from loraclf.runs.checkpoints import newest_valid_checkpoint

            newest = _newest_step(run)
            newest_valid = newest_valid_checkpoint(run, log=lambda m: None)
            if newest_valid is not None:
                _assert_checkpoint_matches(newest_valid, ref)
        kills.append((target, newest))
    print("kill points (target step, newest checkpoint after the kill):", kills)
    assert len(kills) == 10
    assert sum(1 for _, n in kills if n is not None and n > 0) >= 8, kills  # nearly all landed mid-training
    pid, log = server.start(["train", "--resume", str(run), "--quiet"], s["logdir"])
    assert server.wait(pid) == 0, Path(f"{log}.err").read_text()[-3000:]
    _assert_same_result(run, ref, server, s["data"]["test"], s["logdir"])
    # retention: the last save_total_limit checkpoints plus the best one
    steps = sorted(int(p.name.split("-")[1]) for p in runs.checkpoint_dirs(run))
    best = json.loads((run / runs.METRICS).read_text())["best_step"]
    assert steps == sorted({TOTAL_STEPS - 1, TOTAL_STEPS, best})


@pytest.mark.parametrize("first,second", [(signal.SIGINT, signal.SIGTERM)])
def test_sigint_and_sigterm_save_a_checkpoint_and_exit_conventionally(setup, first, second):
    s = setup
    server, root, ref = s["server"], s["root"], s["ref"]
    run = root / "runs" / "signalled"
    fresh = _overrides(s["model"], s["data"], root, "signalled", 2)
    rc, _, log = _run_until(server, ["train", *fresh], s["logdir"], run, 7, 0.0, first)
    err = Path(f"{log}.err").read_text()
    assert rc == 130, err[-2000:]
    assert "Traceback" not in err
    assert "SIGINT received: saved checkpoint step-" in err and f"--resume {run}" in err
    assert err.strip().splitlines()[-1] == "loraclf train: interrupted (SIGINT)"
    stopped_at = _newest_step(run)
    assert stopped_at >= 7 and not (run / runs.ADAPTER).exists()
    _assert_checkpoint_matches(runs.latest_checkpoint(run), ref)

    rc, _, log = _run_until(server, ["train", "--resume", str(run)], s["logdir"], run, 20, 0.0, second)
    err = Path(f"{log}.err").read_text()
    assert rc == 143, err[-2000:]
    assert f"resumed from step-{stopped_at}" in err
    assert "SIGTERM received: saved checkpoint" in err and "Traceback" not in err
    _assert_checkpoint_matches(runs.latest_checkpoint(run), ref)

    pid, log = server.start(["train", "--resume", str(run), "--quiet"], s["logdir"])
    assert server.wait(pid) == 0, Path(f"{log}.err").read_text()[-3000:]
    _assert_same_result(run, ref, server, s["data"]["test"], s["logdir"])


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tiny_overrides, capsys):
    from loraclf.config import load_config
    from loraclf.runs.checkpoints import newest_valid_checkpoint
    from loraclf.training import train

    over = tiny_overrides + ["output.save_steps=1", "output.save_total_limit=10", "train.num_threads=1"]
    ref = train(load_config(None, over + ["output.run_name=ref"]), quiet=True)
    run = train(load_config(None, over + ["output.run_name=damaged"]), quiet=True).run_dir
    ckpts = runs.checkpoint_dirs(run)
    assert [c.name for c in ckpts] == [f"step-{i}" for i in range(1, 7)]
    # step-6: its weights file cut in half (COMPLETE is there, the checksum no longer matches)
    weights = ckpts[-1] / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    # step-5: torn before its manifest was written
    (ckpts[-2] / runs.COMPLETE).unlink()
    # a temp folder left by a kill in the middle of writing step-7
    (run / runs.CHECKPOINTS / ".step-7.abc.tmp").mkdir()
    assert newest_valid_checkpoint(run, log=lambda m: None) == ckpts[-3]
    for name in (runs.ADAPTER, runs.TOKENIZER):
        import shutil

        shutil.rmtree(run / name)
    (run / runs.METRICS).unlink()
    capsys.readouterr()
    res = train(load_config(None, over + ["output.run_name=damaged"]), resume=run)
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint step-6 (checksum mismatch)" in err
    assert "resumed from step-4: step 4" in err
    assert not (run / runs.CHECKPOINTS / ".step-7.abc.tmp").exists()
    a = load_file(str(run / runs.ADAPTER / "adapter_model.safetensors"))
    b = load_file(str(ref.run_dir / runs.ADAPTER / "adapter_model.safetensors"))
    tol = 1e-6 if not torch.cuda.is_available() else 1e-3  # in-process runs use the GPU when there is one
    assert _max_diff(a, b) <= tol
    assert abs(res.metrics["test"]["loss"] - ref.metrics["test"]["loss"]) <= tol
    assert [(r["type"], r["step"]) for r in res.history] == [(r["type"], r["step"]) for r in ref.history]


def test_resume_of_a_folder_without_checkpoints_or_config_is_a_clean_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, needle in ((tmp_path / "nope", "not found"), (empty, "not a loraclf run folder")):
        p = subprocess.run([sys.executable, "-m", "loraclf", "train", "--resume", str(target)], capture_output=True,
                           text=True)
        assert p.returncode == 2
        assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1


class _RunsCode:
    """A pickle that makes a folder when unpickled: stands in for any code an attacker could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_checkpoint_pickle_that_would_run_code_is_refused(tiny_overrides, tmp_path):
    """torch.load(weights_only=True): a tampered optimizer.pt (with a matching manifest) is not unpickled."""
    import hashlib

    from loraclf.base.errors import RunError
    from loraclf.config import load_config
    from loraclf.training import train

    cfg = load_config(None, tiny_overrides + ["output.save_steps=3"])
    run = train(cfg, quiet=True).run_dir
    ckpt = runs.latest_checkpoint(run)
    marker = tmp_path / "pwned"
    torch.save({"state": _RunsCode(marker), "param_groups": []}, ckpt / "optimizer.pt")
    manifest = json.loads((ckpt / runs.COMPLETE).read_text())
    data = (ckpt / "optimizer.pt").read_bytes()
    manifest["optimizer.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / runs.COMPLETE).write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="cannot load checkpoint .* safely"):
        train(cfg, resume=run, quiet=True)
    assert not marker.exists()
    # the same file read without weights_only would have run the code: the test can fail
    torch.load(ckpt / "optimizer.pt", weights_only=False)
    assert marker.exists()


def test_sigterm_to_one_of_two_processes_checkpoints_all_of_them(tiny_bert, tiny_data, tmp_path):
    """--nproc 2: a signal that reaches only rank 1 (mid-collective, say) still stops both ranks at the same
    step, after one complete checkpoint; without agreeing on the step, the ranks would deadlock or diverge."""
    import psutil

    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "loraclf", "train", f"model.name_or_path={tiny_bert}", f"data.train={tiny_data['train']}",
           f"data.validation={tiny_data['val']}", "data.max_length=32", "train.max_steps=2000", "train.mixed_precision=fp32",
           "train.per_device_train_batch_size=8", "output.save_steps=20", "eval.eval_steps=1000", "output.report=false",
           f"output.dir={out}", "output.run_name=mp", f"data.cache_dir={tmp_path / 'cache'}", "--nproc", "2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        run = out / "mp"
        deadline = time.time() + 240
        while _newest_step(run) < 20 and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert _newest_step(run) >= 20, "training did not reach its first checkpoint"
        workers = [c for c in psutil.Process(p.pid).children(recursive=True)
                   if "loraclf" in " ".join(c.cmdline()) and "accelerate" not in " ".join(c.cmdline())]
        assert len(workers) == 2
        rank1 = max(workers, key=lambda c: c.create_time())
        before = _newest_step(run)
        rank1.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    from loraclf.runs.checkpoints import verify_checkpoint

    assert "SIGTERM received: saved checkpoint step-" in err, err[-3000:]
    newest = runs.latest_checkpoint(run)
    assert int(newest.name.split("-")[1]) > before and verify_checkpoint(newest)
    assert f"saved checkpoint {newest.name}" in err
    assert not (run / runs.ADAPTER).exists()  # stopped, not finished
