"""Turn RUN arguments into :class:`~core_eval.report.run.Run` objects (lm-eval, lmms-eval or VLMEvalKit,
detected)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from core_eval.report.errors import EmptyRunError
from core_eval.report.lm_eval_reader import find_results, read_lm_eval, split_run_arg
from core_eval.report.lmms_eval_reader import find_lmms_results, read_lmms_eval
from core_eval.report.run import Run
from core_eval.report.vlmeval_reader import is_vlmeval_dir, read_vlmeval

SOURCES = ("auto", "lm_eval", "lmms_eval", "vlmeval")


def load_run(arg: str | os.PathLike | Run, *, source: str = "auto", timestamp: str | None = None,
             all_results: bool = False) -> list[Run]:
    """All runs one RUN argument stands for (a folder may hold several models)."""
    if isinstance(arg, Run):
        return [arg]
    runs = _load_run(arg, source=source, timestamp=timestamp, all_results=all_results)
    for r in runs:
        r.arg = os.fspath(split_run_arg(arg)[0])
    return runs


def _load_run(arg, *, source: str, timestamp: str | None, all_results: bool) -> list[Run]:
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: use one of {', '.join(SOURCES)}")
    if source == "lm_eval":
        return read_lm_eval(arg, timestamp=timestamp, all_results=all_results)
    if source == "vlmeval":
        return read_vlmeval(arg, eval_id=timestamp)
    if source == "lmms_eval":
        return read_lmms_eval(arg)
    path, _ = split_run_arg(arg)
    lmms = read_lmms_eval(path) if path.exists() and find_lmms_results(path) else []
    try:
        find_results(arg, timestamp=timestamp, all_results=all_results)
    except EmptyRunError as lm_error:
        if lmms:
            return lmms
        if path.exists() and is_vlmeval_dir(path):
            return read_vlmeval(arg, eval_id=timestamp)
        if path.is_dir() and not any(path.iterdir()):
            raise EmptyRunError(f"{path}: empty folder (no lm-eval or VLMEvalKit output)") from None
        raise EmptyRunError(f"{lm_error} Nor is it a VLMEvalKit work dir (WORK_DIR/<model>/[<eval_id>/]"
                            f"<model>_<dataset>.xlsx|tsv|csv), nor an lmms-eval output folder "
                            f"(OUTPUT_PATH/<model>/<date>_results.json).") from None
    return lmms + read_lm_eval(arg, timestamp=timestamp, all_results=all_results)


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
