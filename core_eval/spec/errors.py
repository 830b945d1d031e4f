"""The one error type of :mod:`core_eval.spec`."""

from __future__ import annotations


class HeadSpecError(ValueError):
    """A head spec (or a selection request) is invalid.

    The message reads ``"<source>: <problem>. Fix: <fix>"``: which file (or ``<head spec>`` for an
    in-memory spec, omitted for pure selection arguments), what is wrong, and what to do.

    Attributes:
        problem: what is wrong, in words.
        fix: what to do about it (may be ``None``).
        source: file path (as a string) the spec came from, or ``None``.
    """

    def __init__(self, problem: str, fix: str | None = None, source: str | None = None):
        self.problem = problem
        self.fix = fix
        self.source = source
        msg = problem if source is None else f"{source}: {problem}"
        if fix:
            msg = f"{msg}. Fix: {fix}"
        super().__init__(msg)

    def with_source(self, source: str | None) -> "HeadSpecError":
        """The same error, attributed to ``source`` (kept if it already names one)."""
        if self.source is not None or source is None:
            return self
        return HeadSpecError(self.problem, self.fix, source)
