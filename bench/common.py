"""What the benchmark scripts share: a child process run and what it cost (wall time, its own CPU, the CPU other
processes used meanwhile, its peak RSS), the machine header of a results table, Markdown tables and result files.

The scripts import it as `common` (a script's own folder is the first entry of sys.path). It is the one place where
the benchmarks' bookkeeping imports loraclf (the CPU's name and flags, native bf16, atomic writes), so a move inside
loraclf changes this file; the scripts import loraclf themselves only for what they measure. Importing it loads
neither torch nor loraclf.base.device (see _device), so a child process that imports it measures its own peak RSS as before.

Linux only: the machine's busy time comes from /proc/stat and a live process's peak RSS from /proc/PID/status.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import IO, Iterable, Optional, Sequence

from loraclf.runs import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
CPU_LOCK = "/tmp/loraclf-cpu.lock"  # the project's one-heavy-job-at-a-time lock (`flock` takes the same file)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
BUSY_SHARE = 0.05  # other processes above 5% of one core during a measurement: its timings are not results
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}


# ------------------------------------------------------------------------------------------ loraclf's device facts


def _device() -> ModuleType:
    """loraclf.base.device, imported on first use: it imports torch (about 200 MB of RSS), which a child process whose peak
    RSS is measured without torch (bench/hard_data.py's TF-IDF anchor) must not pay for."""
    import loraclf.base.device

    return loraclf.base.device


def cpu_name() -> str:
    return _device().cpu_name()


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX), by loraclf's check."""
    return _device().bf16_supported("cpu")


# ------------------------------------------------------------------------------------------ CPU time and load


def machine_busy_s() -> float:
    """CPU seconds all processes have used on this machine since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and of the children it has waited for (user + system)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass(frozen=True)
class Load:
    """The CPU other processes used while something was measured, and how long that took."""

    other_cpu_s: float
    wall_s: float

    @property
    def share(self) -> float:
        """Other processes' CPU as a share of one core over the wall time."""
        return self.other_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def busy(self) -> bool:
        return self.share > BUSY_SHARE


class LoadMeter:
    """Started now; read() gives the CPU other processes have used since: /proc/stat's busy time less this
    process's own and its waited-for children's (a child still running counts as another process)."""

    def __init__(self) -> None:
        self._busy0, self._own0, self._t0 = machine_busy_s(), own_cpu_s(), time.perf_counter()

    def read(self) -> Load:
        other = (machine_busy_s() - self._busy0) - (own_cpu_s() - self._own0)
        return Load(other_cpu_s=max(other, 0.0), wall_s=time.perf_counter() - self._t0)


# ------------------------------------------------------------------------------------------ child processes


def thread_env(threads: int) -> dict:
    """The variables that set the thread count of torch's, MKL's and OpenBLAS's pools in a new process."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


@dataclass(frozen=True)
class Child:
    """A finished child process and what it cost."""

    returncode: int  # negative: ended by that signal
    stdout: str  # "" unless captured
    stderr: str  # "" unless captured
    wall_s: float
    cpu_s: float  # its own user + system CPU, its waited-for descendants included
    other_cpu_s: float  # CPU other processes used on the machine while it ran
    peak_rss_mb: float  # its peak resident set (the largest of it and its waited-for descendants), MiB
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def load(self) -> Load:
        return Load(self.other_cpu_s, self.wall_s)

    def error(self, limit: int = 300) -> str:
        """One line for a table: the last non-empty line of its stderr (else stdout), else how it ended."""
        lines = [x for x in (self.stderr or self.stdout).splitlines() if x.strip()]
        if self.timed_out:
            return (f"timed out after {self.wall_s:,.0f} s" + (f": {lines[-1]}" if lines else ""))[:limit]
        rc = self.returncode
        ended = f"exit code {rc}" if rc >= 0 else f"ended by {signal.Signals(-rc).name}"
        return (lines[-1] if lines else ended)[:limit]

    def tail(self, n: int = 15, limit: int = 3000) -> str:
        """The last n non-empty lines of its stderr (else stdout), at most limit characters."""
        lines = [x for x in (self.stderr or self.stdout).splitlines() if x.strip()]
        return "\n".join(lines[-n:])[-limit:]


def _stream(how: str, capture: IO) -> object:
    """Popen's stdout/stderr argument for 'capture', 'inherit', 'discard' or (stderr only) 'stdout'."""
    try:
        return {"capture": capture, "inherit": None, "discard": subprocess.DEVNULL, "stdout": subprocess.STDOUT}[how]
    except KeyError:
        raise ValueError(f"stream must be capture, inherit, discard or stdout, got {how!r}") from None


