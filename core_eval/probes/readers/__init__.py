"""Readers of real grounding data into :class:`~core_eval.probes.types.ProbeSample` lists.

``--probes`` sources (see ``docs/probe_data.md``):

- ``hf:<path-or-id>[:split]``: a Hugging Face dataset (hub id, a local folder or a parquet file)
  through ``datasets.load_dataset``: RefCOCO / RefCOCO+ / RefCOCOg as published
  (:mod:`.refcoco`), documents with page images (:mod:`.documents`), or core_eval's own columns;
- ``coco:<instances.json>``: COCO-format annotations + an image folder (:mod:`.coco`);
- ``video:<rows.jsonl>``: video grounding rows, VidSTG-style tubes (:mod:`.video`, ``docs/probe_data_video.md``);
- a JSONL path (:mod:`core_eval.probes.jsonl`).

Shared: strict box parsing (:mod:`.boxes`), question templates (:mod:`.templates`), lazily decoded
images (:mod:`.images`). Readers validate only the rows they return (``n``: the first ``n``, or
a seeded sample with ``shuffle``) and decode no pixels while validating.
"""

from __future__ import annotations

import random

from core_eval.probes.types import ProbeArgumentError

__all__ = ["SOURCE_PREFIXES", "is_source", "read_source", "check_options", "pick_rows"]

SOURCE_PREFIXES = ("hf:", "coco:", "video:")


def is_source(name: str) -> bool:
    """Whether a ``--probes`` value names a dataset source (``hf:...`` / ``coco:...`` / ``video:...``)."""
    return isinstance(name, str) and name.startswith(SOURCE_PREFIXES)


def check_options(reader: str, options: dict, valid) -> None:
    """Unknown reader options are an error listing the valid ones."""
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ProbeArgumentError(f"{reader}: unknown option(s) {unknown}; valid options: {', '.join(sorted(valid))}")


def pick_rows(total: int, n: int | None, shuffle: bool, seed: int) -> list[int]:
    """Row indices to read: the first ``n`` (default all), or with ``shuffle`` a sample of ``n`` drawn
    with ``random.Random(seed)`` (in drawn order)."""
    if not isinstance(shuffle, bool):
        raise ProbeArgumentError(f"shuffle must be true or false, got {shuffle!r}")
    k = total if n is None else min(n, total)
    if shuffle:
        return random.Random(seed).sample(range(total), k)
    return list(range(k))


def read_source(name: str, n: int | None = None, seed: int = 0, *, image_root=None, **options):
    """Samples of a ``hf:`` / ``coco:`` / ``video:`` source (``options``: the reader's options, e.g. ``template``)."""
    if name.startswith("hf:"):
        from core_eval.probes.readers.refcoco import read_hf

        return read_hf(name[len("hf:"):], n=n, seed=seed, image_root=image_root, **options)
    if name.startswith("coco:"):
        from core_eval.probes.readers.coco import read_coco

        return read_coco(name[len("coco:"):], n=n, seed=seed, image_root=image_root, **options)
    if name.startswith("video:"):
        from core_eval.probes.readers.video import read_video_probes

        return read_video_probes(name[len("video:"):], n, video_root=image_root, **options)
    raise ProbeArgumentError(f"{name!r} is not a data source; use one of {', '.join(p + '...' for p in SOURCE_PREFIXES)}")
