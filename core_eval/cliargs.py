"""Command-line pieces shared by ``core-eval`` and the scoring CLIs (harness-free, imports nothing of ours)."""

from __future__ import annotations

from pathlib import Path


def add_output_arguments(parser) -> None:
    """``--out`` (required) or ``--in-place`` for commands that write a head spec derived from their input."""
    parser.add_argument("--out", default=None, help="spec to write (required unless --in-place)")
    parser.add_argument("--in-place", action="store_true", help="overwrite the input spec instead of --out")


def output_path(spec, out, in_place: bool, cmd: str):
    """Where ``select`` / ``causal`` write: ``--out``, or the input spec itself only with ``--in-place``
    (never overwritten silently)."""
    if out is not None and in_place:
        raise ValueError("give --out or --in-place, not both")
    if out is None and not in_place:
        raise ValueError(f"core-eval {cmd} writes a new spec: pass --out PATH (e.g. --out "
                         f"{Path(spec).with_suffix('')}_{cmd}.json), or --in-place to overwrite {spec}")
    if out is not None and Path(out).resolve() == Path(spec).resolve():
        raise ValueError(f"--out {out} is the input spec; pass --in-place to overwrite it")
    return Path(spec) if in_place else Path(out)