# Starts the command and reports the command's own rusage. A benchmark cannot start it directly: Linux carries a
# process's peak RSS across exec, so a command started from a big process (torch imported, a model loaded) would
# report that process's peak as its own (os.wait4 and the command's own getrusage alike). Started from this small
# process (about 10 MB), it reports its own. SIGTERM (run_child's timeout or interrupt) kills the command.
_LAUNCHER = r"""
import json, os, signal, sys, time
report, cmd = sys.argv[1], sys.argv[2:]
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command gets a terminal's Ctrl-C itself
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # held until pid is known, so it always reaches the command
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        os.write(2, f"{cmd[0]}: {e}\n".encode())
    os._exit(127)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
_, status, ru = os.wait4(pid, 0)
with open(report, "w") as f:
    json.dump({"wall_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss}, f)
code = os.waitstatus_to_exitcode(status)
if code < 0:  # ended by a signal: end the same way, so the caller sees it
    if -code != signal.SIGKILL:
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def run_child(cmd: Sequence[str], *, env: Optional[dict] = None, threads: Optional[int] = None,
              timeout: Optional[float] = None, cwd: Optional[Path] = None, stdout: str = "capture",
              stderr: str = "capture") -> Child:
    """Run cmd to its end and measure it. env: variables added to this process's environment; threads: the thread
    count of its torch/MKL/OpenBLAS pools (thread_env); timeout: seconds before it is killed (SIGKILL).

    Its wall time, CPU and peak RSS come from os.wait4 in a small launcher process (_LAUNCHER says why). Captured
    output goes through temporary files, not pipes, so a child that writes a lot cannot block on a full pipe."""
    full_env = {**os.environ, **(env or {}), **(thread_env(threads) if threads else {})}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        report = Path(tmp) / "rusage.json"
        meter = LoadMeter()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), *map(str, cmd)], cwd=cwd,
                                env=full_env, stdout=_stream(stdout, out_f), stderr=_stream(stderr, err_f))
        try:
            proc.wait(timeout=timeout)
        except BaseException:  # the timeout, or Ctrl-C while waiting: the command goes too
            proc.terminate()
            proc.wait()
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise
        load = meter.read()
        usage = json.loads(report.read_text()) if report.exists() else {}
        out_f.seek(0)
        err_f.seek(0)
        text = (out_f.read().decode(errors="replace"), err_f.read().decode(errors="replace"))
    return Child(returncode=proc.returncode, stdout=text[0], stderr=text[1], wall_s=usage.get("wall_s", load.wall_s),
                 cpu_s=usage.get("cpu_s", 0.0), other_cpu_s=load.other_cpu_s,
                 peak_rss_mb=usage.get("maxrss_kib", 0) / 1024,  # KiB on Linux
                 timed_out=timeout is not None and load.wall_s >= timeout and proc.returncode == -signal.SIGKILL)


def live_memory_mb(pid: int) -> tuple[float, float]:
    """(peak RSS, current RSS) of a running process in MiB, from /proc/PID/status (VmHWM, VmRSS)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def start_server(models: Sequence, extra: Sequence[str], log: Path, ready: str, timeout_s: float,
                 poll_s: float) -> tuple[subprocess.Popen, str]:
    """`loraclf serve MODEL... --port P EXTRA...` in a child process on a free loopback port, once GET ready answers
    200; its output goes to log. Returns the process (the caller stops it) and the base URL."""
    import httpx  # only the serve benchmarks need it (loraclf[serve])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "loraclf", "serve", *map(str, models), "--port", str(port),
                                 *extra], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + ready, timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(poll_s)
    proc.kill()
    raise SystemExit(f"server did not start in {timeout_s:.0f} s")


def percentile_ms(latencies_s: Sequence[float], p: float) -> float:
    """The p-quantile (0..1) of latencies in seconds, nearest rank, in milliseconds."""
    lat = sorted(latencies_s)
    return lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))] * 1000


