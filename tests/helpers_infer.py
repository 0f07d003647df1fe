"""Helpers for the export and serve tests: a tiny real training run, free loopback ports, a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx


def tiny_run_overrides(tiny_bert: Path, tiny_data: dict, root: Path, name: str) -> list[str]:
    """A 6-step real training run of the tiny BERT on the tiny_data files, into root/runs/name."""
    return [
        f"model.name_or_path={tiny_bert}", f"data.train={tiny_data['train']}", f"data.validation={tiny_data['val']}",
        f"data.test={tiny_data['test']}", "data.max_length=32", "train.max_steps=6",
        "train.per_device_train_batch_size=16", "train.learning_rate=5e-3", "train.mixed_precision=fp32",
        "train.logging_steps=2", "eval.eval_steps=3", "output.report=false", f"output.dir={root / 'runs'}",
        f"output.run_name={name}", f"data.cache_dir={root / 'cache'}",
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`loraclf serve` in a child process on a free loopback port; waits until /health answers."""

    def __init__(self, model: Path, log: Path, *args: str, timeout: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "loraclf", "serve", str(model), "--port", str(self.port),
                                      *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not come up in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


# Python with loraclf and peft made unimportable: what a stock transformers user has
BLOCKED_PYTHON = textwrap.dedent("""
    import sys
    for _name in ("loraclf", "peft"):
        sys.modules[_name] = None
    try:
        import peft
        raise SystemExit("peft import was not blocked")
    except ImportError:
        pass
""")


def run_blocked(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", BLOCKED_PYTHON + textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def load_run_model(path, merge: bool = True):
    """(model, tokenizer, id2label, config) of a run folder: the run opened once, its adapter loaded (merged)."""
    from loraclf import runs
    from loraclf.model import load_trained

    run = runs.Run.open(path)
    model, tokenizer = load_trained(run, merge=merge)
    return model, tokenizer, run.id2label, run.config
