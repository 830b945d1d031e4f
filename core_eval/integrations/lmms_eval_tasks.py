"""The probe tasks for lmms-eval, derived from the lm-eval catalog (``task_configs/``).

``lmms-eval --tasks core_grid_needle --include_path "$(core-eval tasks-path --harness lmms-eval)"``

Every visual probe task of the lm-eval catalog (image and document families) becomes an lmms-eval
task with the same samples (the same generator, knobs, seed and n: the YAML's
``dataset_kwargs``), the same question text (lm-eval's ``doc_to_text`` without its ``<image>``
placeholders: lmms-eval models place the visuals themselves), the same metrics
(``process_results`` and ``metric_list``) and generation settings (``max_gen_toks`` ->
``max_new_tokens``); groups follow. :data:`VIDEO_TASKS` adds the video families, which lm-eval
cannot run: their docs name mp4 files (written once, next to the tasks) that the lmms-eval
model reads itself. Doc ``i`` of a task is doc ``i`` of its lm-eval twin, so runs of both
harnesses pair by doc id (``core_eval.report``).

lmms-eval 0.7.3 has no ``custom_dataset`` hook: a task loads a one-row stub JSON file
(``dataset_path: json``) and its ``process_docs`` generates the docs. The folder is written by
:func:`write_tasks` (atomically: temporary folder + rename) under a cache directory keyed by the
core-eval version and the catalog's content, so the YAMLs' absolute stub paths stay valid.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from core_eval.probes.tasks import _read_yaml, probe_tasks
from core_eval.resources import tasks_dir

#: lmms-eval-only probe tasks (lm-eval has no video input): name -> (family, n, seed, knobs).
VIDEO_TASKS = {
    "core_video_needle": ("video_needle", 100, 1000, {}),
}
VIDEO_GROUP = "core_video_probes"
#: lm-eval ``!function utils.X`` names the lmms-eval utils module provides under the same name.
_FUNCTIONS = ("doc_to_text", "doc_to_text_plain", "process_results", "rec_results")


@functools.cache
def lm_eval_utils():
    """``task_configs/utils.py`` (loaded by path, as lm-eval does): the one declaration of the
    prompts and metrics both harnesses use."""
    path = tasks_dir() / "utils.py"
    spec = importlib.util.spec_from_file_location("core_eval_task_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _strip(name: str | None) -> str | None:
    return name.split(".", 1)[1] if isinstance(name, str) and name.startswith("utils.") else name


def task_config(name: str) -> dict:
    """The lmms-eval config of lm-eval probe task ``name`` (``!function`` values as
    ``"utils.<fn>"`` strings, turned into tags by :func:`write_tasks`)."""
    cfg = _read_yaml(tasks_dir() / f"{name}.yaml")
    gen = dict(cfg.get("generation_kwargs") or {})
    if "max_gen_toks" in gen:
        gen["max_new_tokens"] = gen.pop("max_gen_toks")
    for key in ("doc_to_text", "process_results"):
        if _strip(cfg.get(key)) not in _FUNCTIONS:
            raise ValueError(f"{name}: {key}={cfg.get(key)!r} has no lmms-eval counterpart ({_FUNCTIONS})")
    return {
        "task": name, "dataset_path": "json", "test_split": "test", "output_type": cfg["output_type"],
        "process_docs": f"utils.docs_{name}", "doc_to_visual": "utils.doc_to_visual",
        "doc_to_text": f"utils.{_strip(cfg['doc_to_text'])}", "doc_to_target": cfg["doc_to_target"],
        "process_results": f"utils.{_strip(cfg['process_results'])}", "generation_kwargs": gen,
        "metric_list": cfg["metric_list"],
        "metadata": {**(cfg.get("metadata") or {}), "core_eval": {"lm_eval_task": name, **cfg["dataset_kwargs"]}},
    }


def video_task_config(name: str) -> dict:
    family, n, seed, knobs = VIDEO_TASKS[name]
    base = task_config("core_grid_needle")
    return {**base, "task": name, "process_docs": f"utils.docs_{name}",
            "metadata": {"version": 1.0, "core_eval": {"probe_family": family, "probe_n": n, "probe_seed": seed,
                                                       "probe_knobs": knobs}}}


def catalog() -> tuple[dict[str, dict], dict[str, list[str]]]:
    """``({task: lmms-eval config}, {group: tasks})`` for every image, document and video task."""
    tasks = {name: task_config(name) for name in sorted(probe_tasks())}
    tasks.update({name: video_task_config(name) for name in VIDEO_TASKS})
    groups = {VIDEO_GROUP: sorted(VIDEO_TASKS)}
    for path in sorted(tasks_dir().glob("*.yaml")):
        cfg = _read_yaml(path)
        if "group" in cfg:
            members = [t for t in cfg.get("task") or [] if t in tasks]
            if members:
                groups[cfg["group"]] = members
    return tasks, groups


# ----------------------------------------------------------------------------- docs (run time)

def docs(name: str, stub=None):
    """The docs of task ``name`` as a ``datasets.Dataset`` (``stub``, the loaded stub file, is
    ignored). Image tasks: lm-eval's ``probe_dataset`` columns; video tasks: the same columns
    with ``images`` empty and ``videos`` (mp4 paths, written on first use)."""
    if name in VIDEO_TASKS:
        return _video_docs(name)
    kwargs = _read_yaml(tasks_dir() / f"{name}.yaml")["dataset_kwargs"]
    return lm_eval_utils().probe_dataset(**kwargs)["test"]


def _video_docs(name: str):
    import datasets

    from core_eval.probes import load_probe

    family, n, seed, knobs = VIDEO_TASKS[name]
    folder = Path(os.environ.get("CORE_EVAL_LMMS_VIDEOS") or _cache_root() / "videos") / name
    cols = {k: [] for k in ("id", "question", "answer", "aliases", "videos", "boxes", "family", "meta", "n_images")}
    for s in load_probe(family, n=n, seed=seed, **knobs):
        paths = [write_video(v, folder / f"{s.id}_{i}.mp4") for i, v in enumerate(s.videos)]
        cols["id"].append(s.id)
        cols["question"].append(s.question)
        cols["answer"].append(s.answer)
        cols["aliases"].append(list(s.aliases))
        cols["videos"].append([str(p) for p in paths])
        cols["boxes"].append(json.dumps([b.to_dict() for b in s.boxes]))
        cols["family"].append(s.family)
        cols["meta"].append(json.dumps(s.meta, sort_keys=True))
        cols["n_images"].append(0)
    return datasets.Dataset.from_dict(cols)


def write_video(video, path: Path) -> Path:
    """``video`` (a :class:`core_eval.probes.types.Video`) as an mp4 at ``path`` (kept if present;
    written to a temporary file, then renamed)."""
    import cv2
    import numpy as np

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = video.size
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(video.fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4 files here ({tmp}); install opencv-python with FFmpeg")
    for frame in video.frames:
        writer.write(cv2.cvtColor(np.asarray(frame.convert("RGB")), cv2.COLOR_RGB2BGR))
    writer.release()
    os.replace(tmp, path)
    return path


def doc_to_visual(doc: dict) -> list:
    """The doc's images (PIL, in order) or its video file paths."""
    return list(doc.get("videos") or []) or [im.convert("RGB") for im in doc["images"]]


