"""Video grounding rows (VidSTG-style tubes) as JSONL: a reader with full validation.

One JSON object per line (``docs/probe_data_video.md`` has the full description)::

    {"id": "v1", "video": "clips/a.mp4", "segment": [1.0, 2.5],
     "boxes": {"30": [10, 20, 60, 80], "31": [12, 20, 62, 80]}, "bbox_format": "xyxy",
     "question": "What is the man holding?", "answer": "a cup"}
    {"id": "v2", "video": "frames/b/", "fps": 10, "frames": [4, 9], "boxes": {},
     "question": "...", "answer": "..."}

- ``video``: a video file (decoded with ``transformers.video_utils.load_video`` and the first installed
  backend of decord, PyAV, OpenCV, torchcodec, unless ``video_backend`` is given) or a folder of frame
  images (``.png`` / ``.jpg`` / ``.jpeg`` / ``.bmp`` / ``.webp``, in natural name order: ``2.png`` before
  ``10.png``), which needs ``fps``. A file's ``fps`` is its container's; a row's ``fps`` overrides it.
- ``clip`` (optional, seconds ``[t0, t1)``): the part of the source shown to the model (default: all).
- The temporal target: ``segment`` (seconds, ``[t0, t1)``) or ``frames`` (source frame indices
  ``[first, last]``, inclusive); neither: the whole clip. It must lie inside the clip.
- ``boxes`` (required): ``{source frame index: [4 numbers]}`` in ``bbox_format`` (``xyxy``, the default, or
  ``xywh``; parsed by :mod:`.boxes` as every reader's) on frames inside the segment; ``{}`` = the whole frame
  on every frame of the segment.

Frame sampling (here, once; processors never resample: see ``core_eval.prompting``). The clip's source
frames are kept with a stride ``s``: ``round(source fps / sample_fps)`` (``1`` without ``sample_fps``),
raised to ``ceil(n / max_frames)`` when more than ``max_frames`` would be kept. The sample's
``Video`` then has ``fps = source fps / s`` and ``start`` = the first kept frame's time; ``meta`` records
``frame_indices`` (the kept source frames), ``source_fps``, ``source_frames``, ``segment_frames`` and, as
sampling leaves them out, ``boxes_not_sampled`` (boxes on frames that were not kept) and
``frames_without_box`` (kept frames in the segment with no box: not targets). Box frames are source
indices in the file and kept-frame positions in the sample (``Box(frame=k)``). A segment with no kept
frame is an error (raise ``sample_fps`` or ``max_frames``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from core_eval.probes.jsonl import read_rows
from core_eval.probes.readers.boxes import check_box_format, parse_box
from core_eval.probes.types import Box, LazyImages, ProbeArgumentError, ProbeDataError, ProbeSample, Video

__all__ = ["VideoFileFrames", "pick_video_backend", "read_video_jsonl", "read_video_probes"]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
BACKENDS = ("decord", "pyav", "opencv", "torchcodec")
DEFAULT_MAX_FRAMES = 32
_REQUIRED = ("video", "question", "answer", "boxes")
_KNOWN = {*_REQUIRED, "id", "fps", "clip", "segment", "frames", "bbox_format", "aliases", "family", "meta",
          "sample_fps", "max_frames"}
_EPS = 1e-9


def pick_video_backend(name: str | None = None) -> str:
    """The ``load_video`` backend to decode files with: ``name`` (checked), else the first installed of
    :data:`BACKENDS`."""
    from transformers.utils import is_av_available, is_cv2_available, is_decord_available, is_torchcodec_available

    available = {"decord": is_decord_available(), "pyav": is_av_available(), "opencv": is_cv2_available(),
                 "torchcodec": is_torchcodec_available()}
    if name is not None:
        if name not in available:
            raise ProbeArgumentError(f"video_backend={name!r}; use one of {', '.join(BACKENDS)}")
        if not available[name]:
            package = {"pyav": "av", "opencv": "opencv-python"}.get(name, name)
            raise ProbeArgumentError(f"video_backend={name!r} is not installed (pip install {package})")
        return name
    for b in BACKENDS:
        if available[b]:
            return b
    raise ProbeArgumentError("no video decoder is installed: pip install decord (or av, opencv-python, torchcodec), "
                             "or give each row a folder of frame images")


@functools.lru_cache(maxsize=8)
def _decode(path: str, indices: tuple[int, ...], backend: str) -> tuple[Image.Image, ...]:
    from transformers.video_utils import load_video

    frames, _ = load_video(path, backend=backend, sample_indices_fn=lambda metadata, **kw: list(indices))
    if len(frames) != len(indices):
        raise ProbeDataError(f"{path}: the {backend} decoder returned {len(frames)} frames for the {len(indices)} "
                             "kept ones (a broken or variable-frame-rate file?); re-encode it or pass a frame folder")
    return tuple(Image.fromarray(f).convert("RGB") for f in frames)


class VideoFileFrames(Sequence):
    """Read-only list of the kept frames of a video file, decoded on first access (a few videos cached).

    ``sizes`` holds the ``(width, height)`` of every kept frame, read at validation time.
    """

    def __init__(self, path: str | Path, indices: Sequence[int], size: tuple[int, int], backend: str):
        self.path, self.indices, self.backend = Path(path), tuple(int(i) for i in indices), backend
        self.sizes = [tuple(size)] * len(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        frames = _decode(str(self.path), self.indices, self.backend)
        return list(frames[i]) if isinstance(i, slice) else frames[i]

    def __repr__(self) -> str:
        return f"VideoFileFrames({str(self.path)!r}, {len(self)} frames)"


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Source:
    """What validation needs of a video: frame count, fps, frame size, and how to get the kept frames."""

    def __init__(self, n: int, fps: float | None, size: tuple[int, int], frames=None, path=None, backend=None):
        self.n, self.fps, self.size, self.paths, self.path, self.backend = n, fps, size, frames, path, backend

    def kept(self, indices: list[int]):
        if self.paths is not None:
            return LazyImages([self.paths[i] for i in indices], [self.size] * len(indices))
        return VideoFileFrames(self.path, indices, self.size, self.backend)


def _open_source(fp: Path, raw: str, backend: str | None, errs: list[str]) -> _Source | None:
    if fp.is_dir():
        files = sorted((p for p in fp.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
        if not files:
            errs.append(f"'video' folder {raw!r} (resolved to {fp}) holds no frame images ({', '.join(FRAME_SUFFIXES)})")
            return None
        sizes = set()
        for f in files:
            try:
                with Image.open(f) as im:
                    sizes.add(im.size)
            except Exception as e:  # noqa: BLE001  (PIL raises several types)
                errs.append(f"frame file unreadable: {f} ({type(e).__name__}: {e})")
                return None
        if len(sizes) != 1:
            errs.append(f"'video' folder {raw!r}: frames differ in size {sorted(sizes)}; resize them to one size")
            return None
        return _Source(len(files), None, sizes.pop(), frames=files)
    if not fp.is_file():
        errs.append(f"'video' not found: {raw!r} (resolved to {fp}); give a video file or a folder of frames")
        return None
    try:
        backend = pick_video_backend(backend)
        from transformers.video_utils import load_video

        seen = {}

        def first(metadata, **kw):
            seen["m"] = metadata
            return [0]

        frame, _ = load_video(str(fp), backend=backend, sample_indices_fn=first)
    except ProbeArgumentError as e:
        errs.append(str(e))
        return None
    except Exception as e:  # noqa: BLE001  (decoders raise many types)
        errs.append(f"video file unreadable with {backend}: {raw!r} ({type(e).__name__}: {e})")
        return None
    m = seen["m"]
    if not m.total_num_frames:
        errs.append(f"video file {raw!r} has no frames")
        return None
    h, w = frame.shape[1:3]
    return _Source(int(m.total_num_frames), float(m.fps) if m.fps else None, (int(w), int(h)), path=fp, backend=backend)


def _span(row, key: str, errs: list[str]):
    v = row[key]
    if not (isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v)):
        errs.append(f"'{key}' must be two numbers [start, end], got {json.dumps(v)}")
        return None
    return float(v[0]), float(v[1])


def _parse_row(row, lineno: int, src: Path, root: Path, seen: dict, sample_fps, max_frames, backend):
    """Return ``(sample | None, errors)`` for one decoded row."""
    if not isinstance(row, dict):
        return None, [f"expected a JSON object, got {type(row).__name__}"]
    errs: list[str] = []
    unknown = sorted(set(row) - _KNOWN)
    if unknown:
        errs.append(f"unknown key(s) {unknown}; known keys: {sorted(_KNOWN)} (put your own fields under 'meta')")
    for k in _REQUIRED:
        if k not in row:
            errs.append(f"missing field {k!r}" + (" (use {} for the whole frames of the segment)" if k == "boxes" else ""))
    q, a = row.get("question"), row.get("answer")
    if "question" in row and not (isinstance(q, str) and q.strip()):
        errs.append("'question' must be a non-empty string")
    if "answer" in row and (isinstance(a, bool) or not isinstance(a, (str, int, float)) or str(a).strip() == ""):
        errs.append("'answer' must be a non-empty string or number")
    aliases = row.get("aliases", [])
    if not (isinstance(aliases, list) and all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                               for x in aliases)):
        errs.append("'aliases' must be a list of strings")
    sid = row.get("id", f"{src.stem}:{lineno}")
    if isinstance(sid, bool) or not isinstance(sid, (str, int)):
        errs.append("'id' must be a string")
    elif str(sid) in seen:
        errs.append(f"duplicate id {str(sid)!r} (first at line {seen[str(sid)]})")
    family, meta = row.get("family", "video"), row.get("meta", {})
    if not isinstance(family, str):
        errs.append("'family' must be a string")
    if not isinstance(meta, dict):
        errs.append("'meta' must be an object")
    fmt = row.get("bbox_format", "xyxy")
    if check_box_format(fmt):
        errs.append(check_box_format(fmt))
    s_fps = row.get("sample_fps", sample_fps)
    if s_fps is not None and not (_is_num(s_fps) and s_fps > 0):
        errs.append(f"'sample_fps' must be a number > 0, got {json.dumps(s_fps)}")
    m_frames = row.get("max_frames", max_frames)
    if not (_is_int(m_frames) and m_frames >= 1):
        errs.append(f"'max_frames' must be an integer >= 1, got {json.dumps(m_frames)}")
    if "segment" in row and "frames" in row:
        errs.append("give either 'segment' (seconds) or 'frames' (source frame indices), not both")
    raw_boxes = row.get("boxes", {})
    if not isinstance(raw_boxes, dict):
        errs.append("'boxes' must be an object {source frame index: [4 numbers]} ({} = whole frames)")
    raw_video = row.get("video")
    if "video" in row and not (isinstance(raw_video, str) and raw_video):
        errs.append("'video' must be a path string (a video file or a folder of frames)")
    if errs:
        return None, errs

    fp = Path(raw_video) if os.path.isabs(raw_video) else root / raw_video
    source = _open_source(fp, raw_video, backend, errs)
    if source is None:
        return None, errs
    fps = row.get("fps", source.fps)
    if fps is None:
        return None, [f"'fps' is required for a folder of frames ({raw_video!r}): the frame rate the frames were taken at"]
    if not (_is_num(fps) and fps > 0):
        return None, [f"'fps' must be a number > 0, got {json.dumps(fps)}"]
    n, (w, h) = source.n, source.size
    duration = n / fps
    where = f"(the video has {n} frames at {fps:g} fps: frames 0..{n - 1}, {duration:g} s)"

    def frames_in(t0, t1):  # source frames whose time lies in [t0, t1)
        return [i for i in range(n) if t0 - _EPS <= i / fps < t1 - _EPS]

    def in_seconds(key):  # the source frames of a [t0, t1) span in seconds, or None (errors noted)
        sp = _span(row, key, errs)
        if sp is None:
            return None
        if not (0 <= sp[0] < sp[1] <= duration + _EPS):
            errs.append(f"'{key}' {list(sp)} lies outside the video {where}; use 0 <= start < end <= {duration:g}")
            return None
        got = frames_in(*sp)
        if not got:
            errs.append(f"'{key}' {list(sp)} holds no frame {where}")
        return got or None

    clip = in_seconds("clip") if "clip" in row else list(range(n))
    if "segment" in row:
        seg = in_seconds("segment")
    elif "frames" in row:
        fr = row["frames"]
        seg = None
        if not (isinstance(fr, list) and len(fr) == 2 and all(_is_int(x) for x in fr)):
            errs.append(f"'frames' must be two integers [first, last] (source frame indices), got {json.dumps(fr)}")
        elif not 0 <= fr[0] <= fr[1] < n:
            errs.append(f"'frames' {fr} lies outside the video {where}; use 0 <= first <= last <= {n - 1}")
        else:
            seg = list(range(fr[0], fr[1] + 1))
    else:
        seg = list(clip) if clip else None
    if errs:
        return None, errs
    if seg[0] < clip[0] or seg[-1] > clip[-1]:
        errs.append(f"the target segment (source frames {seg[0]}..{seg[-1]}) is not inside the clip (frames "
                    f"{clip[0]}..{clip[-1]}); widen 'clip' or shorten the segment")
    seg_set = set(seg)
    boxes_by_frame: dict[int, tuple[float, float, float, float]] = {}
    for key, box in raw_boxes.items():
        at = f"boxes[{key!r}]"
        if not re.fullmatch(r"\d+", str(key)):
            errs.append(f"{at}: keys are source frame indices (non-negative integers)")
            continue
        k = int(key)
        if k >= n:
            errs.append(f"{at}: frame {k} out of range {where}")
            continue
        if k not in seg_set:
            errs.append(f"{at}: frame {k} is outside the target segment (frames {seg[0]}..{seg[-1]}); drop the box "
                        "or widen 'segment' / 'frames'")
            continue
        xyxy, err = parse_box(box, fmt, (w, h), at)
        if err:
            errs.append(err)
            continue
        boxes_by_frame[k] = xyxy
    if errs:
        return None, errs

    stride = 1 if s_fps is None else max(1, round(fps / s_fps))
    stride = max(stride, math.ceil(len(clip) / m_frames))
    kept = clip[::stride]
    in_seg = [j for j, i in enumerate(kept) if i in seg_set]
    if not in_seg:
        return None, [f"no kept frame lies in the target segment (frames {seg[0]}..{seg[-1]}) with a stride of "
                      f"{stride} source frames; raise sample_fps or max_frames, or widen the segment"]
    if raw_boxes:
        boxes = [Box(0, *boxes_by_frame[kept[j]], frame=j) for j in in_seg if kept[j] in boxes_by_frame]
        if not boxes:
            return None, [f"none of the boxed frames {sorted(boxes_by_frame)} is kept by sampling (kept: {kept}); "
                          "raise sample_fps or max_frames"]
    else:
        boxes = [Box(0, 0, 0, w, h, frame=j) for j in in_seg]
    seen[str(sid)] = lineno
    record = {
        "source": str(fp), "source_fps": fps, "source_frames": n, "frame_indices": kept,
        "segment_frames": [seg[0], seg[-1]], "boxes_not_sampled": len(set(boxes_by_frame) - set(kept)),
        "frames_without_box": [kept[j] for j in in_seg if kept[j] not in boxes_by_frame] if raw_boxes else [],
    }
    video = Video(source.kept(kept), fps=fps / stride, start=kept[0] / fps)
    sample = ProbeSample(id=str(sid), images=[], question=q, answer=str(a), aliases=[str(x) for x in aliases],
                         boxes=boxes, family=family, meta={**meta, "video": record}, videos=[video])
    return sample, []


def read_video_jsonl(path: str | os.PathLike, *, video_root: str | os.PathLike | None = None,
                     sample_fps: float | None = None, max_frames: int = DEFAULT_MAX_FRAMES,
                     video_backend: str | None = None, limit: int | None = None) -> list[ProbeSample]:
    """Read and validate a video grounding JSONL (see the module docstring); frames stay on disk (folder
    frames opened, file frames decoded, on first access). ``sample_fps`` / ``max_frames``: the frame
    sampling of every row (a row's own keys override them); relative ``video`` paths resolve against
    ``video_root``, else the JSONL's folder. ``limit``: read (and validate) only the first ``limit`` rows.

    Raises :class:`ProbeDataError` listing every bad row as ``line N: reason``, before anything is loaded.
    """
    src = Path(path)
    root = Path(video_root) if video_root is not None else src.parent
    if video_backend is not None:
        pick_video_backend(video_backend)  # a bad backend name fails before any row is read
    seen: dict = {}
    return read_rows(src, lambda row, lineno: _parse_row(row, lineno, src, root, seen, sample_fps, max_frames,
                                                         video_backend),
                     limit=limit, hint="\nSee docs/probe_data_video.md for the row format.")


#: The knobs ``--probes video:<rows.jsonl>`` takes (``--knobs '{"sample_fps": 1}'``).
VIDEO_KNOBS = ("sample_fps", "max_frames", "video_backend")


def read_video_probes(path: str | os.PathLike, n: int | None = None, *, video_root: str | os.PathLike | None = None,
                      **knobs: Any) -> list[ProbeSample]:
    """:func:`read_video_jsonl` for ``--probes video:<path>`` (the first ``n`` rows): knobs checked by name first."""
    from core_eval.probes.readers import check_options

    check_options(f"video:{path}", knobs, VIDEO_KNOBS)
    return read_video_jsonl(path, video_root=video_root, limit=n, **knobs)
