"""Region -> token mapping: which visual tokens' image patches overlap a target box.

The *target region* of a probe (DESIGN.md section 2) is the set of visual tokens whose image
patch overlaps the probe's bounding box(es). Where a token's patch lies in the original image
depends on each family's real preprocessing (resize, crop, tiling, patch merging, pooling), so
every family module (``core_eval/adapters/families/``) carries one :class:`RegionRule`
(``Family.region``). A rule turns one image (its original size plus the processor's settings and
batch outputs) into one rectangle per visual token of that image, *in the order the LM sees the
tokens*, in original-image pixel coordinates (the inverse of the resize/crop). Everything is
computed from the processor's own config and outputs; nothing is hard-coded per checkpoint. This
module holds only the shared geometry and the batch API; the family is always given (a Family, its
name, a ModelAdapter or the model config), never guessed from the processor's class.

Coordinates follow :class:`core_eval.probes.Box`: pixels, half-open ``[x0, x1) x [y0, y1)``,
origin top-left, pixel ``i`` covering ``[i, i + 1)``. A resize from ``W`` to ``W'`` maps the
edges of the image onto each other (torchvision / PIL convention), so processed coordinate
``u`` is original coordinate ``u * W / W'``.

Overlap rule. A token is in the target region iff its patch rectangle, clipped to the image,
and some box of the *same image*, clipped to the image, intersect with positive width *and*
positive height (more than ``1e-6`` px, which absorbs float error, so a box that exactly
covers one patch never leaks into its neighbours). With ``min_overlap=f > 0`` the intersection
with a single box must also cover at least the fraction ``f`` of the token's clipped patch area.
Consequences: tokens that see only padding (patch entirely outside the image) and tokens with
no patch at all (LLaVA's CLS token under ``vision_feature_select_strategy="full"``) are visual
but never targets; with a center crop (LLaVA/CLIP), image content outside the crop has no
token, so a box lying entirely outside the crop maps to nothing.

Videos. A rule may also map videos (``RegionRule.video_rects``): one row per video token, in LM
order, ``[f0, f1, x0, y0, x1, y1]``: the token sees frames ``f0 <= k < f1`` of the frames the
processor was given (the sample's ``Video.frames``; processors never resample them, see
:mod:`core_eval.prompting`) and the rectangle, in original frame pixels, on each of them. A temporal
patch of ``tp`` frames (Qwen, GLM: 2) gives ``f1 - f0 = tp``; the last one is clipped to the real
frames when the processor padded it by repeating the last frame. A per-frame box ``Box(v, ...,
frame=k)`` hits a video token of video ``v`` iff ``f0 <= k < f1`` and the rectangles overlap (same
overlap rule as images). In a prompt the images come before the videos (``prompting.messages_for``);
families whose video frames reuse the image token (InternVL, GLM) are split in that order.

Entry points: :func:`region_masks` (``(B, T)`` target and visual masks for a processed batch),
:func:`sample_region_masks` (the same from probe samples), :func:`token_rects` (per position
rectangles), :func:`batch_video_rects` (per position video frames and rectangles),
:func:`image_token_rects` (one image) and :func:`video_token_rects` (one video).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

__all__ = [
    "ImageContext",
    "RegionMappingError",
    "RegionMasks",
    "RegionRule",
    "TokenRects",
    "VideoContext",
    "VideoTokenRects",
    "batch_output",
    "batch_video_rects",
    "center_crop_offset",
    "frame_groups",
    "grid_cells",
    "image_token_id_of",
    "image_token_rects",
    "no_patch",
    "region_masks",
    "region_rule",
    "resized_hw",
    "sample_region_masks",
    "size_get",
    "square_side",
    "tile_cells",
    "token_rects",
    "video_rows",
    "video_rule",
    "video_token_id_of",
    "video_token_rects",
]

#: Minimum intersection extent (pixels, per axis) that counts as overlap.
OVERLAP_TOL = 1e-6


class RegionMappingError(ValueError):
    """A region mapping that cannot be done (unknown family, inputs that do not match)."""


# --------------------------------------------------------------------------- per-image context
@dataclass(frozen=True)
class ImageContext:
    """What a rule sees about one image.

    Attributes:
        processor: the multimodal processor that built the batch.
        width, height: original image size in pixels.
        index: 0-based position of the image among all images of the batch, in processor order
            (sample 0's images, then sample 1's, ...); indexes per-image outputs such as
            ``image_grid_thw`` rows or LLaVA's ``pixel_values``.
        outputs: the processor's batch outputs (may be empty).
        images_kwargs: image kwargs passed at call time (``processor(..., do_pan_and_scan=True)``).
    """

    processor: Any
    width: int
    height: int
    index: int = 0
    outputs: Mapping[str, Any] = field(default_factory=dict)
    images_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_processor(self):
        return self.processor.image_processor

    def setting(self, name: str, default: Any = None) -> Any:
        """Effective image-processor setting: call-time kwarg > processor-class default > attribute.

        This is the precedence ``ProcessorMixin`` applies when it calls the image processor.
        """
        for source in (self.images_kwargs, getattr(self.processor, "images_kwargs", None) or {}):
            if source.get(name) is not None:
                return source[name]
        value = getattr(self.image_processor, name, None)
        return default if value is None else value


@dataclass(frozen=True)
class VideoContext:
    """What a video rule sees about one video.

    Attributes:
        processor: the multimodal processor that built the batch.
        n_frames: frames the processor was given (``len(Video.frames)``; never resampled).
        width, height: frame size in pixels.
        index: 0-based position of the video among all videos of the batch, in processor order;
            indexes per-video outputs such as ``video_grid_thw`` rows.
        outputs: the processor's batch outputs (may be empty).
        videos_kwargs: video kwargs passed at call time.
    """

    processor: Any
    n_frames: int
    width: int
    height: int
    index: int = 0
    outputs: Mapping[str, Any] = field(default_factory=dict)
    videos_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def video_processor(self):
        vp = getattr(self.processor, "video_processor", None)
        if vp is None:
            raise RegionMappingError(f"{type(self.processor).__name__} has no video_processor")
        return vp

    def setting(self, name: str, default: Any = None) -> Any:
        """Effective video-processor setting: call-time kwarg > video-processor attribute."""
        if self.videos_kwargs.get(name) is not None:
            return self.videos_kwargs[name]
        value = getattr(self.video_processor, name, None)
        return default if value is None else value


def size_get(size: Any, key: str) -> Any:
    """Read ``key`` from a size dict or ``SizeDict``."""
    if size is None:
        return None
    if isinstance(size, Mapping):
        return size.get(key)
    return getattr(size, key, None)


def batch_output(outputs: Mapping[str, Any], key: str) -> Any:
    try:
        return outputs[key] if key in outputs else None
    except TypeError:
        return None


# --------------------------------------------------------------------------- geometry helpers
def grid_cells(x0: float, y0: float, x1: float, y1: float, rows: int, cols: int) -> torch.Tensor:
    """``(rows * cols, 4)`` cells ``[x0, y0, x1, y1]`` of a regular grid over a rectangle, row-major."""
    xs = x0 + (x1 - x0) * torch.arange(cols + 1, dtype=torch.float64) / cols
    ys = y0 + (y1 - y0) * torch.arange(rows + 1, dtype=torch.float64) / rows
    gx0, gy0 = torch.meshgrid(xs[:-1], ys[:-1], indexing="xy")
    gx1, gy1 = torch.meshgrid(xs[1:], ys[1:], indexing="xy")
    return torch.stack([gx0, gy0, gx1, gy1], dim=-1).reshape(-1, 4)


def tile_cells(width: float, height: float, rows: int, cols: int, n: int) -> torch.Tensor:
    """Token cells of a ``rows x cols`` tiling of the whole image (tiles row-major), ``n x n`` tokens per tile."""
    tw, th = width / cols, height / rows
    return torch.cat([grid_cells(c * tw, r * th, (c + 1) * tw, (r + 1) * th, n, n)
                      for r in range(rows) for c in range(cols)])


def no_patch(n: int, columns: int = 4) -> torch.Tensor:
    """Rows for visual tokens that have no image patch (e.g. CLS): NaN, so they never overlap
    (``columns=6`` for video rows)."""
    return torch.full((n, columns), float("nan"), dtype=torch.float64)


def frame_groups(n_frames: int, per_group: int) -> list[tuple[int, int]]:
    """Half-open frame ranges ``[(f0, f1), ...]`` of consecutive groups of ``per_group`` frames; the
    last group is clipped to ``n_frames`` (a processor pads it by repeating the last frame)."""
    return [(f, min(f + per_group, n_frames)) for f in range(0, n_frames, per_group)]


def video_rows(groups: Sequence[tuple[float, float]], cells: torch.Tensor) -> torch.Tensor:
    """``(len(groups) * len(cells), 6)`` rows ``[f0, f1, x0, y0, x1, y1]``: every cell, for each frame group in turn."""
    n = len(cells)
    frames = torch.tensor(list(groups), dtype=torch.float64).repeat_interleave(n, dim=0)
    return torch.cat([frames, cells.to(torch.float64).repeat(len(groups), 1)], dim=1)


def square_side(n_tokens: int, what: str) -> int:
    side = math.isqrt(int(n_tokens))
    if side * side != n_tokens:
        raise RegionMappingError(f"{what}={n_tokens} is not a square number of tokens; cannot lay out a token grid")
    return side


def resized_hw(height: int, width: int, size: Any) -> tuple[int, int]:
    """Output ``(height, width)`` of ``TorchvisionBackend.resize`` for a size dict."""
    from transformers.image_transforms import get_size_with_aspect_ratio
    from transformers.image_utils import get_image_size_for_max_height_width

    se, le = size_get(size, "shortest_edge"), size_get(size, "longest_edge")
    if se and le:
        return tuple(get_size_with_aspect_ratio((height, width), se, le))
    if se:  # shortest edge to `se`, the other one truncated (transformers' get_resize_output_image_size)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = se, int(se * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if size_get(size, "max_height") and size_get(size, "max_width"):
        max_hw = size_get(size, "max_height"), size_get(size, "max_width")
        return tuple(get_image_size_for_max_height_width((height, width), *max_hw))
    if size_get(size, "height") and size_get(size, "width"):
        return size_get(size, "height"), size_get(size, "width")
    raise RegionMappingError(f"unsupported image-processor size {size!r}")


def center_crop_offset(n: int, crop: int) -> int:
    """Offset ``o`` with ``crop_coord = resized_coord - o`` for ``TorchvisionBackend.center_crop`` on one axis."""
    if crop > n:  # padded symmetrically (left/top gets the floor), then nothing is cut
        return -((crop - n) // 2)
    return int((n - crop) / 2.0)


# --------------------------------------------------------------------------- the rule record
def image_token_id_of(processor) -> int:
    """``processor.image_token_id`` (the default ``RegionRule.image_token``)."""
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        raise RegionMappingError(f"{type(processor).__name__} has no image_token_id")
    return int(tid)


def _no_video(processor) -> tuple[int, ...]:
    return ()


def video_token_id_of(processor) -> int:
    """``processor.video_token_id`` (the default ``RegionRule.video_token``)."""
    tid = getattr(processor, "video_token_id", None)
    if tid is None:
        raise RegionMappingError(f"{type(processor).__name__} has no video_token_id")
    return int(tid)


@dataclass(frozen=True)
class RegionRule:
    """How one family's image patches become LM visual tokens (``Family.region``).

    Attributes:
        summary: one line for listings and errors.
        token_rects: ``ctx -> (n_tokens, 4)`` float64 ``[x0, y0, x1, y1]`` per visual token of one
            image, in LM order, in original-image pixels (NaN rows: tokens without a patch).
        image_token: ``processor -> id`` of the token the image features replace.
        extra_visual_tokens: ``processor -> ids`` also counted as visual (video tokens).
        video_rects: ``ctx -> (n_tokens, 6)`` float64 ``[f0, f1, x0, y0, x1, y1]`` per visual token of
            one video, in LM order (frames ``f0 <= k < f1``, rectangle in original frame pixels; NaN
            rows: tokens without a patch); ``None``: the family maps no videos.
        video_token: ``processor -> id`` of the token the video features replace (the image token's
            id where frames are written as images).
        videos_with_images: whether one prompt may hold images and videos together (GLM-4.1V's model
            scatters video features over every image-token position, so it may not).
    """

    summary: str
    token_rects: Callable[[ImageContext], torch.Tensor]
    image_token: Callable[[Any], int] = image_token_id_of
    extra_visual_tokens: Callable[[Any], tuple[int, ...]] = _no_video
    video_rects: Callable[[VideoContext], torch.Tensor] | None = None
    video_token: Callable[[Any], int] = video_token_id_of
    videos_with_images: bool = True


def _family(family: Any, processor: Any = None):
    """A :class:`~core_eval.adapters.Family` from a Family, its name, a ``pkg.mod:obj`` path, a
    ``ModelAdapter`` or the model's config; ``None``: the family the processor was loaded for
    (``core_eval.load`` and ``core_eval.testing.load_processor`` record it from the checkpoint's
    config). The family is never guessed from a processor's class."""
    from core_eval.adapters.base import Family, bound_family, family_for_config, resolve_family

    if family is None:
        family = bound_family(processor)
    if family is None:
        raise RegionMappingError(
            f"region mapping needs the model family, and this {type(processor).__name__} was not loaded through "
            "core_eval: pass family= (a Family or its name, a ModelAdapter, or the model's config)"
        )
    if isinstance(family, (Family, str)):
        return resolve_family(family)
    if isinstance(getattr(family, "family", None), Family):  # a ModelAdapter
        return family.family
    if hasattr(family, "model_type"):  # a transformers config
        return family_for_config(family)
    raise TypeError(f"family must be a Family, its name, a ModelAdapter or a model config, got {family!r}")


