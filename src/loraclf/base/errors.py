"""The tool's own error types. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations

import difflib


class LoraclfError(Exception):
    """A problem with the user's input that the user can fix. Printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(LoraclfError):
    """One or more problems in a config; all are collected and reported together."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class DataError(LoraclfError):
    """A data file or column that cannot be used as given."""


class ModelError(LoraclfError):
    """A model path, architecture or adapter setting that cannot be used."""


class RunError(LoraclfError):
    """A run folder that is missing, incomplete or cannot be written."""


class BudgetError(LoraclfError):
    """An adapter that does not fit under budget.max_trainable_params."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
