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

Entry points: :func:`region_masks` (``(B, T)`` target and visual masks for a processed batch),
:func:`sample_region_masks` (the same from probe samples), :func:`token_rects` (per position
rectangles) and :func:`image_token_rects` (one image).
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
    "batch_output",
    "center_crop_offset",
    "grid_cells",
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


def no_patch(n: int) -> torch.Tensor:
    """Rows for visual tokens that have no image patch (e.g. CLS): NaN, so they never overlap."""
    return torch.full((n, 4), float("nan"), dtype=torch.float64)


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
def _image_token_attr(processor) -> int:
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        raise RegionMappingError(f"{type(processor).__name__} has no image_token_id")
    return int(tid)


def _no_video(processor) -> tuple[int, ...]:
    return ()


@dataclass(frozen=True)
class RegionRule:
    """How one family's image patches become LM visual tokens (``Family.region``).

    Attributes:
        summary: one line for listings and errors.
        token_rects: ``ctx -> (n_tokens, 4)`` float64 ``[x0, y0, x1, y1]`` per visual token of one
            image, in LM order, in original-image pixels (NaN rows: tokens without a patch).
        image_token: ``processor -> id`` of the token the image features replace.
        extra_visual_tokens: ``processor -> ids`` also counted as visual (video tokens), never mapped.
    """

    summary: str
    token_rects: Callable[[ImageContext], torch.Tensor]
    image_token: Callable[[Any], int] = _image_token_attr
    extra_visual_tokens: Callable[[Any], tuple[int, ...]] = _no_video


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


# --------------------------------------------------------------------------- public API
def _size_of(image: Any) -> tuple[int, int]:
    """``(width, height)`` of a PIL image or a ``(width, height)`` pair."""
    if hasattr(image, "size") and not isinstance(image, (tuple, list)):
        w, h = image.size
    else:
        w, h = image
    return int(w), int(h)


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


def token_rects(processor, inputs, images: Sequence[Sequence[Any]], *, family: Any = None,
                images_kwargs: Mapping[str, Any] | None = None, image_token_id: int | None = None,
                visual_token_ids: Sequence[int] | None = None) -> TokenRects:
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

    The image tokens of each row are split, in order, among that sample's images by each image's
    token count; a count mismatch raises :class:`RegionMappingError`.
    """
    fam = _family(family, processor)
    name, rule = fam.name, region_rule(fam)
    ids = _input_ids(inputs)
    outputs = inputs if isinstance(inputs, Mapping) or hasattr(inputs, "keys") else {}
    B, T = ids.shape
    if len(images) != B:
        raise RegionMappingError(f"{name}: {len(images)} image lists for a batch of {B} rows")
    tid = int(image_token_id) if image_token_id is not None else rule.image_token(processor)
    vis_ids = (tuple(visual_token_ids) if visual_token_ids is not None
               else (tid, *rule.extra_visual_tokens(processor)))
    visual = torch.zeros((B, T), dtype=torch.bool)
    for v in vis_ids:
        visual |= ids == v
    rects = torch.full((B, T, 4), float("nan"), dtype=torch.float64)
    image = torch.full((B, T), -1, dtype=torch.long)
    g = 0  # image index across the batch, in processor order
    for b, sample_images in enumerate(images):
        pos = (ids[b] == tid).nonzero().flatten()
        per_image, sizes = [], []
        for i, im in enumerate(sample_images):
            w, h = _size_of(im)
            sizes.append((w, h))
            per_image.append(rule.token_rects(ImageContext(processor, w, h, g, outputs, images_kwargs or {})))
            g += 1
        counts = [len(r) for r in per_image]
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
    return TokenRects(rects, image, visual)


def _box_tuple(box: Any) -> tuple[int, float, float, float, float]:
    if hasattr(box, "x0"):
        return int(box.image), float(box.x0), float(box.y0), float(box.x1), float(box.y1)
    image, x0, y0, x1, y1 = box
    return int(image), float(x0), float(y0), float(x1), float(y1)


def region_masks(processor, inputs, images: Sequence[Sequence[Any]], boxes: Sequence[Sequence[Any]], *,
                 family: Any = None, min_overlap: float = 0.0, images_kwargs: Mapping[str, Any] | None = None,
                 image_token_id: int | None = None, visual_token_ids: Sequence[int] | None = None) -> RegionMasks:
    """``(target, visual)`` ``(B, T)`` bool masks for a processed batch.

    ``boxes[b]`` lists sample ``b``'s target boxes (:class:`core_eval.probes.Box` or
    ``(image, x0, y0, x1, y1)``), each mapped onto its own image's tokens only (for tiled families:
    onto every tile it overlaps *and* the global image / thumbnail). ``min_overlap`` in ``[0, 1]``:
    ``0`` = any positive-area overlap; ``f > 0`` = a single box must cover at least ``f`` of the
    token's patch area (clipped to the image). Other arguments as :func:`token_rects`.
    """
    if not 0.0 <= float(min_overlap) <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap!r}")
    tr = token_rects(processor, inputs, images, family=family, images_kwargs=images_kwargs,
                     image_token_id=image_token_id, visual_token_ids=visual_token_ids)
    if len(boxes) != len(images):
        raise RegionMappingError(f"{len(boxes)} box lists for {len(images)} samples")
    target = torch.zeros_like(tr.visual)
    for b, (sample_images, sample_boxes) in enumerate(zip(images, boxes)):
        for box in sample_boxes:
            i, x0, y0, x1, y1 = _box_tuple(box)
            if not 0 <= i < len(sample_images):
                raise RegionMappingError(f"row {b}: box image index {i} out of range ({len(sample_images)} image(s))")
            w, h = _size_of(sample_images[i])
            sel = tr.image[b] == i
            r = tr.rects[b, sel]
            # clip the token patches and the box to the image
            rx0, ry0 = r[:, 0].clamp(0, w), r[:, 1].clamp(0, h)
            rx1, ry1 = r[:, 2].clamp(0, w), r[:, 3].clamp(0, h)
            bx0, by0, bx1, by1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
            ix = rx1.clamp(max=bx1) - rx0.clamp(min=bx0)
            iy = ry1.clamp(max=by1) - ry0.clamp(min=by0)
            hit = (ix > OVERLAP_TOL) & (iy > OVERLAP_TOL)  # NaN rows compare False
            if min_overlap > 0:
                area = (rx1 - rx0) * (ry1 - ry0)
                hit &= ix * iy >= min_overlap * area - OVERLAP_TOL
            idx = sel.nonzero().flatten()
            target[b, idx[hit]] = True
    return RegionMasks(target, tr.visual)


def sample_region_masks(processor, inputs, samples: Sequence[Any], **kwargs: Any) -> RegionMasks:
    """:func:`region_masks` for probe samples (``ProbeSample``-like: ``image_sizes``/``images`` and
    ``target_boxes()``; no boxes means the whole image(s))."""
    images = [list(getattr(s, "image_sizes", None) or [im.size for im in s.images]) for s in samples]
    boxes = [s.target_boxes() if hasattr(s, "target_boxes") else list(s.boxes) for s in samples]
    return region_masks(processor, inputs, images, boxes, **kwargs)
