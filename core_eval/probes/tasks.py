"""The shipped lm-eval probe tasks (``task_configs/core_*.yaml``) as probe sets.

A visual probe task names its generator in ``dataset_kwargs``: ``probe_family``, ``probe_knobs``,
``probe_seed`` (the evaluation seed, 1000) and ``probe_n``. :func:`resolve_probes` turns a task
name into its family and knobs, so RAM scoring can use exactly the evaluated layout; the seed is
never taken from the task (heads should be scored on other samples than the evaluation's).

A data-source task (``custom_dataset: !function utils.source_dataset``) evaluates on
``probe_source`` (``hf:...``, ``coco:...``, a JSONL) with reader options ``probe_options``;
``--probes <task>`` scores on its ``probe_score_source`` (another split), so heads are not chosen
on the evaluated rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from core_eval.probes.families import PROBE_FAMILIES
from core_eval.probes.types import ProbeArgumentError

__all__ = ["ProbeTask", "probe_tasks", "source_tasks", "resolve_probes"]

#: ``custom_dataset`` of the tasks whose samples carry images (``!function utils.probe_dataset``).
VISUAL_DATASET = "utils.probe_dataset"
#: ``custom_dataset`` of the tasks that read a dataset (``!function utils.source_dataset``).
SOURCE_DATASET = "utils.source_dataset"


@dataclass(frozen=True)
class ProbeTask:
    """One visual probe task: generator family, evaluation seed (``probe_seed``), size and knobs.

    For a data-source task ``family`` is the source that scoring reads (``probe_score_source``),
    ``source`` the evaluated one and ``knobs`` the reader options."""

    name: str
    family: str
    eval_seed: int
    n: int | None
    knobs: dict = field(default_factory=dict)
    source: str | None = None


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
def _catalog(folder: str) -> tuple[dict[str, ProbeTask], dict[str, str], dict[str, ProbeTask]]:
    """``(visual probe tasks, {other task or group name: why it is not one}, data-source tasks)``
    of ``folder``."""
    tasks: dict[str, ProbeTask] = {}
    other: dict[str, str] = {}
    sources: dict[str, ProbeTask] = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        cfg = _read_yaml(path)
        if "group" in cfg:
            other[cfg["group"]] = f"a task group; score one of its tasks ({', '.join(cfg.get('task') or [])})"
        elif cfg.get("custom_dataset") == SOURCE_DATASET:
            kw = cfg.get("dataset_kwargs") or {}
            if kw.get("probe_score_source") or kw.get("probe_source"):
                sources[cfg["task"]] = ProbeTask(cfg["task"], kw.get("probe_score_source") or kw["probe_source"],
                                                 int(kw.get("probe_seed", 0)), kw.get("probe_n"),
                                                 dict(kw.get("probe_options") or {}), kw.get("probe_source"))
            else:
                other[cfg["task"]] = ("a task that reads its data from --metadata core_probe_source; pass that "
                                      "source itself to --probes (hf:<path-or-id>[:split], coco:<instances.json> "
                                      "or a JSONL path)")
        elif cfg.get("custom_dataset") != VISUAL_DATASET:
            other[cfg.get("task", path.stem)] = "a text-only task: it shows no image to score RAM on"
        else:
            kw = cfg.get("dataset_kwargs") or {}
            tasks[cfg["task"]] = ProbeTask(cfg["task"], kw["probe_family"], int(kw.get("probe_seed", 0)),
                                           int(kw.get("probe_n", 100)), dict(kw.get("probe_knobs") or {}))
    return tasks, other, sources


def _shipped() -> tuple[dict[str, ProbeTask], dict[str, str], dict[str, ProbeTask]]:
    """:func:`_catalog` of the task folder shipped in :func:`core_eval.resources.tasks_dir`."""
    from core_eval.resources import tasks_dir

    return _catalog(str(tasks_dir()))


def probe_tasks() -> dict[str, ProbeTask]:
    """The visual probe tasks shipped with the package, by name."""
    return dict(_shipped()[0])


def source_tasks() -> dict[str, ProbeTask]:
    """The shipped tasks that evaluate on a dataset source (RefCOCO, ...), by name."""
    return dict(_shipped()[2])


def resolve_probes(name: str, knobs: dict | None = None) -> tuple[str, dict, ProbeTask | None]:
    """``(family or path, knobs, task)`` for a ``--probes`` value.

    A probe task name gives its family and its YAML knobs, updated key by key with ``knobs``;
    a family name or a path passes through unchanged (``task`` is ``None``). A non-visual task or
    group name is an error saying why.
    """
    knobs = dict(knobs or {})
    if name in PROBE_FAMILIES:
        return name, knobs, None
    tasks, other, sources = _shipped()
    if name in tasks or name in sources:
        t = tasks.get(name) or sources[name]
        return t.family, {**t.knobs, **knobs}, t
    if name in other:
        raise ProbeArgumentError(f"{name!r} is {other[name]}; visual probe tasks: {', '.join(sorted(tasks))}")
    return name, knobs, None


def probes_help() -> str:
    """One line naming the accepted ``--probes`` values (for error messages)."""
    tasks, _, sources = _shipped()
    return (f"probe families: {', '.join(sorted(PROBE_FAMILIES))}; probe tasks: {', '.join(sorted(tasks))}; "
            f"dataset tasks: {', '.join(sorted(sources))}")
