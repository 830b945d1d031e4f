"""Multi-page document probes (MMLongBench-Doc / MMDocIR style): pages, evidence pages, layout boxes.

A document sample shows every page as one image, in order, and names where the answer is:

- ``evidence_pages``: the **1-based** page numbers holding the evidence (MMLongBench-Doc's
  convention; its ``samples.json`` string form ``"[3, 5]"`` is accepted too);
- ``evidence_boxes`` (optional): layout boxes on those pages, ``{"page": p, "box": [...]}``
  (``p`` 1-based, ``box`` in the row's ``bbox_format``); with ``"page_size": [w, h]`` the box is
  in that coordinate frame (MMDocIR's ``layout_mapping`` records the page size it was annotated
  at) and is scaled to the page image.

Target region: on each evidence page, its evidence boxes, or the whole page when it has none.
"""

from __future__ import annotations

import json

from core_eval.probes.readers.boxes import parse_box
from core_eval.probes.types import Box

__all__ = ["DOCUMENT_KEYS", "parse_page_numbers", "document_boxes"]

#: The keys a document row adds to the common ones (``pages`` replaces ``image`` / ``images``).
DOCUMENT_KEYS = ("pages", "evidence_pages", "evidence_boxes")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_page_numbers(raw, n_pages: int, errs: list[str]) -> list[int]:
    """0-based page indices from 1-based ``evidence_pages`` (list, or a JSON list string)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            errs.append(f"'evidence_pages' {raw!r} is a string but not a JSON list such as \"[3, 5]\"")
            return []
    if _int(raw):
        raw = [raw]
    if not (isinstance(raw, list) and raw and all(_int(p) for p in raw)):
        errs.append(f"'evidence_pages' must be a non-empty list of 1-based page numbers, got {json.dumps(raw)}")
        return []
    out = []
    for p in raw:
        if p < 1:
            errs.append(f"evidence page {p}: page numbers are 1-based (the first page is 1); "
                        "for 0-based indices add 1 to each")
        elif p > n_pages:
            errs.append(f"evidence page {p} out of range: the document has {n_pages} page(s) "
                        f"(page numbers are 1-based)")
        elif p - 1 not in out:
            out.append(p - 1)
    return out


def document_boxes(row: dict, page_sizes: list, fmt: str, errs: list[str]) -> tuple[list[Box], list[int]]:
    """``(target boxes, evidence page indices)`` of a document row; problems go to ``errs``.

    ``page_sizes[i]``: ``(width, height)`` of page image ``i`` (``None`` when unreadable).
    """
    n = len(page_sizes)
    if "evidence_pages" not in row:
        errs.append("missing field 'evidence_pages' (1-based page numbers holding the evidence, e.g. [2])")
        return [], []
    pages = parse_page_numbers(row["evidence_pages"], n, errs)
    raw_boxes = row.get("evidence_boxes") or []
    if not isinstance(raw_boxes, list):
        errs.append("'evidence_boxes' must be a list of {\"page\": p, \"box\": [...]} objects")
        raw_boxes = []
    by_page: dict[int, list[Box]] = {}
    for j, rb in enumerate(raw_boxes):
        where = f"evidence_boxes[{j}]"
        if not isinstance(rb, dict) or "page" not in rb or "box" not in rb or set(rb) - {"page", "box", "page_size"}:
            errs.append(f"{where}: must be {{\"page\": p (1-based), \"box\": [...]}} with optional \"page_size\": "
                        f"[w, h], got {json.dumps(rb)}")
            continue
        p = rb["page"]
        if not _int(p) or not 1 <= p <= n:
            errs.append(f"{where}: page {json.dumps(p)} out of range: the document has {n} page(s) "
                        "(page numbers are 1-based)")
            continue
        if p - 1 not in pages:
            errs.append(f"{where}: page {p} is not an evidence page {[q + 1 for q in pages]}; add it to "
                        "'evidence_pages' or drop the box")
            continue
        size = page_sizes[p - 1]
        frame = rb.get("page_size", size)
        if "page_size" in rb and not (isinstance(frame, list) and len(frame) == 2
                                      and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                              for v in frame)):
            errs.append(f"{where}: 'page_size' must be [width, height] > 0, got {json.dumps(frame)}")
            continue
        ok, err = parse_box(rb["box"], fmt, None if frame is None else tuple(frame), where)
        if err:
            errs.append(err)
            continue
        if size is None:
            continue
        sx, sy = size[0] / frame[0], size[1] / frame[1]
        x0, y0, x1, y1 = ok
        by_page.setdefault(p - 1, []).append(Box(p - 1, x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    boxes: list[Box] = []
    for i in pages:
        if i in by_page:
            boxes += by_page[i]
        elif page_sizes[i] is not None:
            boxes.append(Box(i, 0, 0, *page_sizes[i]))
    return boxes, pages
