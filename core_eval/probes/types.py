"""Probe sample types and the probe-set content hash.

Coordinates: a :class:`Box` is in pixels of one image, half-open (``x0 <= x < x1``,
``y0 <= y < y1``), origin at the top-left corner. With ``frame=None`` it lies on image ``image``
(0-based index into ``ProbeSample.images``); with ``frame=k`` it lies on frame ``k`` (0-based,
into that video's ``frames``) of video ``image`` (index into ``ProbeSample.videos``). A video
target *tube* (VidSTG) is one box per frame inside the temporal segment.

Target region rule: ``ProbeSample.boxes`` lists the region(s) the answer is read from. An empty
list means *the whole image(s)* (and every frame of every video): :meth:`ProbeSample.target_boxes`
turns it into one full-image box per image and per frame. Generators only produce empty lists for
degenerate cases (a count of 0); user rows that omit boxes say so explicitly (see the readers).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["Box", "ProbeSample", "ProbeDataError", "LazyImages", "Video", "probe_set_hash"]


class ProbeArgumentError(ValueError):
    """A bad probe name, knob or option (raised before any work starts)."""


class ProbeDataError(ValueError):
    """Invalid probe data. ``errors`` holds ``(line, reason)`` pairs (1-based line numbers)."""

    def __init__(self, message: str, errors: list[tuple[int, str]] | None = None):
        super().__init__(message)
        self.errors = list(errors or [])


@dataclass(frozen=True)
class Box:
    """Half-open pixel box ``[x0, x1) x [y0, y1)`` in image ``image`` (0-based), or, with
    ``frame`` set, on frame ``frame`` of video ``image``."""

    image: int
    x0: float
    y0: float
    x1: float
    y1: float
    frame: int | None = None

    def as_list(self) -> list:
        return [self.x0, self.y0, self.x1, self.y1]

    def to_dict(self) -> dict:
        d = {"image": self.image, "box": self.as_list()}
        if self.frame is not None:  # image boxes keep their record (and probe-set hashes) unchanged
            d["frame"] = self.frame
        return d

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height


class LazyImages(Sequence):
    """Read-only list of image files, opened (and converted to RGB) on each access.

    ``sizes`` holds the ``(width, height)`` read from the file headers at validation time.
    """

    def __init__(self, paths: Sequence[str | Path], sizes: Sequence[tuple[int, int]]):
        self.paths = [Path(p) for p in paths]
        self.sizes = [tuple(s) for s in sizes]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        with Image.open(self.paths[i]) as im:
            return im.convert("RGB")

    def __repr__(self) -> str:
        return f"LazyImages({[str(p) for p in self.paths]!r})"


@dataclass
class Video:
    """A video as the model will see it: decoded ``frames`` (PIL images, all one size, in time
    order; a :class:`LazyImages` keeps them on disk) sampled at ``fps`` frames per second, the
    first at ``start`` seconds of the source."""

    frames: Sequence[Image.Image]
    fps: float = 1.0
    start: float = 0.0

    def __post_init__(self):
        if len(self.frames) == 0:
            raise ValueError("a video needs at least one frame")
        if not self.fps > 0:
            raise ValueError(f"video fps={self.fps!r} must be > 0")

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the frames (without decoding file-backed frames)."""
        sizes = getattr(self.frames, "sizes", None)
        return tuple(sizes[0]) if sizes is not None else self.frames[0].size

    def to_record(self) -> dict:
        return {"n_frames": len(self.frames), "fps": self.fps, "start": self.start, "size": list(self.size)}


@dataclass(eq=False)
class ProbeSample:
    """One probe: images and/or videos, plain-text question (no placeholders), gold answer, target
    boxes (image boxes, or per-frame video boxes: see :class:`Box`)."""

    id: str
    images: Sequence[Image.Image]
    question: str
    answer: str
    aliases: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    family: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)
    videos: list[Video] = field(default_factory=list)

    def __post_init__(self):
        n, nv = len(self.images), len(self.videos)
        if n == 0 and nv == 0:
            raise ValueError(f"probe {self.id!r}: no images and no videos")
        for b in self.boxes:
            if b.frame is None and not 0 <= b.image < n:
                raise ValueError(f"probe {self.id!r}: box image index {b.image} out of range (n_images={n})")
            if b.frame is not None:
                if not 0 <= b.image < nv:
                    raise ValueError(f"probe {self.id!r}: box video index {b.image} out of range (n_videos={nv})")
                nf = len(self.videos[b.image].frames)
                if not 0 <= b.frame < nf:
                    raise ValueError(f"probe {self.id!r}: box frame {b.frame} out of range (video {b.image} has "
                                     f"{nf} frames)")

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """``(width, height)`` of each image, without decoding file-backed images."""
        sizes = getattr(self.images, "sizes", None)
        return list(sizes) if sizes is not None else [im.size for im in self.images]

    def target_boxes(self) -> list[Box]:
        """The boxes, or, when ``boxes`` is empty, one whole-image box per image and one whole-frame
        box per frame of every video."""
        if self.boxes:
            return list(self.boxes)
        whole = [Box(i, 0, 0, w, h) for i, (w, h) in enumerate(self.image_sizes)]
        for v, video in enumerate(self.videos):
            w, h = video.size
            whole += [Box(v, 0, 0, w, h, frame=f) for f in range(len(video.frames))]
        return whole

    def to_record(self) -> dict:
        """JSON-able dict (images as sizes only); boxes as ``{"image": i, "box": [...]}`` (plus
        ``"frame"`` for video boxes); ``videos`` only when there are any."""
        rec = {
            "id": self.id,
            "family": self.family,
            "question": self.question,
            "answer": self.answer,
            "aliases": list(self.aliases),
            "image_sizes": [list(s) for s in self.image_sizes],
            "boxes": [b.to_dict() for b in self.boxes],
            "meta": self.meta,
        }
        if self.videos:
            rec["videos"] = [v.to_record() for v in self.videos]
        return rec


def probe_set_hash(samples: Sequence[ProbeSample]) -> str:
    """sha256 hex digest over every sample's record (sorted-key JSON) and raw RGB pixel bytes.

    Order-sensitive. Uses decoded pixels, not encoded files, so it does not depend on PNG/zlib
    versions.
    """
    h = hashlib.sha256(b"core-probe-set/v1\n")
    for s in samples:
        rec = json.dumps(s.to_record(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        h.update(len(rec.encode()).to_bytes(8, "big"))
        h.update(rec.encode())
        for im in [*s.images, *(f for v in s.videos for f in v.frames)]:
            if im.mode != "RGB":
                im = im.convert("RGB")
            data = im.tobytes()
            h.update(f"{im.mode}:{im.size[0]}x{im.size[1]}:{len(data)}\n".encode())
            h.update(data)
    return h.hexdigest()
