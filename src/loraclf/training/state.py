"""Everything the loop needs to continue exactly where it stopped, saved in each checkpoint's state.json."""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass
from typing import Optional


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_in_epoch: int = 0  # the data position in rows, so N processes' checkpoint resumes in M
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    bad_evals: int = 0
    train_time: float = 0.0
    stopped_early: bool = False
    # the running train-loss average between two log lines, so a resumed log line equals the original
    window_loss: float = 0.0
    window_n: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def restore(self, saved: dict, rows_per_batch: int) -> None:
        """Take a checkpoint's state.json (older ones have no samples_in_epoch: it follows from the batches)."""
        names = {f.name for f in dataclasses.fields(self)}
        for k, v in saved.items():
            if k in names:
                setattr(self, k, v)
        if "samples_in_epoch" not in saved:
            self.samples_in_epoch = self.batches_in_epoch * rows_per_batch


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during training, after a checkpoint was saved; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(signal.Signals(signum).name)


class StopSignals:
    """SIGINT/SIGTERM are taken at a step boundary: the step finishes, a checkpoint is saved, the run stops.

    `received` is a signal this process got; `signal` the one acted on, the same in every process (a process may get
    its signal in the middle of a collective, another one not at all). A second signal stops at once.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.signal: Optional[int] = None
        self._old: dict = {}

    def _on_signal(self, signum, frame) -> None:
        if self.received is not None:  # a second signal: stop now; the newest complete checkpoint stays valid
            raise Interrupted(signum)
        self.received = signum

    def __enter__(self) -> "StopSignals":
        for s in (signal.SIGINT, signal.SIGTERM):  # in every process: Ctrl-C reaches the whole process group
            try:
                self._old[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread (e.g. inside a server)
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def agree(self, accelerator) -> Optional[int]:
        """At a step boundary: the signal every process acts on (all stop at the same step, whichever got it)."""
        import torch

        if accelerator.num_processes > 1:
            flag = torch.tensor([self.received or 0], device=accelerator.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            self.signal = int(flag.item()) or None
        else:
            self.signal = self.received
        return self.signal