def families_with_video_rule() -> list[str]:
    """Names of the registered families whose region rule maps video tokens, sorted."""
    from core_eval.adapters.base import registered_families

    return sorted(n for n, f in registered_families().items() if f.region is not None and f.region.video_rects is not None)


def region_rule(family: Any) -> RegionRule:
    """The :class:`RegionRule` of a family (see :func:`_family` for what ``family`` may be), or a clear error."""
    from core_eval.adapters.base import registered_families

    fam = _family(family)
    if fam.region is None:
        why = " (text-only models have no visual tokens)" if fam.vision is None else ""
        with_rule = sorted(n for n, f in registered_families().items() if f.region is not None)
        raise RegionMappingError(
            f"family {fam.name!r} has no region-to-token mapping{why}. Families with one: {', '.join(with_rule)}. "
            "Give the family a region=RegionRule(...) (see core_eval/adapters/families/llava.py)."
        )
    return fam.region


def video_rule(family: Any) -> RegionRule:
    """The :class:`RegionRule` of a family that maps videos (``video_rects``), or a clear error."""
    fam = _family(family)
    rule = region_rule(fam)
    if rule.video_rects is None:
        with_rule = families_with_video_rule()
        raise RegionMappingError(
            f"family {fam.name!r} has no video-to-token mapping (its processor takes no video, or core_eval does not "
            f"map its video tokens), so video probes cannot be scored on it. Families with one: "
            f"{', '.join(with_rule)}. Use an image probe set, or give the family's RegionRule a video_rects rule."
        )
    return rule


