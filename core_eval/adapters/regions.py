"""Region -> token mapping: which visual tokens' image patches overlap a target box.

The *target region* of a probe (DESIGN.md section 2) is the set of visual tokens whose image
patch overlaps the probe's bounding box(es). Where a token's patch lies in the original image
depends on each family's real preprocessing (resize, crop, tiling, patch merging, pooling), so
every family has one small :class:`RegionRule` here, registered by family name
(``Family.name``). A rule turns one image (its original size plus the processor's settings and
batch outputs) into one rectangle per visual token of that image, *in the order the LM sees the
tokens*, in original-image pixel coordinates (the inverse of the resize/crop). Everything is
computed from the processor's own config and outputs; nothing is hard-coded per checkpoint.

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

Per-family rules (see each ``_*_rects`` function):

- ``llava``: [pad to square] -> resize (``size``) -> [center crop (``crop_size``)] -> grid of
  ``patch_size`` patches of ``pixel_values``, row-major; leading CLS/extra tokens as no-patch.
- ``qwen2_vl`` / ``qwen2_5_vl``: smart_resize -> ``image_grid_thw`` -> one token per
  ``merge_size x merge_size`` block, row-major over the merged grid (per temporal frame).
- ``idefics3`` / ``smolvlm``: longest-edge resize, then either a square resize to
  ``max_image_size`` or (``do_image_splitting``) a resize to multiples of it, split into tiles
  (row-major) followed by the global image; ``sqrt(image_seq_len)^2`` tokens per frame.
- ``internvl``: ``crop_to_patches`` tiling to the aspect-matched grid (row-major tiles), plus
  the thumbnail when there is more than one tile; ``sqrt(image_seq_length)^2`` tokens per tile.
- ``gemma3``: square resize to ``size`` -> ``sqrt(image_seq_length)^2`` pooled tokens; with
  pan-and-scan, the full image first, then its crops.

Entry points: :func:`region_masks` (``(B, T)`` target and visual masks for a processed batch),
:func:`sample_region_masks` (the same from probe samples), :func:`token_rects` (per position
rectangles) and :func:`image_token_rects` (one image). Add a family with
:func:`register_region_rule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

__all__ = [
    "REGION_RULES",
    "ImageContext",
    "PROCESSOR_FAMILIES",
    "RegionMappingError",
    "RegionMasks",
    "RegionRule",
    "TokenRects",
    "family_for_processor",
    "image_token_rects",
    "region_masks",
    "region_rule",
    "register_region_rule",
    "sample_region_masks",
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


def _sz(size: Any, key: str) -> Any:
    """Read ``key`` from a size dict or ``SizeDict``."""
    if size is None:
        return None
    if isinstance(size, Mapping):
        return size.get(key)
    return getattr(size, key, None)


def _output(outputs: Mapping[str, Any], key: str) -> Any:
    try:
        return outputs[key] if key in outputs else None
    except TypeError:
        return None


# --------------------------------------------------------------------------- geometry helpers
def _grid(x0: float, y0: float, x1: float, y1: float, rows: int, cols: int) -> torch.Tensor:
    """``(rows * cols, 4)`` cells ``[x0, y0, x1, y1]`` of a regular grid over a rectangle, row-major."""
    xs = x0 + (x1 - x0) * torch.arange(cols + 1, dtype=torch.float64) / cols
    ys = y0 + (y1 - y0) * torch.arange(rows + 1, dtype=torch.float64) / rows
    gx0, gy0 = torch.meshgrid(xs[:-1], ys[:-1], indexing="xy")
    gx1, gy1 = torch.meshgrid(xs[1:], ys[1:], indexing="xy")
    return torch.stack([gx0, gy0, gx1, gy1], dim=-1).reshape(-1, 4)


def _tiles(width: float, height: float, rows: int, cols: int, n: int) -> torch.Tensor:
    """Token cells of a ``rows x cols`` tiling of the whole image (tiles row-major), ``n x n`` tokens per tile."""
    tw, th = width / cols, height / rows
    return torch.cat([_grid(c * tw, r * th, (c + 1) * tw, (r + 1) * th, n, n)
                      for r in range(rows) for c in range(cols)])


def _no_patch(n: int) -> torch.Tensor:
    """Rows for visual tokens that have no image patch (e.g. CLS): NaN, so they never overlap."""
    return torch.full((n, 4), float("nan"), dtype=torch.float64)


def _square_side(n_tokens: int, what: str) -> int:
    side = math.isqrt(int(n_tokens))
    if side * side != n_tokens:
        raise RegionMappingError(f"{what}={n_tokens} is not a square number of tokens; cannot lay out a token grid")
    return side


def _resized_hw(height: int, width: int, size: Any) -> tuple[int, int]:
    """Output ``(height, width)`` of ``TorchvisionBackend.resize`` for a size dict."""
    from transformers.image_transforms import get_size_with_aspect_ratio
    from transformers.image_utils import get_image_size_for_max_height_width

    se, le = _sz(size, "shortest_edge"), _sz(size, "longest_edge")
    if se and le:
        return tuple(get_size_with_aspect_ratio((height, width), se, le))
    if se:  # shortest edge to `se`, the other one truncated (transformers' get_resize_output_image_size)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = se, int(se * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if _sz(size, "max_height") and _sz(size, "max_width"):
        max_hw = _sz(size, "max_height"), _sz(size, "max_width")
        return tuple(get_image_size_for_max_height_width((height, width), *max_hw))
    if _sz(size, "height") and _sz(size, "width"):
        return _sz(size, "height"), _sz(size, "width")
    raise RegionMappingError(f"unsupported image-processor size {size!r}")


def _center_crop_offset(n: int, crop: int) -> int:
    """Offset ``o`` with ``crop_coord = resized_coord - o`` for ``TorchvisionBackend.center_crop`` on one axis."""
    if crop > n:  # padded symmetrically (left/top gets the floor), then nothing is cut
        return -((crop - n) // 2)
    return int((n - crop) / 2.0)


# --------------------------------------------------------------------------- family rules
def _llava_rects(ctx: ImageContext) -> torch.Tensor:
    """LLaVA (CLIP-style image processor): [pad to square] -> resize -> [center crop] -> patch grid.

    Processed coordinate ``u`` (in the crop) is original ``(u + crop_offset) * W_padded / W_resized
    - pad_offset``. The grid is ``pixel_values.shape // patch_size`` (what ``LlavaProcessor``
    counts), row-major; ``num_additional_image_tokens`` (CLS) lead the block, minus the one
    ``vision_feature_select_strategy="default"`` drops, as no-patch tokens.
    """
    p, ip = ctx.processor, ctx.image_processor
    patch = getattr(p, "patch_size", None)
    if not patch:
        raise RegionMappingError("llava: the processor has no patch_size; cannot map patches to tokens")
    w, h, pad_x, pad_y = ctx.width, ctx.height, 0, 0
    if ctx.setting("do_pad") and hasattr(ip, "pad_to_square"):  # LlavaImageProcessor: pad, then resize
        side = max(w, h)
        pad_x, pad_y, w, h = (side - w) // 2, (side - h) // 2, side, side
    rh, rw = _resized_hw(h, w, ctx.setting("size")) if ctx.setting("do_resize") else (h, w)
    if ctx.setting("do_center_crop"):
        crop = ctx.setting("crop_size")
        ch, cw = _sz(crop, "height"), _sz(crop, "width")
        off_y, off_x = _center_crop_offset(rh, ch), _center_crop_offset(rw, cw)
    else:
        ch, cw, off_y, off_x = rh, rw, 0, 0
    pv = _output(ctx.outputs, "pixel_values")
    if pv is not None and len(pv) > ctx.index:  # the processor counts tokens from this shape
        ch, cw = (int(d) for d in pv[ctx.index].shape[-2:])
    gh, gw = ch // patch, cw // patch
    sx, sy = w / rw, h / rh

    def ox(u):
        return (u + off_x) * sx - pad_x

    def oy(v):
        return (v + off_y) * sy - pad_y

    cells = _grid(ox(0), oy(0), ox(gw * patch), oy(gh * patch), gh, gw)
    extra = int(getattr(p, "num_additional_image_tokens", 0) or 0)
    if getattr(p, "vision_feature_select_strategy", None) == "default":
        extra -= 1
    if extra < 0:
        raise RegionMappingError(
            "llava: vision_feature_select_strategy='default' drops a CLS token but the processor's "
            "num_additional_image_tokens is 0"
        )
    return torch.cat([_no_patch(extra), cells])


def _qwen_rects(ctx: ImageContext) -> torch.Tensor:
    """Qwen2-VL / Qwen2.5-VL: smart_resize of the whole image -> ``(t, h, w)`` patch grid.

    One token per ``merge_size x merge_size`` block, row-major over the merged grid
    ``(h / m, w / m)``, repeated per temporal frame. The grid is read from ``image_grid_thw``
    (row ``index``); without it, it is recomputed with ``smart_resize``. The resize keeps the whole
    image, so token ``(r, c)`` covers ``[c W / cols, (c + 1) W / cols) x [r H / rows, ...)``.
    """
    m = int(ctx.setting("merge_size"))
    grid = _output(ctx.outputs, "image_grid_thw")
    if grid is not None:
        t, gh, gw = (int(v) for v in grid[ctx.index])
    else:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        patch, size = int(ctx.setting("patch_size")), ctx.setting("size")
        rh, rw = smart_resize(ctx.height, ctx.width, factor=patch * m, min_pixels=_sz(size, "shortest_edge"),
                              max_pixels=_sz(size, "longest_edge"))
        t, gh, gw = 1, rh // patch, rw // patch
    return _grid(0, 0, ctx.width, ctx.height, gh // m, gw // m).repeat(t, 1)


_IDEFICS3_MAX_SIDE = 4096  # transformers' MAX_IMAGE_SIZE for Idefics3 / SmolVLM


def _idefics3_resize(h: int, w: int, longest: int) -> tuple[int, int]:
    """Idefics3ImageProcessor.resize with ``longest_edge``: even short side, capped at 4096."""
    aspect = w / h
    if w >= h:
        w, h = longest, int(longest / aspect)
        h += h % 2
    else:
        h, w = longest, int(longest * aspect)
        w += w % 2
    h, w = max(h, 1), max(w, 1)
    aspect = w / h
    if w >= h and w > _IDEFICS3_MAX_SIDE:
        w, h = _IDEFICS3_MAX_SIDE, int(_IDEFICS3_MAX_SIDE / aspect)
    elif h > w and h > _IDEFICS3_MAX_SIDE:
        h, w = _IDEFICS3_MAX_SIDE, int(_IDEFICS3_MAX_SIDE * aspect)
    return max(h, 1), max(w, 1)


def _idefics3_rects(ctx: ImageContext) -> torch.Tensor:
    """Idefics3 / SmolVLM: longest-edge resize, optional splitting into tiles + global image.

    Without splitting the (resized) image is squashed to ``max_image_size`` square: one frame.
    With ``do_image_splitting`` it is resized to multiples ``rows x cols`` of ``max_image_size``
    (``resize_for_vision_encoder``) and, when larger than one tile, split into tiles (row-major),
    followed by the global image (the whole image squashed to one tile). Every frame gives a
    row-major ``n x n`` grid of tokens, ``n^2 = image_seq_len`` (pixel shuffle keeps row-major
    order). All steps are full-image scalings, so tile ``(r, c)`` covers
    ``[c W / cols, (c + 1) W / cols) x [r H / rows, ...)``.
    """
    n = _square_side(ctx.processor.image_seq_len, "image_seq_len")
    tile = int(_sz(ctx.setting("max_image_size"), "longest_edge"))
    h, w = ctx.height, ctx.width
    if ctx.setting("do_resize"):
        size = ctx.setting("size")
        if _sz(size, "longest_edge"):
            h, w = _idefics3_resize(h, w, int(_sz(size, "longest_edge")))
        elif _sz(size, "height") and _sz(size, "width"):
            h, w = _sz(size, "height"), _sz(size, "width")
    whole = _grid(0, 0, ctx.width, ctx.height, n, n)
    if not ctx.setting("do_image_splitting"):
        return whole
    aspect = w / h  # resize_for_vision_encoder
    if w >= h:
        w2 = math.ceil(w / tile) * tile
        h2 = math.ceil(int(w2 / aspect) / tile) * tile
    else:
        h2 = math.ceil(h / tile) * tile
        w2 = math.ceil(int(h2 * aspect) / tile) * tile
    if h2 <= tile and w2 <= tile:
        return whole
    rows, cols = math.ceil(h2 / tile), math.ceil(w2 / tile)
    return torch.cat([_tiles(ctx.width, ctx.height, rows, cols, n), whole])


def _internvl_rects(ctx: ImageContext) -> torch.Tensor:
    """InternVL (GotOcr2 image processor): dynamic tiling + thumbnail.

    With ``crop_to_patches`` the image is resized to the aspect-matched ``cols x rows`` canvas of
    ``size`` tiles (``get_optimal_tiled_canvas``) and cut into tiles, row-major; when there is
    more than one tile the thumbnail (whole image resized to one tile) follows. Each tile gives a
    row-major ``n x n`` token grid, ``n^2 = image_seq_length`` (pixel shuffle keeps row-major order).
    """
    n = _square_side(ctx.processor.image_seq_length, "image_seq_length")
    whole = _grid(0, 0, ctx.width, ctx.height, n, n)
    if not ctx.setting("crop_to_patches"):
        return whole
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    size = ctx.setting("size")
    cols, rows = get_optimal_tiled_canvas(
        (ctx.height, ctx.width), (_sz(size, "height"), _sz(size, "width")),
        int(ctx.setting("min_patches")), int(ctx.setting("max_patches")),
    )
    if cols * rows == 1:
        return whole
    return torch.cat([_tiles(ctx.width, ctx.height, rows, cols, n), whole])


def _gemma3_pan_and_scan(ctx: ImageContext) -> list[tuple[int, int, int, int]]:
    """Crop boxes ``(x0, y0, x1, y1)`` of Gemma3ImageProcessor.pan_and_scan_batched (may be empty)."""
    w, h = ctx.width, ctx.height
    min_crop = int(ctx.setting("pan_and_scan_min_crop_size"))
    max_crops = int(ctx.setting("pan_and_scan_max_num_crops"))
    min_ratio = float(ctx.setting("pan_and_scan_min_ratio_to_activate"))
    if w >= h:
        if w / h < min_ratio:
            return []
        nw = min(int(math.floor(w / min_crop)), int(math.floor(w / h + 0.5)))
        nw, nh = min(max_crops, max(2, nw)), 1
    else:
        if h / w < min_ratio:
            return []
        nh = min(int(math.floor(h / min_crop)), int(math.floor(h / w + 0.5)))
        nh, nw = min(max_crops, max(2, nh)), 1
    cw, chh = int(math.ceil(w / nw)), int(math.ceil(h / nh))
    if min(cw, chh) < min_crop:
        return []
    return [(x, y, min(x + cw, w), min(y + chh, h)) for y in range(0, nh * chh, chh) for x in range(0, nw * cw, cw)]


def _gemma3_rects(ctx: ImageContext) -> torch.Tensor:
    """Gemma3: the whole image squashed to ``size`` (no aspect preservation) -> patch grid, average
    pooled to a row-major ``n x n`` grid, ``n^2 = image_seq_length``. With pan-and-scan
    (``do_pan_and_scan``), the full image comes first, then each crop (row-major), each resized the
    same way.
    """
    n = _square_side(ctx.processor.image_seq_length, "image_seq_length")
    views = [(0, 0, ctx.width, ctx.height)]
    if ctx.setting("do_pan_and_scan"):
        views += _gemma3_pan_and_scan(ctx)
    return torch.cat([_grid(*v, n, n) for v in views])


# --------------------------------------------------------------------------- registry
def _image_token_attr(processor) -> int:
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        raise RegionMappingError(f"{type(processor).__name__} has no image_token_id")
    return int(tid)


def _gemma3_image_token(processor) -> int:
    # Gemma3Processor.image_token_id is the begin-of-image token; the expanded soft token is the tokenizer's.
    return int(processor.tokenizer.image_token_id)


def _no_video(processor) -> tuple[int, ...]:
    return ()


def _qwen_video(processor) -> tuple[int, ...]:
    vid = getattr(processor, "video_token_id", None)
    return () if vid is None else (int(vid),)


@dataclass(frozen=True)
class RegionRule:
    """How one family's image patches become LM visual tokens.

    Attributes:
        family: ``Family.name`` the rule is registered under.
        summary: one line for listings and errors.
        token_rects: ``ctx -> (n_tokens, 4)`` float64 ``[x0, y0, x1, y1]`` per visual token of one
            image, in LM order, in original-image pixels (NaN rows: tokens without a patch).
        image_token: ``processor -> id`` of the token the image features replace.
        extra_visual_tokens: ``processor -> ids`` also counted as visual (video tokens), never mapped.
    """

    family: str
    summary: str
    token_rects: Callable[[ImageContext], torch.Tensor]
    image_token: Callable[[Any], int] = _image_token_attr
    extra_visual_tokens: Callable[[Any], tuple[int, ...]] = _no_video


REGION_RULES: dict[str, RegionRule] = {}

#: Processor class name -> family name, to infer the family when only a processor is given.
PROCESSOR_FAMILIES: dict[str, str] = {
    "LlavaProcessor": "llava",
    "Qwen2VLProcessor": "qwen2_vl",
    "Qwen2_5_VLProcessor": "qwen2_5_vl",
    "Idefics3Processor": "idefics3",
    "SmolVLMProcessor": "smolvlm",
    "InternVLProcessor": "internvl",
    "Gemma3Processor": "gemma3",
}


def register_region_rule(rule: RegionRule, *, replace: bool = False) -> RegionRule:
    """Add a rule under ``rule.family``; ``replace=True`` overrides an existing one."""
    if rule.family in REGION_RULES and not replace:
        raise ValueError(f"a region rule for family {rule.family!r} is already registered (pass replace=True)")
    REGION_RULES[rule.family] = rule
    return rule


for _rule in (
    RegionRule("llava", "[pad] -> resize -> center crop -> patch grid (CLS first if kept)", _llava_rects),
    RegionRule("qwen2_vl", "smart_resize -> image_grid_thw -> merged blocks, row-major", _qwen_rects,
               extra_visual_tokens=_qwen_video),
    RegionRule("qwen2_5_vl", "smart_resize -> image_grid_thw -> merged blocks, row-major", _qwen_rects,
               extra_visual_tokens=_qwen_video),
    RegionRule("idefics3", "longest-edge resize -> [tiles row-major +] global image, pixel shuffle", _idefics3_rects),
    RegionRule("smolvlm", "longest-edge resize -> [tiles row-major +] global image, pixel shuffle", _idefics3_rects),
    RegionRule("internvl", "aspect-matched tiles row-major + thumbnail, pixel shuffle", _internvl_rects),
    RegionRule("gemma3", "square resize -> pooled token grid [+ pan-and-scan crops]", _gemma3_rects,
               image_token=_gemma3_image_token),
):
    register_region_rule(_rule)
del _rule


def _family_name(family: Any) -> str:
    if isinstance(family, str):
        return family
    if hasattr(family, "family"):  # a ModelAdapter
        family = family.family
    name = getattr(family, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"family must be a family name, a Family or a ModelAdapter, got {family!r}")
    return name


def family_for_processor(processor) -> str:
    """Family name for a processor instance (by class name, see :data:`PROCESSOR_FAMILIES`)."""
    for cls in type(processor).__mro__:
        if cls.__name__ in PROCESSOR_FAMILIES:
            return PROCESSOR_FAMILIES[cls.__name__]
    raise RegionMappingError(
        f"cannot tell the model family of processor {type(processor).__name__}; pass family=... "
        f"(one of {sorted(REGION_RULES)})"
    )


def region_rule(family: Any) -> RegionRule:
    """The :class:`RegionRule` for a family name / ``Family`` / ``ModelAdapter``, or a clear error."""
    name = _family_name(family)
    try:
        return REGION_RULES[name]
    except KeyError:
        why = " (text-only models have no visual tokens)" if name == "text" else ""
        raise RegionMappingError(
            f"family {name!r} has no region-to-token mapping{why}. Families with one: "
            f"{', '.join(sorted(REGION_RULES))}. Add one with "
            "core_eval.adapters.regions.register_region_rule(RegionRule(...))."
        ) from None


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
    rule = region_rule(family if family is not None else family_for_processor(processor))
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
        family: family name / ``Family`` / ``ModelAdapter``; inferred from the processor if omitted.
        images_kwargs: image kwargs passed to the processor call, if any.
        image_token_id: override of the image token id (default: from the processor).
        visual_token_ids: ids forming the visual mask (default: image token + the family's video
            token, as ``ModelAdapter.visual_mask``).

    The image tokens of each row are split, in order, among that sample's images by each image's
    token count; a count mismatch raises :class:`RegionMappingError`.
    """
    name = _family_name(family) if family is not None else family_for_processor(processor)
    rule = region_rule(name)
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
