"""``video_needle``: a generated video probe family with target tubes (offline, deterministic).

Each sample is one short video of ``n_frames`` frames (``width x height``, ``fps`` frames per second)
on a white background. ``n_distractors`` shapes stand still in every frame; the *needle*, a shape of
another colour (``ask="colour"``) or another shape (``ask="shape"``), is visible only in the frames
``first .. first + length - 1`` (``min_len <= length <= max_len``), in a free slot of a
``cols x rows`` slot grid; with ``moving=True`` it jumps to another free slot on every frame. The
question asks for its colour (or shape); the target is its *tube*: one ``Box(0, ..., frame=k)`` per
frame it is visible in. Frames are drawn without anti-aliasing (``draw.draw_shape``).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from core_eval.probes.draw import BACKGROUND, PALETTE, SHAPES, draw_shape
from core_eval.probes.families import PROBE_FAMILIES, _choice, _family, _frac, _int
from core_eval.probes.types import Box, Video

__all__ = ["video_needle"]

_QUESTION = {
    "colour": "A shape appears in only some of the frames of the video. What colour is it? Answer with the colour.",
    "shape": "A shape appears in only some of the frames of the video. What shape is it? Answer with the shape.",
}


def _slots(width: int, height: int, cols: int, rows: int) -> list[tuple[int, int, int, int]]:
    cw, ch = width // cols, height // rows
    return [(c * cw, r * ch, (c + 1) * cw, (r + 1) * ch) for r in range(rows) for c in range(cols)]


def _check_video(k):
    _int(k, "n_frames", 1, 256)
    _int(k, "width", 16, 4096)
    _int(k, "height", 16, 4096)
    _frac(k, "fps", 0.01, 240)
    _int(k, "cols", 1, 16)
    _int(k, "rows", 1, 16)
    _int(k, "min_len", 1, k["n_frames"])
    _int(k, "max_len", k["min_len"], k["n_frames"])
    _frac(k, "shape_scale", 0.2, 0.9)
    _choice(k, "ask", tuple(_QUESTION))
    others = len(PALETTE) - 1 if k["ask"] == "colour" else len(SHAPES) - 1
    _int(k, "n_distractors", 0, min(others, k["cols"] * k["rows"] - 1))
    if k["moving"] and k["cols"] * k["rows"] - k["n_distractors"] < 2:
        raise ValueError("moving=True needs at least 2 free slots: lower n_distractors or use more cols / rows")
    if min(k["width"] // k["cols"], k["height"] // k["rows"]) < 8:
        raise ValueError(f"slots too small: {k['width']}x{k['height']} / ({k['cols']} x {k['rows']}) < 8 px")


@_family("video_needle", _check_video)
def _video_needle(rng, n_frames=8, width=112, height=84, fps=2.0, cols=4, rows=3, min_len=2, max_len=4,
                  n_distractors=2, ask="colour", moving=True, shape_scale=0.7):
    """A shape visible in only some frames of a video: "What colour is it?" -> its colour.

    Boxes = the needle's tube (one per frame it is visible in, ``frame=k``); ``meta["segment"]`` is its
    first and last frame, ``meta["segment_seconds"]`` the same as ``[first / fps, (last + 1) / fps)``.
    """
    colours, shapes = list(PALETTE), list(SHAPES)
    needle = (rng.choice(colours), rng.choice(shapes))
    axis = 0 if ask == "colour" else 1
    pool = [c for c in (colours if axis == 0 else shapes) if c != needle[axis]]
    picked = rng.sample(pool, n_distractors)  # distinct in the asked attribute, never the needle's
    distractors = [(v, rng.choice(shapes)) if axis == 0 else (rng.choice(colours), v) for v in picked]
    slots = _slots(width, height, cols, rows)
    taken = rng.sample(range(len(slots)), n_distractors)
    free = [i for i in range(len(slots)) if i not in taken]
    length = rng.randint(min_len, max_len)
    first = rng.randrange(n_frames - length + 1)
    path = [rng.choice(free)]
    for _ in range(length - 1):
        path.append(rng.choice([s for s in free if s != path[-1]]) if moving else path[-1])

    def placed(slot):
        x0, y0, x1, y1 = slots[slot]
        size = int(min(x1 - x0, y1 - y0) * shape_scale)
        x = x0 + rng.randint(0, (x1 - x0) - size)
        y = y0 + rng.randint(0, (y1 - y0) - size)
        return (x, y, x + size, y + size)

    still = [(t, placed(s)) for t, s in zip(distractors, taken)]
    at = {}  # the needle's place in each slot it visits (a still needle keeps its box)
    for s in path:
        at.setdefault(s, placed(s))
    tube = {first + j: at[s] for j, s in enumerate(path)}
    frames = []
    for f in range(n_frames):
        im = Image.new("RGB", (width, height), BACKGROUND)
        d = ImageDraw.Draw(im)
        for (colour, shape), box in still:
            draw_shape(d, shape, PALETTE[colour], box)
        if f in tube:
            draw_shape(d, needle[1], PALETTE[needle[0]], tube[f])
        frames.append(im)
    last = first + length - 1
    return {
        "videos": [Video(frames, fps=float(fps), start=0.0)],
        "question": _QUESTION[ask],
        "answer": needle[axis],
        "boxes": [Box(0, *tube[f], frame=f) for f in sorted(tube)],
        "meta": {"needle": list(needle), "segment": [first, last], "segment_seconds": [first / fps, (last + 1) / fps],
                 "tube": {str(f): list(b) for f, b in sorted(tube.items())},
                 "distractors": [{"type": list(t), "box": list(b)} for t, b in still]},
    }


video_needle = PROBE_FAMILIES["video_needle"]
