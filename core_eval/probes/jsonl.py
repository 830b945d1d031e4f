"""User grounding data as JSONL: reader with full validation, and a writer for probe sets.

One JSON object per line::

    {"id": "q1", "image": "imgs/a.png", "question": "...", "answer": "...",
     "aliases": ["..."], "boxes": [[x0, y0, x1, y1], ...]}
    {"images": ["a.png", "b.png"], "question": "...", "answer": "...",
     "boxes": [{"image": 1, "box": [x0, y0, x1, y1]}]}

Boxes are half-open pixel coordinates; ``"image"`` indices are 0-based. A bare
``[x0, y0, x1, y1]`` is only allowed with a single image. Missing/empty ``boxes`` means the
whole image(s) is the target region. Optional ``family`` (default ``"jsonl"``) and ``meta``
(object) are kept; other keys go to ``meta["extra"]``. Default id: ``<file stem>:<line>``.
Relative image paths resolve against ``image_root``, else the JSONL file's folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from core_eval.probes.types import Box, LazyImages, ProbeDataError, ProbeSample

__all__ = ["read_jsonl", "write_jsonl"]

_KNOWN = {"id", "image", "images", "question", "answer", "aliases", "boxes", "family", "meta"}


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(b) -> str:
    return json.dumps(b)


def _check_box(raw, where: str, size, errs: list[str]):
    if not (isinstance(raw, list) and len(raw) == 4 and all(_is_num(v) for v in raw)):
        errs.append(f"{where}: box must be 4 numbers [x0, y0, x1, y1], got {_fmt(raw)}")
        return None
    x0, y0, x1, y1 = raw
    bad = []
    if x1 <= x0:
        bad.append(f"x1 ({x1}) <= x0 ({x0})")
    if y1 <= y0:
        bad.append(f"y1 ({y1}) <= y0 ({y0})")
    if bad:
        errs.append(f"{where}: empty box {_fmt(raw)}: " + " and ".join(bad))
        return None
    if size is not None:
        w, h = size
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            errs.append(f"{where}: box {_fmt(raw)} outside the image bounds (image size {w}x{h})")
            return None
    return raw


def _parse_row(row, lineno: int, src: Path, root: Path, seen: dict):
    """Return ``(sample | None, errors)`` for one decoded row."""
    errs: list[str] = []
    if not isinstance(row, dict):
        return None, [f"expected a JSON object, got {type(row).__name__}"]

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

    # images
    paths: list[str] = []
    if "image" in row and "images" in row:
        errs.append("give either 'image' or 'images', not both")
    elif "image" in row:
        if isinstance(row["image"], str) and row["image"]:
            paths = [row["image"]]
        else:
            errs.append("'image' must be a path string")
    elif "images" in row:
        imgs = row["images"]
        if isinstance(imgs, list) and imgs and all(isinstance(p, str) and p for p in imgs):
            paths = imgs
        else:
            errs.append("'images' must be a non-empty list of path strings")
    else:
        errs.append("missing field 'image' or 'images'")
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
                sizes.append(im.size)
        except Exception as e:  # noqa: BLE001  (PIL raises several types)
            errs.append(f"image file unreadable: {p!r} ({type(e).__name__}: {e})")
            sizes.append(None)

    # boxes
    boxes: list[Box] = []
    raw_boxes = row.get("boxes", [])
    if raw_boxes is None:
        raw_boxes = []
    if not isinstance(raw_boxes, list):
        errs.append("'boxes' must be a list")
        raw_boxes = []
    for j, rb in enumerate(raw_boxes):
        where = f"boxes[{j}]"
        if isinstance(rb, dict):
            idx, box = rb.get("image"), rb.get("box")
            if "box" not in rb or "image" not in rb:
                errs.append(f"{where}: object boxes need 'image' (0-based index) and 'box'")
                continue
            if isinstance(idx, bool) or not isinstance(idx, int):
                errs.append(f"{where}: 'image' must be an integer index, got {_fmt(idx)}")
                continue
            if paths and not 0 <= idx < len(paths):
                errs.append(f"{where}: image index {idx} out of range (row has {len(paths)} "
                            f"image(s); indices are 0-based)")
                continue
        elif isinstance(rb, list):
            idx, box = 0, rb
            if len(paths) > 1:
                errs.append(f"{where}: a bare [x0, y0, x1, y1] box is ambiguous with {len(paths)} "
                            f"images; use {{\"image\": i, \"box\": [...]}}")
                continue
        else:
            errs.append(f"{where}: box must be [x0, y0, x1, y1] or {{\"image\": i, \"box\": [...]}}")
            continue
        size = sizes[idx] if idx < len(sizes) else None
        ok = _check_box(box, where, size, errs)
        if ok is not None:
            boxes.append(Box(idx, *ok))

    if errs:
        return None, errs
    extra = {k: v for k, v in row.items() if k not in _KNOWN}
    if extra:
        meta = {**meta, "extra": extra}
    seen[str(sid)] = lineno
    sample = ProbeSample(
        id=str(sid), images=LazyImages(resolved, sizes), question=q, answer=str(a),
        aliases=[str(x) for x in aliases], boxes=boxes, family=family, meta=meta,
    )
    return sample, []


def read_jsonl(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> list[ProbeSample]:
    """Read and validate a grounding JSONL file; images are opened lazily (headers read now).

    Raises :class:`ProbeDataError` listing every bad row as ``line N: reason``.
    """
    src = Path(path)
    root = Path(image_root) if image_root is not None else src.parent
    try:
        text = src.read_text(encoding="utf-8")
    except OSError as e:
        raise ProbeDataError(f"{src}: cannot read ({e})") from e
    samples, errors, seen = [], [], {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append((lineno, f"malformed JSON ({e.msg} at column {e.colno})"))
            continue
        s, errs = _parse_row(row, lineno, src, root, seen)
        if s is not None:
            samples.append(s)
        errors.extend((lineno, e) for e in errs)
    if errors:
        bad = len({ln for ln, _ in errors})
        lines = "\n".join(f"  line {ln}: {msg}" for ln, msg in errors)
        raise ProbeDataError(f"{src}: {bad} invalid row(s):\n{lines}", errors)
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
                   "aliases": list(s.aliases), "boxes": [b.to_dict() for b in s.boxes],
                   "family": s.family, "meta": s.meta}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out
