"""`loraclf train --nproc N ...` re-launched as N processes through `accelerate launch`.

A launched process that meets bad input hands its one error line to the launching process (a file in a temp
folder named by ERROR_DIR) and stops the launcher agent and the other processes at once, before they print gloo
errors or the agent's failure report; the launching process then prints that line alone and exits 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ERROR_DIR = "LORACLF_ERROR_DIR"  # set for the launched processes: where a process leaves its one error line


def without_nproc(argv: list[str]) -> list[str]:
    """argv minus `--nproc N` / `--nproc=N`, so the launched processes do not launch again."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def relaunch(nproc: int, argv: list[str] | None = None) -> int:
    """Run `accelerate launch --num_processes N -m loraclf ARGV` (default: this command's argv); its exit code, or 2
    with the one error line of a process that met bad input."""
    args = without_nproc(sys.argv[1:] if argv is None else argv)
    # --multi_gpu selects Accelerate's torchrun-based launcher; on a machine without GPUs each process then
    # runs on the CPU and Accelerator(cpu=True) joins them with the gloo backend
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "loraclf", *args]
    errors = Path(tempfile.mkdtemp(prefix="loraclf-launch-"))
    try:
        rc = subprocess.call(cmd, env={**os.environ, ERROR_DIR: str(errors)})
        lines = [p.read_text(encoding="utf-8").strip() for p in sorted(errors.glob("rank-*.txt"))]
    finally:
        shutil.rmtree(errors, ignore_errors=True)
    if lines:
        print(lines[0], file=sys.stderr)
        return 2
    return rc


def hand_over_error(line: str) -> bool:
    """In a launched process: leave line for the launching process, stop the agent and the other processes, and
    return True (the caller then exits without printing). Elsewhere: False."""
    folder = os.environ.get(ERROR_DIR)
    if not folder or not Path(folder).is_dir():
        return False
    import psutil  # a dependency of accelerate; only a launched process needs it

    path = Path(folder) / f"rank-{int(os.environ.get('RANK', '0')):05d}.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(line + "\n", encoding="utf-8")
    os.replace(tmp, path)  # whole or absent: the launching process may read it as soon as the agent is gone
    me = psutil.Process()
    agent = me.parent()
    try:
        others = [p for p in agent.children() if p.pid != me.pid]
        agent.kill()  # first, so it never reports the other processes' deaths
        for p in others:
            p.kill()
    except psutil.Error:  # already gone: another process met the same input and stopped everyone first
        pass
    return True
