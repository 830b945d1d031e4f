"""Probe sets as Hugging Face datasets, and one loader for family names or JSONL paths."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core_eval.probes.families import PROBE_FAMILIES, generate
from core_eval.probes.jsonl import JSONL_OPTIONS, read_jsonl
from core_eval.probes.readers import check_options, is_source, read_source
from core_eval.probes.tasks import probes_help, resolve_probes
from core_eval.probes.types import ProbeArgumentError, ProbeSample

__all__ = ["DEFAULT_N", "load_probe", "to_hf_dataset", "probe_dataset", "custom_dataset"]

DEFAULT_N = 100


def add_probe_arguments(parser, *, seed_help: str = "probe generator seed") -> None:
    """The command-line options that pick a probe set for :func:`load_probe`: ``--probes``,
    ``--seed``, ``--knobs`` (JSON) and ``--image-root`` (shared by score, causal and plot)."""
    parser.add_argument("--probes", default="grid_needle",
                        help="probe family (grid_needle, doc_needle, ...), an lm-eval probe task of `core-eval "
                             "tasks-path` (core_grid_needle, ...: the task's generator and YAML knobs), a dataset "
                             "(hf:<path-or-id>[:split], e.g. hf:lmms-lab/RefCOCOg:val; coco:<instances.json> with "
                             "--image-root), video grounding rows (video:<rows.jsonl>, docs/probe_data_video.md) or a JSONL file "
                             "of your own (docs/probe_data.md)")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"{seed_help} (default 0). A task name does not change it: the tasks evaluate on "
                             "seed 1000, and heads should be chosen on other samples; pass --seed 1000 only to "
                             "use the evaluation samples themselves")
    parser.add_argument("--knobs", default="{}",
                        help='probe generator knobs as JSON, e.g. \'{"grid": 6}\'; with a task name they '
                             "override the task's knobs key by key; for a dataset or JSONL, the reader's options "
                             '(e.g. \'{"template": "category"}\', \'{"bbox_format": "xywh"}\')')
    parser.add_argument("--image-root", default=None,
                        help="base folder for relative image paths (JSONL, coco:, hf: datasets with path columns)")


def load_probe(name_or_path: str | os.PathLike, n: int | None = None, seed: int = 0, *,
               image_root: str | os.PathLike | None = None, **knobs: Any) -> list[ProbeSample]:
    """A registered family name (``n`` samples, default :data:`DEFAULT_N`), a visual probe task
    name of ``task_configs`` (its family, its YAML knobs updated by ``knobs``, but this ``seed``),
    a dataset source ``hf:<path-or-id>[:split]`` / ``coco:<instances.json>`` / ``video:<rows.jsonl>``
    (``knobs`` = the reader's options; first ``n`` rows, or with ``shuffle`` a sample drawn with ``seed``) or a
    JSONL path (first ``n`` rows, default all; knob ``bbox_format`` only)."""
    name, knobs, _ = resolve_probes(os.fspath(name_or_path), knobs)
    if name in PROBE_FAMILIES:
        if image_root is not None:
            raise ProbeArgumentError("image_root only applies to data files (JSONL, coco:, hf:)")
        return generate(name, DEFAULT_N if n is None else n, seed=seed, **knobs)
    if is_source(name):
        return read_source(name, n=n, seed=seed, image_root=image_root, **knobs)
    p = Path(name)
    if p.suffix.lower() in (".jsonl", ".json") or p.exists():
        check_options(f"JSONL file {p}", knobs, JSONL_OPTIONS)
        return read_jsonl(p, image_root=image_root, limit=n, **knobs)
    raise ProbeArgumentError(f"{name!r} is neither a probe family, a probe task nor a .jsonl path (nor a dataset: "
                             f"hf:<path-or-id>[:split], coco:<instances.json>); {probes_help()}")


def to_hf_dataset(samples: Sequence[ProbeSample]):
    """``datasets.Dataset`` with columns id, question, answer, aliases, images (list of Image),
    image (first image), boxes (JSON), family, meta (JSON), n_images.

    ``boxes`` JSON is ``[{"image": i, "box": [x0, y0, x1, y1]}, ...]``; ``[]`` = whole image(s).
    """
    import datasets
    from datasets import Features, Image, Value

    with_video = [s.id for s in samples if getattr(s, "videos", None)]
    if with_video:
        raise ProbeArgumentError(f"{len(with_video)} sample(s) ({with_video[0]!r}, ...) hold videos, which lm-eval cannot "
                                 "take (it has no video input); score video probes with `core-eval score --probes ...`")

    seq = getattr(datasets, "List", None) or datasets.Sequence
    features = Features({
        "id": Value("string"), "question": Value("string"), "answer": Value("string"),
        "aliases": seq(Value("string")), "images": seq(Image()), "image": Image(),
        "boxes": Value("string"), "family": Value("string"), "meta": Value("string"),
        "n_images": Value("int32"),
    })
    cols: dict[str, list] = {k: [] for k in features}
    for s in samples:
        ims = list(s.images)
        cols["id"].append(s.id)
        cols["question"].append(s.question)
        cols["answer"].append(s.answer)
        cols["aliases"].append(list(s.aliases))
        cols["images"].append(ims)
        cols["image"].append(ims[0])
        cols["boxes"].append(json.dumps([b.to_dict() for b in s.boxes]))
        cols["family"].append(s.family)
        cols["meta"].append(json.dumps(s.meta, sort_keys=True))
        cols["n_images"].append(len(ims))
    return datasets.Dataset.from_dict(cols, features=features)


def probe_dataset(name_or_path, n: int | None = None, seed: int = 0, **kwargs):
    """``to_hf_dataset(load_probe(...))``."""
    return to_hf_dataset(load_probe(name_or_path, n=n, seed=seed, **kwargs))


def custom_dataset(probe: str | None = None, n: int | None = None, seed: int = 0,
                   knobs: dict | None = None, image_root: str | None = None, split: str = "test",
                   **_ignored: Any):
    """lm-eval ``custom_dataset`` hook -> ``DatasetDict({split: dataset})``.

    lm-eval passes ``metadata`` (including the model args) and ``dataset_kwargs`` as keyword
    arguments; only ``probe``, ``n``, ``seed``, ``knobs``, ``image_root`` and ``split`` are read.
    """
    import datasets

    if probe is None:
        raise ProbeArgumentError("custom_dataset needs dataset_kwargs.probe (family name or JSONL path)")
    kw = dict(knobs or {})
    if image_root is not None:
        kw["image_root"] = image_root
    return datasets.DatasetDict({split: probe_dataset(probe, n=n, seed=seed, **kw)})
