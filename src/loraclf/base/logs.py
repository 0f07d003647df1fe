"""The one logging path: the standard `logging` module, one line per message on stderr.

Every module logs through `logging.getLogger(__name__)` (children of the `loraclf` logger). `configure()` installs
the one handler, which prints `[loraclf] message`; `quiet()` silences progress lines for a block (sweep trials,
self-training rounds, `--quiet`). Errors are not logged here: the CLI prints them as its one error line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator

ROOT = "loraclf"
FORMAT = "[loraclf] %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest's capture, a notebook's stream), not the one at import.

    While `held()` is active, records wait in `held` instead of being written.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.held: list[logging.LogRecord] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
            return
        self.stream = sys.stderr
        super().emit(record)


def _handler() -> _StderrHandler:
    configure(logging.getLogger(ROOT).level or logging.INFO)
    return next(h for h in logging.getLogger(ROOT).handlers if isinstance(h, _StderrHandler))


def configure(level: int = logging.INFO) -> logging.Logger:
    """Install the one-line stderr handler on the `loraclf` logger (once), and set its level."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def get(name: str) -> logging.Logger:
    """A module's logger; the handler is installed on first use, so library calls log without any set-up."""
    configure(logging.getLogger(ROOT).level or logging.INFO)
    return logging.getLogger(name)


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Silence info lines from every loraclf module inside the block (warnings still show)."""
    logger = logging.getLogger(ROOT)
    old = logger.level
    if enabled:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


@contextlib.contextmanager
def held(drop_on: type[BaseException] | tuple = Exception) -> Iterator[None]:
    """Hold progress lines until the block ends: written then, or dropped when it raises `drop_on`.

    Set-up that can still fail on bad input runs inside it, so a refused run shows its one error line alone.
    """
    handler = _handler()
    if handler.held is not None:  # an outer block decides
        yield
        return
    handler.held = []
    try:
        yield
    except drop_on:
        handler.held = None
        raise
    except BaseException:
        records, handler.held = handler.held, None
        for r in records:
            handler.emit(r)
        raise
    records, handler.held = handler.held, None
    for r in records:
        handler.emit(r)


def sink(log: Callable[[str], None] | None, logger: logging.Logger) -> Callable[[str], None]:
    """A caller's own message sink (tests, the sweep's prefix), else the module's logger."""
    return log if log is not None else logger.info


def show_progress(wanted: bool = True) -> bool:
    """Whether to draw a progress bar: wanted, not inside `quiet()`, and stderr a terminal or a Jupyter kernel
    (tqdm.auto draws a widget there; a pipe or a log file gets no bar)."""
    if not wanted or logging.getLogger(ROOT).level > logging.INFO:
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules
