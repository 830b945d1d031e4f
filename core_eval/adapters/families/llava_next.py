"""LLaVA-NeXT (1.6): anyres tiling (``image_grid_pinpoints``) behind a CLIP tower, base image first, then
the unpadded high-res grid with one ``image_newline`` token ending each row; Llama/Mistral LM, causal mask.

The anyres geometry here is shared with LLaVA-OneVision (``llava_onevision.py``), which adds feature
downsampling (``vision_aspect_ratio``) and a base-only layout for multi-image prompts.

Where the tokens come from (``LlavaNextImageProcessor._get_image_patches`` and
``LlavaNextModel.pack_image_features``, transformers 5.24):

1. ``select_best_resolution((H, W), image_grid_pinpoints)`` picks a canvas ``(bh, bw)``; the image is
   resized into it keeping its aspect (``get_patch_output_size``), pasted centred on a black canvas and
   cut into ``tile x tile`` frames, row-major (``tile`` = ``crop_size.height``, else ``size``).
2. The *base* frame, the whole image squashed to ``size``, goes first.
3. Every frame (then resized to ``size``, center-cropped to ``crop_size``) gives a ``g x g`` grid of
   vision patches. The model lays the tile grids side by side into one ``(rows, cols)`` token grid
   over the canvas and *unpads* it (``unpad_image``): whole token rows (or columns) over the padding
   are removed, as computed in token units from ``(H, W)`` (the same arithmetic as the processor's
   count, so a token half over the padding may stay).
4. LM order: the base grid (row-major), then per kept row its tokens followed by one
   ``image_newline``.

The newline tokens are image-token positions (the processor counts them, the model scatters the
learned ``image_newline`` vector there), so they are *visual*; they carry no pixels of their own (one
constant vector for every row of every image), so they map to no patch (NaN rows): never a target,
whatever the box. A box on a row would otherwise pull in a content-free token that every row shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.regions import (
    ImageContext, RegionMappingError, RegionRule, batch_output, center_crop_offset, no_patch, resized_hw, size_get,
)

NEXT_IMAGE, NEXT_PATCH = 24, 8  # tiny recipe: 3x3 tokens per frame (CLS dropped)
NEXT_PINPOINTS = [[24, 48], [48, 24], [48, 48]]  # (height, width); the 112x84 example gets 2x2 tiles, unpadded


# --------------------------------------------------------------------------- frame geometry
def _size_hw(size) -> tuple[int, int]:
    """``(height, width)`` the processor squashes the base image to (``size_tuple`` in ``_preprocess``)."""
    if size_get(size, "height") and size_get(size, "width"):
        return int(size_get(size, "height")), int(size_get(size, "width"))
    se = size_get(size, "shortest_edge")
    if not se:
        raise RegionMappingError(f"anyres: unsupported image-processor size {size!r}")
    return int(se), int(se)


def _tile_side(ctx: ImageContext) -> int:
    """Side of the canvas tiles (the ``patch_size`` ``_preprocess`` hands to ``divide_to_patches``)."""
    crop, size = ctx.setting("crop_size"), ctx.setting("size")
    for v in (size_get(crop, "height"), size_get(size, "height"), size_get(size, "shortest_edge")):
        if v:
            return int(v)
    raise RegionMappingError(f"anyres: cannot tell the tile size from size={size!r}, crop_size={crop!r}")


def _frame_axes(ctx: ImageContext, h: int, w: int):
    """One ``h x w`` frame source -> resize -> [center crop]: ``(fh, fw, (sy, oy), (sx, ox))`` with
    ``source = (u + o) * s`` for frame pixel coordinate ``u``."""
    rh, rw = resized_hw(h, w, ctx.setting("size")) if ctx.setting("do_resize") else (h, w)
    crop = ctx.setting("crop_size")
    if ctx.setting("do_center_crop") and size_get(crop, "height"):
        fh, fw = int(size_get(crop, "height")), int(size_get(crop, "width"))
        oy, ox = center_crop_offset(rh, fh), center_crop_offset(rw, fw)
    else:
        fh, fw, oy, ox = rh, rw, 0, 0
    return fh, fw, (h / rh, oy), (w / rw, ox)


def _edges(n_tokens: int, frame_px: int, axis) -> np.ndarray:
    """``(n_tokens + 1)`` token-cell edges of one frame axis, in the frame's source coordinates."""
    s, o = axis
    return (np.arange(n_tokens + 1) * (frame_px / n_tokens) + o) * s