# --------------------------------------------------------------------------- public API
def _size_of(image: Any) -> tuple[int, int]:
    """``(width, height)`` of a PIL image or a ``(width, height)`` pair."""
    if hasattr(image, "size") and not isinstance(image, (tuple, list)):
        w, h = image.size
    else:
        w, h = image
    return int(w), int(h)


def _video_dims(video: Any) -> tuple[int, int, int]:
    """``(n_frames, width, height)`` of a :class:`~core_eval.probes.Video` or an ``(n_frames, width, height)`` triple."""
    if hasattr(video, "frames"):
        w, h = video.size
        return len(video.frames), int(w), int(h)
    n, w, h = video
    return int(n), int(w), int(h)


def image_token_rects(processor, image, *, family: Any = None, outputs: Mapping[str, Any] | None = None,
                      index: int = 0, images_kwargs: Mapping[str, Any] | None = None) -> torch.Tensor:
    """``(n_tokens, 4)`` float64 rectangles ``[x0, y0, x1, y1]`` of one image's visual tokens.

    In LM order, in original-image pixels; NaN rows are tokens without a patch. ``image`` is a PIL
    image or ``(width, height)``; ``outputs``/``index`` are the batch outputs and the image's
    position among the batch's images (needed by ``qwen2_vl`` for ``image_grid_thw``; otherwise
    recomputed from the processor's config).
    """
    rule = region_rule(_family(family, processor))
    w, h = _size_of(image)
    ctx = ImageContext(processor, w, h, index, outputs or {}, images_kwargs or {})
    return rule.token_rects(ctx)


