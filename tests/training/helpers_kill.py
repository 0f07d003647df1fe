"""The SIGKILL-and-resume machinery shared by tests/training/test_resume_kill*.py: a fork server that starts real
`loraclf` commands from a process that has already imported torch/transformers (a fresh interpreter spends ~8 s
importing), a way to kill a job once its newest checkpoint reaches a step, and the checks that a checkpoint or a
finished run equals the uninterrupted reference's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraclf import runs

# CUDA_VISIBLE_DEVICES="": the promise (and so the test) is bit-exact resume on CPU; GPU kernels such as the
# embedding backward accumulate with atomics, in no fixed order
KILL_ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}

# A fork server: reads one JSON argv per line, forks, runs `loraclf <argv>` in the child with stdout/stderr in
# files, and reports {"pid"} at once and {"pid", "rc"} when the child ends (rc < 0: killed by that signal).
SERVER = r"""
import json, os, sys
import torch, transformers, peft, accelerate, datasets, sklearn.model_selection, safetensors.torch
import transformers.models.bert.modeling_bert
import loraclf.cli, loraclf.training, loraclf.data, loraclf.model, loraclf.infer.engine
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        out = os.open(job["log"] + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(job["log"] + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(err, 2)
        rc = 70
        try:
            rc = loraclf.cli.main(job["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    print(json.dumps({"pid": pid, "rc": rc}), flush=True)
"""


class ForkServer:
    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        self.n = 0

    def start(self, argv: list[str], logdir: Path) -> tuple[int, Path]:
        self.n += 1
        log = logdir / f"job{self.n}"
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"], log

    def wait(self, pid: int) -> int:
        msg = json.loads(self.proc.stdout.readline())
        assert msg["pid"] == pid
        return msg["rc"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def newest_step(run: Path) -> int:
    """The newest complete checkpoint's step; 0 when the run folder exists without one, -1 before it exists."""
    c = runs.latest_checkpoint(run)
    if c is None:
        return 0 if (run / runs.CONFIG).exists() else -1
    return int(c.name.split("-")[1])


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a) if a else 0.0


def optimizer_diff(a: Path, b: Path) -> float:
    sa = torch.load(a, weights_only=True)["state"]
    sb = torch.load(b, weights_only=True)["state"]
    assert sa.keys() == sb.keys()
    worst = 0.0
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            worst = max(worst, float((sa[k][name].double() - sb[k][name].double()).abs().max()))
    return worst


def assert_checkpoint_matches(ckpt: Path, ref_run: Path) -> None:
    """A checkpoint of the killed run equals the reference's checkpoint of the same step."""
    ref = ref_run / runs.CHECKPOINTS / ckpt.name
    assert ref.is_dir(), f"reference has no {ckpt.name}"
    assert max_diff(load_file(str(ckpt / "trainable.safetensors")), load_file(str(ref / "trainable.safetensors"))) <= 1e-6
    assert optimizer_diff(ckpt / "optimizer.pt", ref / "optimizer.pt") <= 1e-6
    a, b = (json.loads((p / "state.json").read_text()) for p in (ckpt, ref))
    for key in ("step", "epoch", "batches_in_epoch", "best_step", "bad_evals", "window_n"):
        assert a[key] == b[key], (ckpt.name, key, a[key], b[key])
    for key in ("best_metric", "window_loss"):
        assert abs((a[key] or 0.0) - (b[key] or 0.0)) <= 1e-6, (ckpt.name, key)


def run_until(server, argv, logdir, run: Path, target_step: int, delay: float, sig: int) -> tuple[int, int, Path]:
    """Start a train job, wait until its newest checkpoint reaches target_step, wait `delay` s, send sig."""
    pid, log = server.start(argv, logdir)
    deadline = time.time() + 120
    while newest_step(run) < target_step and time.time() < deadline:
        if Path(f"{log}.out").stat().st_size if Path(f"{log}.out").exists() else 0:
            break  # it printed the run folder: finished before the target
        time.sleep(0.005)
    time.sleep(delay)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    return server.wait(pid), pid, log
