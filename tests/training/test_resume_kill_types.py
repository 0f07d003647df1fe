"""SIGKILL and --resume on a multi-label and a regression run give the uninterrupted run's result (issue 42), as
test_resume_kill.py shows for single-label: the same adapter, metrics, history, decision (tuned thresholds, target
scaling), validation predictions and predictions on new rows.

Each type is killed at 3 random points, one in each third of its steps; LORACLF_KILL_SEED picks other points.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers_kill import KILL_ENV, ForkServer, assert_checkpoint_matches, max_diff, newest_step, run_until
from helpers_problem import MULTI, REGRESSION, problem_rows, type_overrides
from loraclf import runs, task

pytestmark = pytest.mark.slow

KILLS = 3
TOL = 1e-6


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("kill_types")
    rows = problem_rows(160, 1)
    data = {"train": root / "train.csv", "test": root / "test.csv"}
    rows.head(120).to_csv(data["train"], index=False)
    rows.tail(40).to_csv(data["test"], index=False)
    logdir = root / "logs"
    logdir.mkdir()
    server = ForkServer(KILL_ENV)
    yield {"root": root, "data": data, "model": tiny_bert, "server": server, "logdir": logdir}
    server.close()


def _overrides(s: dict, kind: str, name: str, keep: int) -> list[str]:
    """2 epochs of 7 batches (100 train rows after the 20-row validation split, batch 16): 14 steps."""
    root, data = s["root"], s["data"]
    return [
        f"model.name_or_path={s['model']}", f"data.train={data['train']}", f"data.test={data['test']}",
        "data.validation_split=20", "data.max_length=24", f"data.cache_dir={root / 'cache'}",
        "train.num_train_epochs=2", "train.per_device_train_batch_size=16", "train.learning_rate=5e-3",
        "train.mixed_precision=fp32", "train.num_threads=1", "train.logging_steps=2", "eval.eval_steps=4",
        "output.save_steps=1", f"output.save_total_limit={keep}", "output.report=false",
        f"output.dir={root / 'runs' / kind}", f"output.run_name={name}", *type_overrides(kind), "--quiet",
    ]


def _run(s: dict, argv: list[str]) -> None:
    pid, log = s["server"].start(argv, s["logdir"])
    assert s["server"].wait(pid) == 0, Path(f"{log}.err").read_text()[-3000:]


def _close(a, b, where: str) -> None:
    """Equal JSON values, numbers within TOL."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        assert abs(a - b) <= TOL, (where, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _csv_close(a: Path, b: Path) -> None:
    """Two CSV files with the same cells, numbers within TOL."""
    la, lb = a.read_text().splitlines(), b.read_text().splitlines()
    assert len(la) == len(lb) > 1 and la[0] == lb[0]
    for ra, rb in zip(la[1:], lb[1:]):
        for x, y in zip(ra.split(","), rb.split(",")):
            try:
                assert abs(float(x) - float(y)) <= TOL, (ra, rb)
            except ValueError:
                assert x == y, (ra, rb)


def _assert_same_result(s: dict, run: Path, ref: Path) -> None:
    w, w_ref = (load_file(str(r / runs.ADAPTER / "adapter_model.safetensors")) for r in (run, ref))
    assert max_diff(w, w_ref) <= TOL
    m, m_ref = (json.loads((r / runs.METRICS).read_text()) for r in (run, ref))
    assert m["global_step"] == m_ref["global_step"] and m["best_step"] == m_ref["best_step"]
    for split in ("val", "test"):
        _close({k: m[split][k] for k in task.SCALARS[m["problem_type"]]},
               {k: m_ref[split][k] for k in task.SCALARS[m["problem_type"]]}, split)
    _close(*(json.loads((r / runs.DECISION).read_text()) for r in (run, ref)), "decision")
    h, h_ref = runs.read_jsonl(run / runs.HISTORY), runs.read_jsonl(ref / runs.HISTORY)
    assert [(r["type"], r["step"]) for r in h] == [(r["type"], r["step"]) for r in h_ref]  # none lost or repeated
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(h, h_ref)) <= TOL
    _csv_close(run / runs.VAL_PREDICTIONS, ref / runs.VAL_PREDICTIONS)
    out = {}
    for r in (run, ref):
        out[r] = s["logdir"] / f"pred-{r.parent.name}-{r.name}.csv"
        _run(s, ["predict", str(r), "--input", str(s["data"]["test"]), "--output", str(out[r]), "--format", "full",
                 "--quiet"])
    _csv_close(out[run], out[ref])


@pytest.mark.parametrize("kind", [MULTI, REGRESSION])
def test_sigkill_at_3_random_points_then_resume_matches_uninterrupted(kill_setup, kind):
    s = kill_setup
    ref, run = (s["root"] / "runs" / kind / name for name in ("reference", "killed"))
    _run(s, ["train", *_overrides(s, kind, "reference", 1000)])  # every checkpoint kept, for comparison
    total = json.loads((ref / runs.METRICS).read_text())["global_step"]
    assert total == 14
    rng = random.Random(int(os.environ.get("LORACLF_KILL_SEED", "1234")) + len(kind))
    # one target in each third of steps 1..total-3, then a delay that lands the kill inside the following step
    targets = [rng.randrange(1 + i * (total - 3) // KILLS, 1 + (i + 1) * (total - 3) // KILLS) for i in range(KILLS)]
    kills = []
    for target in targets:
        argv = (["train", "--resume", str(run), "--quiet"] if (run / runs.CONFIG).exists()
                else ["train", *_overrides(s, kind, "killed", 2)])
        rc, _, log = run_until(s["server"], argv, s["logdir"], run, target, rng.uniform(0.0, 0.1), signal.SIGKILL)
        assert rc == -signal.SIGKILL, f"the job for kill point {target} ended with {rc} before the kill: " \
                                      f"{Path(f'{log}.err').read_text()[-2000:]}"
        from loraclf.runs.checkpoints import newest_valid_checkpoint

        valid = newest_valid_checkpoint(run, log=lambda m: None) if (run / runs.CONFIG).exists() else None
        if valid is not None:
            assert_checkpoint_matches(valid, ref)
        kills.append((target, newest_step(run)))
    print(f"{kind}: kill points (target step, newest checkpoint after the kill):", kills)
    assert sum(1 for _, n in kills if n > 0) >= 2, kills  # the kills landed mid-training, not before it began
    _run(s, ["train", "--resume", str(run), "--quiet"])
    _assert_same_result(s, run, ref)