def video_token_rects(processor, video, *, family: Any = None, outputs: Mapping[str, Any] | None = None,
                      index: int = 0, videos_kwargs: Mapping[str, Any] | None = None) -> torch.Tensor:
    """``(n_tokens, 6)`` float64 rows ``[f0, f1, x0, y0, x1, y1]`` of one video's visual tokens, in LM order.

    ``video`` is a :class:`~core_eval.probes.Video` or ``(n_frames, width, height)``; ``outputs`` /
    ``index``: the batch outputs and the video's position among the batch's videos (Qwen and GLM read
    ``video_grid_thw`` from them).
    """
    rule = video_rule(_family(family, processor))
    n, w, h = _video_dims(video)
    return rule.video_rects(VideoContext(processor, n, w, h, index, outputs or {}, videos_kwargs or {}))


class TokenRects(NamedTuple):
    """Per-position patch geometry of a processed batch.

    ``rects``: ``(B, T, 4)`` float64, the token's patch rectangle in its image's original pixels
    (NaN for non-image positions and for image tokens without a patch). ``image``: ``(B, T)`` long,
    the 0-based index of the image within its sample (``-1`` for non-image positions).
    ``visual``: ``(B, T)`` bool, image (and video) token positions.
    """

    rects: torch.Tensor
    image: torch.Tensor
    visual: torch.Tensor


