"""User grounding data as JSONL: reader with full validation, and a writer for probe sets.

One JSON object per line::

    {"id": "q1", "image": "imgs/a.png", "question": "...", "answer": "...",
     "aliases": ["..."], "boxes": [[x0, y0, x1, y1], ...]}
    {"images": ["a.png", "b.png"], "question": "...", "answer": "...",
     "boxes": [{"image": 1, "box": [x0, y0, x1, y1]}]}
    {"image": "coco.jpg", "question": "...", "answer": "...", "boxes": [[x, y, w, h]], "bbox_format": "xywh"}
    {"pages": ["p1.png", "p2.png", "p3.png"], "question": "...", "answer": "...",
     "evidence_pages": [2], "evidence_boxes": [{"page": 2, "box": [x0, y0, x1, y1]}]}

Boxes are pixel coordinates of the original image in the row's ``bbox_format`` (``"xyxy"``,
half-open corners, the default; or ``"xywh"``; per row, or for the whole file with
``read_jsonl(bbox_format=...)``); ``"image"`` indices are 0-based. A bare box is only allowed with
a single image. Missing/empty ``boxes`` means the whole image(s) is the target region. A row with
``pages`` is a document (:mod:`core_eval.probes.readers.documents`: 1-based ``evidence_pages``,
optional ``evidence_boxes``). An unknown key that looks like a box (``bbox``, ``box``, ``bboxes``,
``region``, ...) is an error naming ``boxes``; optional ``family`` (default ``"jsonl"``) and
``meta`` (object) are kept; other keys go to ``meta["extra"]``. Default id: ``<file stem>:<line>``.
Relative image paths resolve against ``image_root``, else the JSONL file's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from core_eval.probes.readers.boxes import box_key_error, box_like_keys, check_box_format, parse_boxes
from core_eval.probes.readers.documents import DOCUMENT_KEYS, document_boxes
from core_eval.probes.types import LazyImages, ProbeArgumentError, ProbeDataError, ProbeSample

__all__ = ["read_jsonl", "read_rows", "write_jsonl", "JSONL_OPTIONS"]

_KNOWN = {"id", "image", "images", "question", "answer", "aliases", "boxes", "family", "meta", "bbox_format",
          *DOCUMENT_KEYS}
#: Reader options (``--knobs`` for a JSONL path): the file's default box format.
JSONL_OPTIONS = ("bbox_format",)


def _parse_row(row, lineno: int, src: Path, root: Path, seen: dict, bbox_format: str = "xyxy"):
    """Return ``(sample | None, errors)`` for one decoded row."""
    errs: list[str] = []
    if not isinstance(row, dict):
        return None, [f"expected a JSON object, got {type(row).__name__}"]
    errs += [box_key_error(k, document="pages" in row) for k in box_like_keys(set(row) - _KNOWN)]
    fmt = row.get("bbox_format", bbox_format)
    if check_box_format(fmt):
        errs.append(check_box_format(fmt))
        fmt = "xyxy"

    q = row.get("question")
    if "question" not in row:
        errs.append("missing field 'question'")
    elif not isinstance(q, str) or not q.strip():
        errs.append("'question' must be a non-empty string")
    a = row.get("answer")
    if "answer" not in row:
        errs.append("missing field 'answer'")
    elif isinstance(a, bool) or not isinstance(a, (str, int, float)) or str(a).strip() == "":
        errs.append("'answer' must be a non-empty string or number")
    aliases = row.get("aliases", [])
    if not (isinstance(aliases, list) and all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                               for x in aliases)):
        errs.append("'aliases' must be a list of strings")
        aliases = []
    sid = row.get("id", f"{src.stem}:{lineno}")
    if isinstance(sid, bool) or not isinstance(sid, (str, int)):
        errs.append("'id' must be a string")
    elif str(sid) in seen:
        errs.append(f"duplicate id {str(sid)!r} (first at line {seen[str(sid)]})")
    family = row.get("family", "jsonl")
    if not isinstance(family, str):
        errs.append("'family' must be a string")
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        errs.append("'meta' must be an object")
        meta = {}

    # images (or document pages)
    paths: list[str] = []
    given = [k for k in ("image", "images", "pages") if k in row]
    if len(given) > 1:
        errs.append(f"give one of 'image', 'images' or 'pages' (a document), not {' and '.join(given)}")
    elif "image" in row:
        if isinstance(row["image"], str) and row["image"]:
            paths = [row["image"]]
        else:
            errs.append("'image' must be a path string")
    elif given:
        key = given[0]
        imgs = row[key]
        if isinstance(imgs, list) and imgs and all(isinstance(p, str) and p for p in imgs):
            paths = imgs
        else:
            errs.append(f"'{key}' must be a non-empty list of path strings")
    else:
        errs.append("missing field 'image' or 'images' (or 'pages' for a document)")
    resolved, sizes = [], []
    for p in paths:
        fp = Path(p) if os.path.isabs(p) else root / p
        resolved.append(fp)
        if not fp.is_file():
            errs.append(f"image file not found: {p!r} (resolved to {fp})")
            sizes.append(None)
            continue
        try:
            with Image.open(fp) as im:
                im.load()  # decode now: a truncated file is this row's error, not a traceback later
                sizes.append(im.size)
        except Exception as e:  # noqa: BLE001  (PIL raises several types)
            errs.append(f"image file unreadable: {p!r} ({type(e).__name__}: {e})")
            sizes.append(None)

    # boxes
    meta_doc = {}
    if "pages" in row:
        if "boxes" in row:
            errs.append("a document row gives its target region as 'evidence_pages' (1-based) and optional "
                        "'evidence_boxes' ({\"page\": p, \"box\": [...]}), not 'boxes'")
        boxes, ev = document_boxes(row, sizes, fmt, errs) if paths else ([], [])
        meta_doc = {"evidence_pages": [p + 1 for p in ev]}
    else:
        for k in ("evidence_pages", "evidence_boxes"):
            if k in row:
                errs.append(f"'{k}' belongs to a document row: give its page images as 'pages'")
        boxes = parse_boxes(row.get("boxes", []), sizes, fmt, errs)

    if errs:
        return None, errs
    extra = {k: v for k, v in row.items() if k not in _KNOWN}
    if extra:
        meta = {**meta, "extra": extra}
    if meta_doc:
        meta = {**meta, **meta_doc}
    seen[str(sid)] = lineno
    sample = ProbeSample(
        id=str(sid), images=LazyImages(resolved, sizes), question=q, answer=str(a),
        aliases=[str(x) for x in aliases], boxes=boxes, family=family, meta=meta,
    )
    return sample, []


def read_jsonl(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
               bbox_format: str = "xyxy", limit: int | None = None) -> list[ProbeSample]:
    """Read and validate a grounding JSONL file; images are opened lazily (headers read now).

    ``bbox_format``: the file's box format (a row's own ``"bbox_format"`` wins). ``limit``: read
    (and validate) only the first ``limit`` rows. Raises :class:`ProbeDataError` listing every bad
    row as ``line N: reason``.
    """
    if check_box_format(bbox_format):
        raise ProbeArgumentError(check_box_format(bbox_format))
    src = Path(path)
    root = Path(image_root) if image_root is not None else src.parent
    seen: dict = {}
    return read_rows(src, lambda row, lineno: _parse_row(row, lineno, src, root, seen, bbox_format), limit=limit)


def read_rows(src: Path, parse, *, limit: int | None = None, hint: str = "") -> list[ProbeSample]:
    """The samples of a JSONL file, one per non-blank line: ``parse(row, lineno) -> (sample | None,
    errors)``. Every bad row is collected, then :class:`ProbeDataError` lists them as ``line N: reason``
    (then ``hint``). ``limit``: read (and validate) only the first ``limit`` rows."""
    try:
        text = src.read_text(encoding="utf-8-sig")  # a UTF-8 BOM is accepted, as by the spec reader
    except OSError as e:
        raise ProbeDataError(f"{src}: cannot read ({e})") from e
    samples, errors = [], []
    rows = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if limit is not None and rows >= limit:
            break
        rows += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append((lineno, f"malformed JSON ({e.msg} at column {e.colno})"))
            continue
        s, errs = parse(row, lineno)
        if s is not None:
            samples.append(s)
        errors.extend((lineno, e) for e in errs)
    if errors:
        bad = len({ln for ln, _ in errors})
        lines = "\n".join(f"  line {ln}: {msg}" for ln, msg in errors)
        raise ProbeDataError(f"{src}: {bad} invalid row(s):\n{lines}{hint}", errors)
    if not samples:
        raise ProbeDataError(f"{src}: no samples (file is empty)")
    return samples


def write_jsonl(samples: Sequence[ProbeSample], path: str | os.PathLike, *,
                image_dir: str | os.PathLike | None = None) -> Path:
    """Write samples as PNGs plus a JSONL that :func:`read_jsonl` reads back losslessly.

    Images go to ``image_dir`` (default ``<path stem>_images/`` next to the file); paths in the
    JSONL are relative to the JSONL's folder when possible.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    idir = Path(image_dir) if image_dir is not None else out.parent / f"{out.stem}_images"
    idir.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for n, s in enumerate(samples):
            paths = []
            for i, im in enumerate(s.images):
                fp = idir / f"{n:06d}_{i}.png"
                (im if im.mode == "RGB" else im.convert("RGB")).save(fp, format="PNG")
                try:
                    paths.append(os.path.relpath(fp, out.parent))
                except ValueError:  # different drive on Windows
                    paths.append(str(fp.resolve()))
            rec = {"id": s.id, "images": paths, "question": s.question, "answer": s.answer,
                   "aliases": list(s.aliases), "boxes": [b.to_dict() for b in s.boxes], "bbox_format": "xyxy",
                   "family": s.family, "meta": s.meta}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out
