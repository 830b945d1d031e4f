"""Probe sample types and the probe-set content hash.

Coordinates: a :class:`Box` is in pixels of one image, half-open (``x0 <= x < x1``,
``y0 <= y < y1``), origin at the top-left corner; ``image`` is a 0-based index into
``ProbeSample.images``.

Target region rule: ``ProbeSample.boxes`` lists the region(s) the answer is read from. An empty
list means *the whole image(s)*: :meth:`ProbeSample.target_boxes` turns it into one full-image
box per image. Generators only produce empty lists for degenerate cases (a count of 0); user
JSONL rows may omit boxes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["Box", "ProbeSample", "ProbeDataError", "LazyImages", "probe_set_hash"]


class ProbeArgumentError(ValueError):
    """A bad probe name, knob or option (raised before any work starts)."""


class ProbeDataError(ValueError):
    """Invalid probe data. ``errors`` holds ``(line, reason)`` pairs (1-based line numbers)."""

    def __init__(self, message: str, errors: list[tuple[int, str]] | None = None):
        super().__init__(message)
        self.errors = list(errors or [])


@dataclass(frozen=True)
class Box:
    """Half-open pixel box ``[x0, x1) x [y0, y1)`` in image ``image`` (0-based)."""

    image: int
    x0: float
    y0: float
    x1: float
    y1: float

    def as_list(self) -> list:
        return [self.x0, self.y0, self.x1, self.y1]

    def to_dict(self) -> dict:
        return {"image": self.image, "box": self.as_list()}

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


@dataclass(eq=False)
class ProbeSample:
    """One probe: images, plain-text question (no image placeholders), gold answer, target boxes."""

    id: str
    images: Sequence[Image.Image]
    question: str
    answer: str
    aliases: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    family: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.images)
        if n == 0:
            raise ValueError(f"probe {self.id!r}: no images")
        for b in self.boxes:
            if not 0 <= b.image < n:
                raise ValueError(f"probe {self.id!r}: box image index {b.image} out of range (n_images={n})")

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """``(width, height)`` of each image, without decoding file-backed images."""
        sizes = getattr(self.images, "sizes", None)
        return list(sizes) if sizes is not None else [im.size for im in self.images]

    def target_boxes(self) -> list[Box]:
        """The boxes, or one whole-image box per image when ``boxes`` is empty."""
        if self.boxes:
            return list(self.boxes)
        return [Box(i, 0, 0, w, h) for i, (w, h) in enumerate(self.image_sizes)]

    def to_record(self) -> dict:
        """JSON-able dict (images as sizes only); boxes as ``{"image": i, "box": [...]}``."""
        return {
            "id": self.id,
            "family": self.family,
            "question": self.question,
            "answer": self.answer,
            "aliases": list(self.aliases),
            "image_sizes": [list(s) for s in self.image_sizes],
            "boxes": [b.to_dict() for b in self.boxes],
            "meta": self.meta,
        }


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
        for im in s.images:
            if im.mode != "RGB":
                im = im.convert("RGB")
            data = im.tobytes()
            h.update(f"{im.mode}:{im.size[0]}x{im.size[1]}:{len(data)}\n".encode())
            h.update(data)
    return h.hexdigest()