def _cells(ye: np.ndarray, xe: np.ndarray) -> torch.Tensor:
    """Row-major cells of a separable grid: rows ``[ye0[i], ye1[i])``, columns ``[xe0[j], xe1[j])``."""
    y0, y1 = np.broadcast_arrays(ye[0][:, None], ye[1][:, None])
    cells = np.stack(np.broadcast_arrays(xe[0][None, :], y0, xe[1][None, :], y1), axis=-1)
    return torch.from_numpy(np.ascontiguousarray(cells.reshape(-1, 4), dtype=np.float64))


def _with_newlines(cells: torch.Tensor, rows: int) -> torch.Tensor:
    """Append one no-patch row (the ``image_newline`` token) after each of ``rows`` grid rows."""
    per_row = cells.view(rows, -1, 4)
    return torch.cat([per_row, no_patch(rows).view(rows, 1, 4)], dim=1).reshape(-1, 4)


def base_cells(ctx: ImageContext, grid: tuple[int, int], frame_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """The base frame (whole image squashed to ``size``) as a ``grid = (gh, gw)`` token grid, in original pixels."""
    sh, sw = _size_hw(ctx.setting("size"))
    fh, fw, ay, ax = _frame_axes(ctx, sh, sw)
    if frame_hw is not None:
        fh, fw = frame_hw
    gh, gw = grid
    ye, xe = _edges(gh, fh, ay) * (ctx.height / sh), _edges(gw, fw, ax) * (ctx.width / sw)
    return _cells((ye[:-1], ye[1:]), (xe[:-1], xe[1:]))


def _patch_output_size(h: int, w: int, target: Sequence[int]) -> tuple[int, int]:
    from transformers.image_processing_utils import get_patch_output_size
    from transformers.image_utils import ChannelDimension

    shape_only = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (3, h, w))  # no memory for large images
    nh, nw = get_patch_output_size(shape_only, tuple(target), ChannelDimension.FIRST)
    return int(nh), int(nw)