class VideoTokenRects(NamedTuple):
    """Per-position video geometry of a processed batch.

    ``rects``: ``(B, T, 4)`` float64 patch rectangle in original frame pixels; ``frames``: ``(B, T, 2)``
    float64 ``[f0, f1)`` frame range (both NaN for non-video positions and video tokens without a
    patch); ``video``: ``(B, T)`` long, the 0-based index of the video within its sample (``-1``:
    not a video token).
    """

    rects: torch.Tensor
    frames: torch.Tensor
    video: torch.Tensor


class RegionMasks(NamedTuple):
    """``target``: ``(B, T)`` bool, visual tokens whose patch overlaps a target box.
    ``visual``: ``(B, T)`` bool, all visual tokens."""

    target: torch.Tensor
    visual: torch.Tensor


def _input_ids(inputs) -> torch.Tensor:
    ids = inputs["input_ids"] if isinstance(inputs, Mapping) or hasattr(inputs, "keys") else inputs
    ids = torch.as_tensor(ids)
    if ids.dim() != 2:
        raise RegionMappingError(f"input_ids must be (B, T), got shape {tuple(ids.shape)}")
    return ids


def _layout(processor, inputs, images, videos, family, images_kwargs, videos_kwargs, image_token_id,
            visual_token_ids) -> tuple[TokenRects, VideoTokenRects]:
    """Image and video token geometry of a batch (see :func:`token_rects` / :func:`batch_video_rects`)."""
    fam = _family(family, processor)
    name, rule = fam.name, region_rule(fam)
    ids = _input_ids(inputs)
    outputs = inputs if isinstance(inputs, Mapping) or hasattr(inputs, "keys") else {}
    B, T = ids.shape
    if len(images) != B:
        raise RegionMappingError(f"{name}: {len(images)} image lists for a batch of {B} rows")
    videos = [[] for _ in range(B)] if videos is None else videos
    if len(videos) != B:
        raise RegionMappingError(f"{name}: {len(videos)} video lists for a batch of {B} rows")
    tid = int(image_token_id) if image_token_id is not None else rule.image_token(processor)
    vis_ids = (tuple(visual_token_ids) if visual_token_ids is not None
               else (tid, *rule.extra_visual_tokens(processor)))
    has_video = any(len(v) for v in videos)
    vrule = video_rule(fam) if has_video else None
    vid = vrule.video_token(processor) if has_video else None
    if has_video and visual_token_ids is None and vid not in vis_ids:
        vis_ids = (*vis_ids, vid)
    visual = torch.zeros((B, T), dtype=torch.bool)
    for v in vis_ids:
        visual |= ids == v
    rects = torch.full((B, T, 4), float("nan"), dtype=torch.float64)
    image = torch.full((B, T), -1, dtype=torch.long)
    vrects = torch.full((B, T, 4), float("nan"), dtype=torch.float64)
    vframes = torch.full((B, T, 2), float("nan"), dtype=torch.float64)
    video = torch.full((B, T), -1, dtype=torch.long)
    g = gv = 0  # image / video index across the batch, in processor order
    for b, sample_images in enumerate(images):
        pos = (ids[b] == tid).nonzero().flatten()
        per_image, sizes = [], []
        for i, im in enumerate(sample_images):
            w, h = _size_of(im)
            sizes.append((w, h))
            per_image.append(rule.token_rects(ImageContext(processor, w, h, g, outputs, images_kwargs or {})))
            g += 1
        per_video, dims = [], []
        for v in videos[b]:
            n, w, h = _video_dims(v)
            dims.append((n, w, h))
            per_video.append(vrule.video_rects(VideoContext(processor, n, w, h, gv, outputs, videos_kwargs or {})))
            gv += 1
        if per_video and sample_images and not vrule.videos_with_images:
            raise RegionMappingError(
                f"{name}: row {b} holds images and videos together, which this family's model cannot take in one "
                "prompt (its video features fill every image-token position); put them in separate samples"
            )
        counts = [len(r) for r in per_image]
        vcounts = [len(r) for r in per_video]
        if per_video and vid == tid:  # frames written with the image token: the images' tokens come first
            if sum(counts) + sum(vcounts) != len(pos):
                raise RegionMappingError(
                    f"{name}: row {b} has {len(pos)} image tokens (id {tid}), but its {len(sizes)} image(s) of sizes "
                    f"(w, h) {sizes} give {counts} tokens and its {len(dims)} video(s) of (frames, w, h) {dims} give "
                    f"{vcounts} under this processor's settings. Pass the same images and videos (images first, as "
                    "prompting.messages_for writes them) and kwargs that built the batch, and do not truncate."
                )
            vpos, pos = pos[sum(counts):], pos[:sum(counts)]
        elif per_video:
            vpos = (ids[b] == vid).nonzero().flatten()
            if sum(vcounts) != len(vpos):
                raise RegionMappingError(
                    f"{name}: row {b} has {len(vpos)} video tokens (id {vid}), but its {len(dims)} video(s) of "
                    f"(frames, w, h) {dims} give {vcounts} tokens under this processor's settings. Pass the same "
                    "videos (frames not resampled by the processor) and videos_kwargs that built the batch."
                )
        if sum(counts) != len(pos):
            raise RegionMappingError(
                f"{name}: row {b} has {len(pos)} image tokens (id {tid}), but its {len(sizes)} image(s) of "
                f"sizes (w, h) {sizes} give {counts} tokens under this processor's settings. Pass the same "
                "images (in prompt order) and images_kwargs that built the batch, and do not truncate."
            )
        start = 0
        for i, r in enumerate(per_image):
            p = pos[start:start + len(r)]
            rects[b, p] = r
            image[b, p] = i
            start += len(r)
        start = 0
        for i, r in enumerate(per_video):
            p = vpos[start:start + len(r)]
            vframes[b, p] = r[:, :2]
            vrects[b, p] = r[:, 2:]
            video[b, p] = i
            start += len(r)
    return TokenRects(rects, image, visual), VideoTokenRects(vrects, vframes, video)


def token_rects(processor, inputs, images: Sequence[Sequence[Any]], *, family: Any = None,
                images_kwargs: Mapping[str, Any] | None = None, image_token_id: int | None = None,
                visual_token_ids: Sequence[int] | None = None, videos: Sequence[Sequence[Any]] | None = None,
                videos_kwargs: Mapping[str, Any] | None = None) -> TokenRects:
    """Patch rectangle of every image token of a processed batch (left or right padded).

    Args:
        processor: the processor that built ``inputs``.
        inputs: its outputs (``input_ids`` plus per-image outputs such as ``image_grid_thw``).
        images: per sample, its images in prompt order (PIL images or ``(width, height)`` pairs).
        family: ``Family``, its name, a ``ModelAdapter`` or the model config (required).
        images_kwargs: image kwargs passed to the processor call, if any.
        image_token_id: override of the image token id (default: from the processor).
        visual_token_ids: ids forming the visual mask (default: image token + the family's video
            token, as ``ModelAdapter.visual_mask``).
        videos: per sample, its videos (``Video`` or ``(n_frames, width, height)``), after its images
            in the prompt; needed where video frames reuse the image token (InternVL, GLM).
        videos_kwargs: video kwargs passed to the processor call, if any.

    The image tokens of each row are split, in order, among that sample's images by each image's
    token count; a count mismatch raises :class:`RegionMappingError`.
    """
    return _layout(processor, inputs, images, videos, family, images_kwargs, videos_kwargs, image_token_id,
                   visual_token_ids)[0]


def batch_video_rects(processor, inputs, videos: Sequence[Sequence[Any]], *, images: Sequence[Sequence[Any]] | None = None,
                      family: Any = None, images_kwargs: Mapping[str, Any] | None = None,
                      videos_kwargs: Mapping[str, Any] | None = None) -> VideoTokenRects:
    """Frame range and patch rectangle of every video token of a processed batch (see
    :func:`token_rects` for the arguments; ``images`` default: none)."""
    ids = _input_ids(inputs)
    images = [[] for _ in range(len(ids))] if images is None else images
    return _layout(processor, inputs, images, videos, family, images_kwargs, videos_kwargs, None, None)[1]


def _box_parts(box: Any) -> tuple[int, int | None, float, float, float, float]:
    """``(image or video index, frame or None, x0, y0, x1, y1)`` of a ``Box`` or ``(image, x0, y0, x1, y1)``."""
    if hasattr(box, "x0"):
        frame = getattr(box, "frame", None)
        return (int(box.image), None if frame is None else int(frame), float(box.x0), float(box.y0), float(box.x1),
                float(box.y1))
    image, x0, y0, x1, y1 = box
    return int(image), None, float(x0), float(y0), float(x1), float(y1)


def _hits(r: torch.Tensor, w: int, h: int, box: tuple[float, float, float, float], min_overlap: float) -> torch.Tensor:
    """``(n,)`` bool: which patch rectangles ``r`` ``(n, 4)`` overlap ``box`` (both clipped to the ``w x h`` image)."""
    x0, y0, x1, y1 = box
    rx0, ry0 = r[:, 0].clamp(0, w), r[:, 1].clamp(0, h)
    rx1, ry1 = r[:, 2].clamp(0, w), r[:, 3].clamp(0, h)
    bx0, by0, bx1, by1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    ix = rx1.clamp(max=bx1) - rx0.clamp(min=bx0)
    iy = ry1.clamp(max=by1) - ry0.clamp(min=by0)
    hit = (ix > OVERLAP_TOL) & (iy > OVERLAP_TOL)  # NaN rows compare False
    if min_overlap > 0:
        area = (rx1 - rx0) * (ry1 - ry0)
        hit &= ix * iy >= min_overlap * area - OVERLAP_TOL
    return hit


