"""Turn RUN arguments into :class:`~core_eval.report.run.Run` objects through a registry of harness readers.

Built in: ``lm_eval`` (:mod:`~core_eval.report.lm_eval_reader`), ``vlmeval``
(:mod:`~core_eval.report.vlmeval_reader`) and ``lmms_eval`` (:mod:`~core_eval.report.lmms_eval_reader`).
Another harness is one
:class:`Reader` passed to :func:`register_reader`: a ``detect(path) -> bool`` that is cheap and
never raises, and a ``read(arg, timestamp=None) -> list[Run]`` whose runs set ``source`` to the
reader's name and name each task by its sample key (:func:`~core_eval.report.sample_keys.sample_key`)
so its runs join those of the other harnesses. ``--source auto`` tries the readers in registration
order and reads with every one that detects output (an ``--output_path`` root may hold lm-eval and
lmms-eval runs side by side); ``--source NAME`` uses one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from core_eval.report.errors import EmptyRunError, ReportError
from core_eval.report.lm_eval_reader import find_results, read_lm_eval, split_run_arg
from core_eval.report.lmms_eval_reader import find_lmms_results, read_lmms_eval
from core_eval.report.run import Run
from core_eval.report.vlmeval_reader import is_vlmeval_dir, read_vlmeval

#: The built-in choices of ``source`` (more come with :func:`register_reader`).
SOURCES = ("auto", "lm_eval", "vlmeval", "lmms_eval")


@dataclass(frozen=True)
class Reader:
    """One harness's output reader. ``hint``: the layout it expects, for error messages."""

    name: str
    detect: Callable[[Path], bool]
    read: Callable[..., list[Run]]
    hint: str = ""


READERS: dict[str, Reader] = {}


def register_reader(reader: Reader, *, replace: bool = False) -> Reader:
    """Add a harness reader (see the module doc). A name taken by another reader is an error unless ``replace``."""
    if reader.name == "auto":
        raise ReportError("a reader cannot be called 'auto' (that is the detection mode)")
    if reader.name in READERS and not replace and READERS[reader.name] is not reader:
        raise ReportError(f"a reader named {reader.name!r} is already registered; pass replace=True to override it")
    READERS[reader.name] = reader
    return reader


def _lm_eval_detect(path: Path) -> bool:
    try:
        find_results(path)
        return True
    except EmptyRunError:
        return False


register_reader(Reader(
    "lm_eval", _lm_eval_detect, lambda arg, timestamp=None: read_lm_eval(arg, timestamp=timestamp),
    "an lm-eval --output_path folder: OUTPUT_PATH/<model>/results_<timestamp>.json"))
register_reader(Reader(
    "vlmeval", lambda p: p.exists() and is_vlmeval_dir(p),
    lambda arg, timestamp=None: read_vlmeval(arg, eval_id=timestamp),
    "a VLMEvalKit work dir: WORK_DIR/<model>/[<eval_id>/]<model>_<dataset>.xlsx|tsv|csv"))
register_reader(Reader(
    "lmms_eval", lambda p: p.exists() and bool(find_lmms_results(p)), lambda arg, timestamp=None: read_lmms_eval(arg),
    "an lmms-eval --output_path folder: OUTPUT_PATH/<model>/<date>_results.json"))


def load_run(arg: str | os.PathLike | Run, *, source: str = "auto", timestamp: str | None = None,
             all_results: bool = True) -> list[Run]:
    """All runs one RUN argument stands for (a folder may hold several models and several runs per model).

    ``all_results`` is kept for old callers: every results file is read in any case (pass
    ``FOLDER@TIMESTAMP`` or the file to read one); ``False`` reads only the newest file per folder.
    """
    if isinstance(arg, Run):
        return [arg]
    if source not in ("auto", *READERS):
        raise ReportError(f"source={source!r}: use one of auto, {', '.join(READERS)}")
    path, ts = split_run_arg(arg)
    timestamp = timestamp or ts
    if source == "auto":
        if not path.exists():
            raise EmptyRunError(f"{path}: no such file or folder")
        if path.is_dir() and not any(path.iterdir()):
            raise EmptyRunError(f"{path}: empty folder (no lm-eval, lmms-eval or VLMEvalKit output)")
        if path.is_file() and path.name.startswith("samples_") and path.suffix == ".jsonl":
            find_results(path)  # raises the lm-eval reader's own message
        hits = [r.name for r in READERS.values() if r.detect(path)]
        if not hits:
            raise EmptyRunError(f"{path}: no harness output found. Expected "
                                + "; or ".join(r.hint or r.name for r in READERS.values()) + ".")
    else:
        hits = [source]
    runs = []
    for name in hits:
        if name == "lm_eval" and not all_results:
            runs += read_lm_eval(path, timestamp=timestamp, all_results=False)
        else:
            runs += READERS[name].read(path, timestamp=timestamp)
    for r in runs:
        r.arg = os.fspath(path)
    return runs


def load_runs(args: Iterable[str | os.PathLike | Run], **kwargs) -> list[Run]:
    """:func:`load_run` over several arguments; a results file named twice is read once."""
    out, seen = [], set()
    for a in args:
        for run in load_run(a, **kwargs):
            key = Path(run.path).resolve()
            if key in seen:
                continue
            seen.add(key)
            out.append(run)
    return out


def uniquify_names(runs: list[Run]) -> None:
    """Make run names unique in place: colliding names get their output folder, then ``#k``, prefixed."""
    def dupes():
        counts: dict[str, int] = {}
        for r in runs:
            counts[r.name] = counts.get(r.name, 0) + 1
        return {n for n, c in counts.items() if c > 1}

    clash = dupes()
    for r in runs:
        if r.name in clash:
            p = Path(r.path)
            root = (p.parent.parent if p.is_file() else p.parent).name
            r.name = f"{root}/{r.name}"
    clash = dupes()
    seen: dict[str, int] = {}
    for r in runs:
        if r.name in clash:
            seen[r.name] = seen.get(r.name, 0) + 1
            if seen[r.name] > 1:
                r.name = f"{r.name}#{seen[r.name]}"
