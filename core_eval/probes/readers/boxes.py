"""Strict box parsing shared by every reader: coordinate formats, validation, box-like keys.

A raw box is 4 finite numbers in one of :data:`BOX_FORMATS`:

- ``xyxy``: ``[x0, y0, x1, y1]``, half-open pixel corners (core_eval's own format);
- ``xywh``: ``[x, y, width, height]``, top-left corner and size (COCO / RefCOCO ``bbox``).

Both become a half-open ``(x0, y0, x1, y1)``. Validation: wrong arity, a non-number, NaN or
infinity, a zero or negative width / height and a box outside its image are errors. Coordinates
that overshoot an image edge by less than :data:`EDGE_TOLERANCE` pixel (float rounding in
published annotations) are clipped to the edge; anything further is an error.
"""

from __future__ import annotations

import json
import math
import re

from core_eval.probes.types import Box

__all__ = ["BOX_FORMATS", "EDGE_TOLERANCE", "check_box_format", "parse_box", "parse_boxes",
           "box_like_keys", "box_key_error"]

BOX_FORMATS = ("xyxy", "xywh")
#: Overshoot past an image edge (pixels, strictly less) that is clipped instead of rejected.
EDGE_TOLERANCE = 1.0
_BOX_KEY = re.compile(r"box|^rect|region", re.IGNORECASE)
_SHAPE = {"xyxy": "[x0, y0, x1, y1]", "xywh": "[x, y, width, height]"}


def _fmt(v) -> str:
    try:
        return json.dumps(v, allow_nan=True)
    except (TypeError, ValueError):
        return repr(v)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_box_format(fmt) -> str | None:
    """``None`` when ``fmt`` is a known box format, else the error message."""
    if fmt in BOX_FORMATS:
        return None
    return f"bbox_format {fmt!r} is not one of {', '.join(map(repr, BOX_FORMATS))}"


def parse_box(raw, fmt: str, size: tuple[int, int] | None, where: str):
    """``((x0, y0, x1, y1), None)`` or ``(None, message)`` for one raw box.

    ``size``: the ``(width, height)`` of its image (``None``: not checked against bounds).
    """
    if isinstance(raw, tuple):
        raw = list(raw)
    if not (isinstance(raw, list) and len(raw) == 4 and all(_is_number(v) for v in raw)):
        got = f"{len(raw)} values" if isinstance(raw, list) else type(raw).__name__
        return None, (f"{where}: box must be 4 numbers {_SHAPE[fmt]} (bbox_format {fmt!r}), got {_fmt(raw)} "
                      f"({got})")
    if not all(math.isfinite(v) for v in raw):
        return None, f"{where}: box {_fmt(raw)} holds NaN or infinity; every coordinate must be a finite number"
    if fmt == "xywh":
        x, y, w, h = raw
        bad = [f"width ({w}) <= 0"] * (w <= 0) + [f"height ({h}) <= 0"] * (h <= 0)
        if bad:
            return None, (f"{where}: empty box {_fmt(raw)} (bbox_format 'xywh' = [x, y, width, height]): "
                          + " and ".join(bad))
        x0, y0, x1, y1 = x, y, x + w, y + h
    else:
        x0, y0, x1, y1 = raw
        bad = [f"x1 ({x1}) <= x0 ({x0})"] * (x1 <= x0) + [f"y1 ({y1}) <= y0 ({y0})"] * (y1 <= y0)
        if bad:
            hint = ""
            if x1 > 0 and y1 > 0:
                hint = "; if this box is [x, y, width, height], set \"bbox_format\": \"xywh\""
            return None, f"{where}: empty box {_fmt(raw)}: " + " and ".join(bad) + hint
    if size is not None:
        W, H = size
        t = EDGE_TOLERANCE
        if x0 <= -t or y0 <= -t or x1 >= W + t or y1 >= H + t:
            hint = ""
            if fmt == "xywh" and raw[0] < raw[2] <= W and raw[1] < raw[3] <= H:  # it fits read as corners
                hint = "; if this box is [x0, y0, x1, y1], set \"bbox_format\": \"xyxy\""
            return None, (f"{where}: box {_fmt(raw)} ({fmt}) outside the image bounds (image size {W}x{H}); "
                          f"boxes are in pixels of the original image{hint}")
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    return (x0, y0, x1, y1), None


def parse_boxes(raw_boxes, sizes: list, fmt: str, errs: list[str], *, label: str = "boxes",
                index_key: str = "image") -> list[Box]:
    """Boxes of a row: a list of bare boxes (only with one image) or ``{index_key: i, "box": [...]}``
    objects (0-based image index). Problems are appended to ``errs``; ``sizes[i]`` may be ``None``
    (unknown: not bounds-checked)."""
    if raw_boxes is None:
        return []
    if not isinstance(raw_boxes, list):
        errs.append(f"'{label}' must be a list of boxes, got {_fmt(raw_boxes)}")
        return []
    boxes: list[Box] = []
    for j, rb in enumerate(raw_boxes):
        where = f"{label}[{j}]"
        if isinstance(rb, dict):
            unknown = sorted(set(rb) - {index_key, "box"})
            if "box" not in rb or index_key not in rb or unknown:
                extra = f" (unknown key(s) {unknown})" if unknown else ""
                errs.append(f"{where}: object boxes are {{\"{index_key}\": i (0-based index), \"box\": [...]}}{extra}")
                continue
            idx, box = rb[index_key], rb["box"]
            if isinstance(idx, bool) or not isinstance(idx, int):
                errs.append(f"{where}: '{index_key}' must be an integer index, got {_fmt(idx)}")
                continue
            if sizes and not 0 <= idx < len(sizes):
                errs.append(f"{where}: {index_key} index {idx} out of range (row has {len(sizes)} "
                            f"{index_key}(s); indices are 0-based)")
                continue
        elif isinstance(rb, (list, tuple)):
            idx, box = 0, rb
            if len(sizes) > 1:
                errs.append(f"{where}: a bare box is ambiguous with {len(sizes)} images; use "
                            f"{{\"{index_key}\": i, \"box\": [...]}}")
                continue
        else:
            errs.append(f"{where}: box must be {_SHAPE[fmt]} or {{\"{index_key}\": i, \"box\": [...]}}, got {_fmt(rb)}")
            continue
        size = sizes[idx] if idx < len(sizes) else None
        ok, err = parse_box(box, fmt, size, where)
        if err:
            errs.append(err)
        else:
            boxes.append(Box(idx, *ok))
    return boxes


def box_like_keys(keys) -> list[str]:
    """The keys among ``keys`` whose name looks like a box (``bbox``, ``box``, ``bboxes``, ``region``...)."""
    return [k for k in keys if isinstance(k, str) and _BOX_KEY.search(k)]


def box_key_error(key: str, *, document: bool = False) -> str:
    """The message for an unknown box-like key (it would otherwise be dropped and the whole image
    become the target region)."""
    if document:
        return (f"unknown key {key!r}: a document row gives its target region as 'evidence_pages' (1-based page "
                "numbers) and optional 'evidence_boxes', e.g. {\"evidence_pages\": [2], \"evidence_boxes\": "
                "[{\"page\": 2, \"box\": [10, 20, 50, 80]}]}")
    return (f"unknown key {key!r}: the target region must be given as 'boxes' (pixel boxes, [x0, y0, x1, y1] by "
            "default; for RefCOCO / COCO style [x, y, width, height] add \"bbox_format\": \"xywh\"), e.g. "
            "{\"boxes\": [[10, 20, 50, 80]], \"bbox_format\": \"xywh\"}; without it the whole image would "
            "silently become the target region")