def hold_cpu_lock(path: str = CPU_LOCK) -> IO:
    """Block until this process holds the project's CPU lock; it is released when the process ends (or the file
    returned is closed)."""
    lock = open(path, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


# ------------------------------------------------------------------------------------------ the machine header


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def stop_time(hhmm: Optional[str]) -> Optional[datetime]:
    """--until HH:MM (UTC) as today's datetime; None without one."""
    if not hhmm:
        return None
    hh, mm = map(int, hhmm.split(":"))
    return datetime.now(timezone.utc).replace(hour=hh, minute=mm, second=0, microsecond=0)


def commit() -> str:
    """The checkout's short commit, and whether the measured code (src/loraclf, bench/*.py) has uncommitted
    changes; '?' outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src/loraclf", "bench/*.py"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
    return (head.stdout.strip() or "?") + (" + uncommitted changes" if dirty else "")


def command(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command line that ran a benchmark, as a reader would retype it (with OMP_NUM_THREADS where it was set)."""
    argv = sys.argv[1:] if argv is None else argv
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + shlex.join(["python", f"bench/{script}", *argv])


@dataclass(frozen=True)
class Machine:
    """What a results table says about where it was measured."""

    cpu: str
    flags: tuple[str, ...]  # those of ISA_FLAGS the CPU has
    cpu_threads: int
    native_bf16: bool
    gpu: Optional[str]
    torch: str
    python: str
    commit: str
    date: str


def machine() -> Machine:
    import torch  # on first use, as _device

    device = _device()
    return Machine(cpu=device.cpu_name(), flags=tuple(f for f in ISA_FLAGS if f in device.cpu_flags()),
                   cpu_threads=os.cpu_count() or 0, native_bf16=device.bf16_supported("cpu"),
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                   torch=torch.__version__, python=platform.python_version(), commit=commit(), date=utc_now())


def load_lines(loads: Iterable[Optional[Load]], what: str = "run", timings: bool = True) -> list[str]:
    """The load of a measurement: one span, or the worst of several runs. On a busy machine a timing benchmark's
    table says its timings are not results; a benchmark whose results are accuracies (timings=False) says that its
    times measure nothing about speed."""
    loads = [x for x in loads if x is not None]
    if not loads:
        return ["- Load: CPU time of other processes not measured."]
    if len(loads) == 1:
        lines = [f"- Load: other processes used {loads[0].other_cpu_s:,.1f} CPU s during the {loads[0].wall_s:,.0f} s "
                 f"of {what} ({loads[0].share:.0%} of one core; /proc/stat less this benchmark's own)."]
    else:
        lines = [f"- Load: CPU time other processes used while a {what} ran (/proc/stat less the {what}'s own): at "
                 f"most {max(x.other_cpu_s for x in loads):,.1f} s in one {what}, "
                 f"{max(x.share for x in loads):.0%} of a {what}'s wall time at most."]
    worst = max(x.share for x in loads)
    if worst > BUSY_SHARE:
        verdict = ("these timings are not results" if timings else
                   "its times measure nothing about speed; the other columns do not depend on them")
        lines.append(f"- **The machine was busy** (other processes used up to {worst:.0%} of "
                     f"{'the' if len(loads) == 1 else 'a'} {what}'s wall time): {verdict}.")
    return lines


def machine_lines(loads: Iterable[Optional[Load]] = (), what: str = "run", m: Optional[Machine] = None,
                  timings: bool = True) -> list[str]:
    """The header every results table carries: the machine, the code and date, and the machine's load (load_lines)."""
    m = m or machine()
    flags = ", ".join(m.flags) if m.flags else f"none of {', '.join(ISA_FLAGS)}"
    return [f"- Machine: {m.cpu}, {m.cpu_threads} CPU threads, CPU flags {flags}, native CPU bf16: {m.native_bf16}, "
            f"{m.gpu or 'no GPU'}; torch {m.torch}, Python {m.python}.",
            f"- Code: commit {m.commit}; written {m.date}."] + load_lines(loads, what, timings)


# ------------------------------------------------------------------------------------------ tables and files


def md_row(cells: Iterable) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_table(columns: Sequence[str], rows: Iterable[Sequence] = (), align: str = "") -> list[str]:
    """A Markdown table: header, separator, then one line per row. align: one letter per column, 'l' or 'r'
    (missing letters: 'l')."""
    seps = ["---:" if a == "r" else "---" for a in align.ljust(len(columns), "l")]
    return [md_row(columns), md_row(seps)] + [md_row(r) for r in rows]


def median(xs: Iterable) -> Optional[float]:
    """The median of the values that are not None; None when there are none."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def write_text(path: Path, text: str) -> None:
    """Write a result file whole or not at all (a reader never sees half a table)."""
    atomic_write_text(path, text)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a .jsonl file; none when it does not exist."""
    path = Path(path)
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
