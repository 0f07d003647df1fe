"""`loraclf train --nproc N ...` re-launched as N processes through `accelerate launch`."""

from __future__ import annotations

import subprocess
import sys


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
    """Run `accelerate launch --num_processes N -m loraclf ARGV` (default: this command's argv); its exit code."""
    args = without_nproc(sys.argv[1:] if argv is None else argv)
    # --multi_gpu selects Accelerate's torchrun-based launcher; on a machine without GPUs each process then
    # runs on the CPU and Accelerator(cpu=True) joins them with the gloo backend
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "loraclf", *args]
    return subprocess.call(cmd)