def unpad_range(rows: int, cols: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Token rows ``[r0, r1)`` and columns ``[c0, c1)`` that ``unpad_image`` keeps of a ``rows x cols`` grid."""
    if width / height > cols / rows:
        pad = (rows - int(round(height * (cols / width), 7))) // 2
        return pad, rows - pad, 0, cols
    pad = (cols - int(round(width * (rows / height), 7))) // 2
    return 0, rows, pad, cols - pad


def anyres_axes(ctx: ImageContext, grid: tuple[int, int], frame_hw: tuple[int, int] | None = None):
    """The unpadded high-res token grid as per-axis cell edges in original pixels: ``((y0, y1), (x0, x1))``.

    ``grid``: ``(gh, gw)`` tokens per frame. Each array holds one entry per kept token row / column.
    """
    from transformers.image_processing_utils import select_best_resolution

    pinpoints = ctx.setting("image_grid_pinpoints")
    if not pinpoints:
        raise RegionMappingError("anyres: the image processor has no image_grid_pinpoints")
    H, W = ctx.height, ctx.width
    bh, bw = (int(v) for v in select_best_resolution((H, W), pinpoints))
    nh, nw = _patch_output_size(H, W, (bh, bw))
    paste_y, paste_x = (bh - nh) // 2, (bw - nw) // 2
    T = _tile_side(ctx)
    if bh % T or bw % T:
        raise RegionMappingError(f"anyres: pinpoint {(bh, bw)} is not a multiple of the tile side {T}")
    n_rows, n_cols = bh // T, bw // T
    fh, fw, ay, ax = _frame_axes(ctx, T, T)
    if frame_hw is not None:
        fh, fw = frame_hw
    gh, gw = grid
    ty, tx = _edges(gh, fh, ay), _edges(gw, fw, ax)  # inside one tile
    ys = [(r * T + ty[:-1], r * T + ty[1:]) for r in range(n_rows)]
    xs = [(c * T + tx[:-1], c * T + tx[1:]) for c in range(n_cols)]
    y0, y1 = (np.concatenate(v) for v in zip(*ys))
    x0, x1 = (np.concatenate(v) for v in zip(*xs))
    r0, r1, c0, c1 = unpad_range(len(y0), len(x0), H, W)
    fy, fx = H / nh, W / nw  # canvas -> original
    return (((y0[r0:r1] - paste_y) * fy, (y1[r0:r1] - paste_y) * fy),
            ((x0[c0:c1] - paste_x) * fx, (x1[c0:c1] - paste_x) * fx))


def _frame_hw(ctx: ImageContext) -> tuple[int, int] | None:
    """Frame size from ``pixel_values`` (what the processor counts tokens from), if the batch is given."""
    pv = batch_output(ctx.outputs, "pixel_values")
    if pv is not None and len(pv) > ctx.index:
        return tuple(int(d) for d in pv[ctx.index].shape[-2:])
    return None


def _next_rects(ctx: ImageContext) -> torch.Tensor:
    """LLaVA-NeXT: base grid, then the unpadded high-res grid, one no-patch newline after each row."""
    p = ctx.processor
    patch = getattr(p, "patch_size", None)
    if not patch:
        raise RegionMappingError("llava_next: the processor has no patch_size; cannot map patches to tokens")
    extra = int(getattr(p, "num_additional_image_tokens", 0) or 0)
    if getattr(p, "vision_feature_select_strategy", None) == "default":
        extra -= 1
    if extra:
        raise RegionMappingError(
            f"llava_next: {extra:+d} extra token(s) per frame (num_additional_image_tokens="
            f"{p.num_additional_image_tokens}, vision_feature_select_strategy={p.vision_feature_select_strategy!r}); "
            "LlavaNextModel.pack_image_features reshapes every frame into a square patch grid, so only a "
            "CLS-free layout can be packed"
        )
    frame = _frame_hw(ctx)
    if frame is None:
        sh, sw = _size_hw(ctx.setting("size"))
        frame = _frame_axes(ctx, sh, sw)[:2]
    grid = (frame[0] // patch, frame[1] // patch)
    (y0, y1), (x0, x1) = anyres_axes(ctx, grid, frame)
    high = _with_newlines(_cells((y0, y1), (x0, x1)), len(y0))
    return torch.cat([base_cells(ctx, grid, frame), high])


#: Config / processor fields every anyres family reads.
ANYRES_REQUIRES = ("config.image_token_id", "config.image_grid_pinpoints",
                   "processor.image_processor.image_grid_pinpoints")


def _tiny(p):
    """LLaVA-NeXT: CLIP 24 px, patch 8 (3x3 tokens per frame, CLS dropped), pinpoints up to 2x2 tiles; Llama LM.
    The 112x84 example: 2x2 tiles -> 6x6 grid, unpadded to 4x6, + 4 newlines + 9 base = 37 tokens."""
    from core_eval.testing.recipe import LLAVA_TEMPLATE, build_tokenizer, lm_kwargs, token_ids, vision_kwargs
    from transformers import (
        CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextImageProcessor, LlavaNextProcessor,
    )

    tok = build_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True,
        named={"image_token": "<image>"}, chat_template=LLAVA_TEMPLATE,
    )
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": NEXT_IMAGE}, crop_size={"height": NEXT_IMAGE, "width": NEXT_IMAGE},
        image_grid_pinpoints=NEXT_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=NEXT_PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE,
    )
    text = LlamaConfig(**lm_kwargs(p["lm"], tok, bos="<s>", eos="</s>", pad="<pad>"))
    vision = CLIPVisionConfig(**vision_kwargs(layers=p["vision_layers"]), image_size=NEXT_IMAGE,
                              patch_size=NEXT_PATCH, projection_dim=32)
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=token_ids(tok, "<image>")[0],
        image_grid_pinpoints=NEXT_PINPOINTS, image_seq_length=(NEXT_IMAGE // NEXT_PATCH) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    return config, processor, token_ids(tok, "</s>")


FAMILY = Family(
    name="llava_next", model_types=("llava_next",), layers="model.language_model.layers",
    notes="anyres tiles (image_grid_pinpoints): base image + unpadded high-res grid, a newline token per row",
    region=RegionRule("base image, then unpadded anyres tile grid row-major with a no-patch newline per row",
                      _next_rects),
    requires=(*ANYRES_REQUIRES, "processor.patch_size"),
    tiny=(TinyRecipe("llava_next", _tiny, "LlavaNextForConditionalGeneration", gqa=False, image_tokens=37),),
)
