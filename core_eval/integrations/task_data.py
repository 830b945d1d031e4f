"""Before ``core_hf`` loads weights: can lm-eval reach the datasets of the requested tasks?

lm-eval builds the model before it loads its tasks (``lm_eval.evaluator.simple_evaluate``), so a
task whose dataset lives on the Hugging Face hub (``chartqa``, ``mmmu_val``, ...) fails offline only
after the checkpoint has loaded, with a ``datasets`` connection error that names no task. ``core_hf``
reads the task list from that ``simple_evaluate`` call (lm-eval gives a model no other view of it)
and stops first, naming each unreachable task, its dataset and the fix.

A dataset counts as reachable when it is a local path, is in the ``datasets`` or hub cache, or the
hub answers (checked once, with a short timeout, only when something is missing from the caches).
The probe tasks of ``core-eval tasks-path`` build their samples locally (``custom_dataset``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


class TaskDataError(RuntimeError):
    """A requested lm-eval task reads a hub dataset that this machine cannot reach."""


def requested_tasks() -> tuple[list, object] | None:
    """``(tasks, task_manager)`` of the ``lm_eval.evaluator.simple_evaluate`` call that is building
    this model, or ``None`` when the model is built some other way (then nothing is checked)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "simple_evaluate" and frame.f_globals.get("__name__") == "lm_eval.evaluator":
            return list(frame.f_locals.get("tasks") or []), frame.f_locals.get("task_manager")
        frame = frame.f_back
    return None


def hub_datasets(tasks: list, task_manager) -> dict[str, str]:
    """task name -> ``dataset_path`` for every (sub)task of ``tasks`` that reads a dataset by name
    (groups and tags expanded through lm-eval's own task index)."""
    from lm_eval.tasks._index import Kind

    index = task_manager.task_index
    out: dict[str, str] = {}

    def visit(item, seen: frozenset):
        if isinstance(item, dict):  # an inline config
            cfg, name = item, str(item.get("task", "?"))
        else:
            name = str(item)
            entry = index.get(name)
            if entry is None or name in seen:
                return  # an unknown name is lm-eval's own error; a cycle is visited once
            seen = seen | {name}
            if entry.kind == Kind.TAG:
                for sub, e in index.items():
                    if name in e.tags:
                        visit(sub, seen)
                return
            cfg = entry.cfg or {}
            if entry.kind == Kind.GROUP:
                for sub in cfg.get("task") or []:
                    visit(sub, seen)
                return
        path = cfg.get("dataset_path")
        if isinstance(path, str) and path and "custom_dataset" not in cfg and not Path(path).expanduser().exists():
            out[name] = path

    for t in tasks:
        visit(t, frozenset())
    return out


def _cached(path: str) -> bool:
    """A copy of hub dataset ``path`` in the ``datasets`` cache or the hub cache."""
    import datasets.config
    from huggingface_hub import constants

    return (any(Path(datasets.config.HF_DATASETS_CACHE).glob(path.replace("/", "___") + "*"))
            or (Path(constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}").is_dir())


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
        return True, ""
    except OSError as e:
        return False, f"{constants.ENDPOINT} is unreachable ({e.__class__.__name__})"


def check_task_data(tasks: list, task_manager) -> None:
    """Raise :class:`TaskDataError` naming every task whose hub dataset is neither cached nor
    reachable; return silently otherwise."""
    if task_manager is None:
        from lm_eval.tasks import TaskManager

        task_manager = TaskManager()
    missing = {t: p for t, p in hub_datasets(tasks, task_manager).items() if not _cached(p)}
    if not missing:
        return
    ok, why = _hub_reachable()
    if ok:
        return  # lm-eval downloads them
    by_data: dict[str, list[str]] = {}
    for t, p in sorted(missing.items()):
        by_data.setdefault(p, []).append(t)
    listed = "; ".join(f"{p} (task {', '.join(ts[:4])}{f' and {len(ts) - 4} more' if len(ts) > 4 else ''})"
                       for p, ts in by_data.items())
    raise TaskDataError(
        f"core_hf: {len(missing)} task(s) read a Hugging Face hub dataset that is not in the local cache, "
        f"and {why}: {listed}. Nothing was loaded. Fix: run once online (or `datasets.load_dataset(...)` the "
        "dataset on a machine with access and copy HF_HOME), or drop these tasks; the core-eval probe "
        "tasks (`core-eval tasks-path`) need no download.")


def check_requested_task_data() -> None:
    """:func:`check_task_data` on the tasks of the running ``simple_evaluate``, if any."""
    found = requested_tasks()
    if found is not None:
        check_task_data(*found)
