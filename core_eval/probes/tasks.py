"""The shipped lm-eval probe tasks (``task_configs/core_*.yaml``) as probe sets.

A visual probe task names its generator in ``dataset_kwargs``: ``probe_family``, ``probe_knobs``,
``probe_seed`` (the evaluation seed, 1000) and ``probe_n``. :func:`resolve_probes` turns a task
name into its family and knobs, so RAM scoring can use exactly the evaluated layout; the seed is
never taken from the task (heads should be scored on other samples than the evaluation's).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from core_eval.probes.families import PROBE_FAMILIES
from core_eval.probes.types import ProbeArgumentError

__all__ = ["ProbeTask", "probe_tasks", "resolve_probes"]

#: ``custom_dataset`` of the tasks whose samples carry images (``!function utils.probe_dataset``).
VISUAL_DATASET = "utils.probe_dataset"


@dataclass(frozen=True)
class ProbeTask:
    """One visual probe task: generator family, evaluation seed (``probe_seed``), size and knobs."""

    name: str
    family: str
    eval_seed: int
    n: int
    knobs: dict = field(default_factory=dict)


def _read_yaml(path: Path) -> dict:
    """A task YAML with its ``include`` merged in; ``!function x`` tags read as the string ``x``."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, tag, node: loader.construct_scalar(node))
    data = yaml.load(path.read_text(), Loader=Loader) or {}
    if "include" in data:
        data = {**_read_yaml(path.parent / data.pop("include")), **data}
    return data


@functools.lru_cache(maxsize=None)
def _catalog(folder: str) -> tuple[dict[str, ProbeTask], dict[str, str]]:
    """``(visual probe tasks, {other task or group name: why it is not one})`` of ``folder``."""
    tasks: dict[str, ProbeTask] = {}
    other: dict[str, str] = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        cfg = _read_yaml(path)
        if "group" in cfg:
            other[cfg["group"]] = f"a task group; score one of its tasks ({', '.join(cfg.get('task') or [])})"
        elif cfg.get("custom_dataset") != VISUAL_DATASET:
            other[cfg.get("task", path.stem)] = "a text-only task: it shows no image to score RAM on"
        else:
            kw = cfg.get("dataset_kwargs") or {}
            tasks[cfg["task"]] = ProbeTask(cfg["task"], kw["probe_family"], int(kw.get("probe_seed", 0)),
                                           int(kw.get("probe_n", 100)), dict(kw.get("probe_knobs") or {}))
    return tasks, other


def _shipped() -> tuple[dict[str, ProbeTask], dict[str, str]]:
    """:func:`_catalog` of the task folder shipped in :func:`core_eval.resources.tasks_dir`."""
    from core_eval.resources import tasks_dir

    return _catalog(str(tasks_dir()))


def probe_tasks() -> dict[str, ProbeTask]:
    """The visual probe tasks shipped with the package, by name."""
    return dict(_shipped()[0])


def resolve_probes(name: str, knobs: dict | None = None) -> tuple[str, dict, ProbeTask | None]:
    """``(family or path, knobs, task)`` for a ``--probes`` value.

    A probe task name gives its family and its YAML knobs, updated key by key with ``knobs``;
    a family name or a path passes through unchanged (``task`` is ``None``). A non-visual task or
    group name is an error saying why.
    """
    knobs = dict(knobs or {})
    if name in PROBE_FAMILIES:
        return name, knobs, None
    tasks, other = _shipped()
    if name in tasks:
        t = tasks[name]
        return t.family, {**t.knobs, **knobs}, t
    if name in other:
        raise ProbeArgumentError(f"{name!r} is {other[name]}; visual probe tasks: {', '.join(sorted(tasks))}")
    return name, knobs, None


def probes_help() -> str:
    """One line naming the accepted ``--probes`` values (for error messages)."""
    tasks = _shipped()[0]
    return f"probe families: {', '.join(sorted(PROBE_FAMILIES))}; probe tasks: {', '.join(sorted(tasks))}"
