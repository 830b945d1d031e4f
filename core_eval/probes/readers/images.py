"""Images that stay encoded until used: rows of a Hugging Face dataset, decoded on access.

A reader validates boxes against image sizes read from the encoded headers (no pixel decoding),
and a :class:`ProbeSample` holds an :class:`EncodedImages` that decodes one image per access,
so a large dataset is never decoded (or held in memory) all at once.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

__all__ = ["EncodedImages", "encoded_size", "open_encoded"]


def _source(value, root: Path | None):
    """``bytes`` or a path for one encoded image value: a datasets ``Image(decode=False)`` dict
    (``{"bytes", "path"}``), raw bytes, or a path string (relative to ``root``)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        p = Path(value)
        if not p.is_absolute():
            if root is None:
                raise ValueError(f"image path {value!r} is relative and no image root is set: pass --image-root "
                                 "(option image_root) naming the folder it is relative to")
            p = root / p
        return p
    raise ValueError(f"not an image: {type(value).__name__} {str(value)[:60]!r} (expected image bytes or a path)")


def open_encoded(value, root: Path | None = None) -> Image.Image:
    """Open one encoded image value (see :func:`_source`) lazily (header read, pixels not decoded)."""
    src = _source(value, root)
    if isinstance(src, Path):
        if not src.is_file():
            raise FileNotFoundError(f"image file not found: {os.fspath(src)}")
        return Image.open(src)
    return Image.open(io.BytesIO(src))


def encoded_size(value, root: Path | None = None) -> tuple[int, int]:
    """``(width, height)`` from the encoded header only."""
    with open_encoded(value, root) as im:
        return im.size


class EncodedImages(Sequence):
    """Read-only list of the images of one dataset row, decoded (to RGB) on each access.

    ``fetch()`` returns the row's encoded values (one per image) when called; ``sizes`` are the
    ``(width, height)`` read from their headers at validation time.
    """

    def __init__(self, fetch, sizes: Sequence[tuple[int, int]], root: Path | None = None, label: str = ""):
        self._fetch = fetch
        self.sizes = [tuple(s) for s in sizes]
        self.root = root
        self.label = label

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        with open_encoded(self._fetch()[i], self.root) as im:
            return im.convert("RGB")

    def __repr__(self) -> str:
        return f"EncodedImages({self.label or '?'}, n={len(self)})"
