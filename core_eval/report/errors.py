"""Errors of the reporter. All are ``ValueError`` subclasses, so ``core-eval`` prints them without a traceback."""

from __future__ import annotations

from pathlib import Path


class ReportError(ValueError):
    """Base class: the inputs cannot be reported as given (the message says what to fix)."""


class EmptyRunError(ReportError):
    """A RUN path holds no harness output."""


class CorruptFileError(ReportError):
    """A results / samples / speed file cannot be parsed. Names the file and, where known, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        self.detail = message
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class MismatchError(ReportError):
    """Runs that cannot be compared (different models, no common tasks, ...)."""


class NothingPairsError(MismatchError):
    """Two runs share a task but not a single sample pairs up."""


class MissingBaselineError(ReportError):
    """A run has no unmodified baseline of the same model to be compared against."""