def _without_placeholders(fn):
    def prompt(doc, lmms_eval_specific_kwargs=None):
        return fn(lm_eval_utils())({**doc, "n_images": 0})
    return prompt


#: lm-eval's prompts with ``n_images`` = 0: no ``<image>`` placeholder, the text unchanged.
doc_to_text = _without_placeholders(lambda u: u.doc_to_text)
doc_to_text_plain = _without_placeholders(lambda u: u.doc_to_text_plain)


def process_results(doc, results):
    return lm_eval_utils().process_results(doc, results)


def rec_results(doc, results):
    return lm_eval_utils().rec_results(doc, results)


# ----------------------------------------------------------------------------- the task folder

def _cache_root() -> Path:
    from core_eval import __version__

    base = os.environ.get("CORE_EVAL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "core_eval"
    return Path(base) / f"lmms_eval_tasks-{__version__}"


def _yaml(cfg: dict) -> str:
    """``cfg`` as YAML, ``"utils.<fn>"`` values of function keys as ``!function`` tags."""
    import yaml

    functional = ("process_docs", "doc_to_visual", "doc_to_text", "process_results")
    plain = {k: v for k, v in cfg.items() if k not in functional}
    text = yaml.safe_dump(plain, sort_keys=False)
    return text + "".join(f"{k}: !function {cfg[k]}\n" for k in functional if k in cfg)


_UTILS = '''"""lmms-eval hooks of the core_eval probe tasks (generated by core-eval; do not edit)."""
from core_eval.integrations.lmms_eval_tasks import (  # noqa: F401
    doc_to_text, doc_to_text_plain, doc_to_visual, docs, process_results, rec_results)
'''


def write_tasks(folder: str | os.PathLike | None = None) -> Path:
    """Write (once) and return the lmms-eval task folder: a YAML per task and group, ``utils.py``
    and the stub file. Default folder: a cache directory keyed by the catalog's content."""
    tasks, groups = catalog()
    body = {name: _yaml({**cfg, "dataset_kwargs": {"data_files": {"test": "STUB"}}}) for name, cfg in tasks.items()}
    key = hashlib.sha256(json.dumps([body, groups], sort_keys=True).encode()).hexdigest()[:12]
    out = Path(folder) if folder else _cache_root() / key
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    stub = out / "stub.jsonl"
    (tmp / "stub.jsonl").write_text(json.dumps({"stub": 0}) + "\n")
    funcs = "".join(f"docs_{name} = functools.partial(docs, {name!r})\n" for name in tasks)
    (tmp / "utils.py").write_text(_UTILS + "import functools\n\n" + funcs)
    for name, text in body.items():
        (tmp / f"{name}.yaml").write_text(text.replace("STUB", str(stub)))
    for group, members in groups.items():
        (tmp / f"{group}.yaml").write_text(_yaml({"group": group, "task": members, "aggregate_metric_list": [
            {"metric": "exact_match", "aggregation": "mean", "weight_by_size": False}],
            "metadata": {"version": 1.0}}))
    (tmp / ".complete").write_text(key + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