def region_masks(processor, inputs, images: Sequence[Sequence[Any]], boxes: Sequence[Sequence[Any]], *,
                 family: Any = None, min_overlap: float = 0.0, images_kwargs: Mapping[str, Any] | None = None,
                 image_token_id: int | None = None, visual_token_ids: Sequence[int] | None = None,
                 videos: Sequence[Sequence[Any]] | None = None,
                 videos_kwargs: Mapping[str, Any] | None = None) -> RegionMasks:
    """``(target, visual)`` ``(B, T)`` bool masks for a processed batch.

    ``boxes[b]`` lists sample ``b``'s target boxes (:class:`core_eval.probes.Box` or
    ``(image, x0, y0, x1, y1)``), each mapped onto its own image's tokens only (for tiled families:
    onto every tile it overlaps *and* the global image / thumbnail). A ``Box`` with ``frame=k`` lies on
    frame ``k`` of video ``box.image`` (``videos[b]``) and maps onto the tokens of that video whose
    frame range holds ``k``. ``min_overlap`` in ``[0, 1]``: ``0`` = any positive-area overlap; ``f > 0``
    = a single box must cover at least ``f`` of the token's patch area (clipped to the image). Other
    arguments as :func:`token_rects`.
    """
    if not 0.0 <= float(min_overlap) <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap!r}")
    tr, vt = _layout(processor, inputs, images, videos, family, images_kwargs, videos_kwargs, image_token_id,
                     visual_token_ids)
    if len(boxes) != len(images):
        raise RegionMappingError(f"{len(boxes)} box lists for {len(images)} samples")
    videos = [[] for _ in images] if videos is None else videos
    target = torch.zeros_like(tr.visual)
    for b, (sample_images, sample_boxes) in enumerate(zip(images, boxes)):
        for box in sample_boxes:
            i, frame, *xyxy = _box_parts(box)
            if frame is None:
                if not 0 <= i < len(sample_images):
                    raise RegionMappingError(f"row {b}: box image index {i} out of range ({len(sample_images)} image(s))")
                w, h = _size_of(sample_images[i])
                sel = tr.image[b] == i
                r = tr.rects[b, sel]
            else:
                if not 0 <= i < len(videos[b]):
                    raise RegionMappingError(f"row {b}: box video index {i} out of range ({len(videos[b])} video(s))")
                n, w, h = _video_dims(videos[b][i])
                if not 0 <= frame < n:
                    raise RegionMappingError(f"row {b}: box frame {frame} out of range (video {i} has {n} frames)")
                f = vt.frames[b]
                sel = (vt.video[b] == i) & (f[:, 0] <= frame) & (frame < f[:, 1])
                r = vt.rects[b, sel]
            hit = _hits(r, w, h, tuple(xyxy), min_overlap)
            idx = sel.nonzero().flatten()
            target[b, idx[hit]] = True
    return RegionMasks(target, tr.visual)


def sample_region_masks(processor, inputs, samples: Sequence[Any], **kwargs: Any) -> RegionMasks:
    """:func:`region_masks` for probe samples (``ProbeSample``-like: ``image_sizes``/``images``, optional
    ``videos`` and ``target_boxes()``; no boxes means the whole image(s) and every frame of every video)."""
    images = [list(getattr(s, "image_sizes", None) or [im.size for im in s.images]) for s in samples]
    boxes = [s.target_boxes() if hasattr(s, "target_boxes") else list(s.boxes) for s in samples]
    videos = [list(getattr(s, "videos", None) or []) for s in samples]
    if any(videos):
        kwargs.setdefault("videos", videos)
    return region_masks(processor, inputs, images, boxes, **kwargs)
