"""LLaVA-OneVision: LLaVA-NeXT's anyres layout (``llava_next.py``) with the unpadded grid downsampled to at
most ``anyres_max_N`` frames' worth of tokens, a base-only layout for multi-image prompts; SigLIP tower,
Qwen2 LM, causal mask.

From ``LlavaOnevisionModel.pack_image_features`` / ``get_image_features`` and
``LlavaOnevisionImageProcessor`` (transformers 5.24):

- One image in its prompt (``batch_num_images == 1``): as LLaVA-NeXT (base grid first, then the unpadded
  high-res grid row-major with one ``image_newline`` after each row), except that when the unpadded
  grid ``(h, w)`` holds more than ``N * g^2`` tokens (``ratio = sqrt(h w / (N g^2)) > 1.1``) it is
  bilinearly interpolated to ``(int(h // ratio), int(w // ratio))`` before the newlines are added.
  A downsampled token ``(i, j)`` covers the cell ``[j w / w', (j + 1) w / w')`` of the unpadded grid
  (``align_corners=False`` samples exactly its centre), mapped through the grid's pixel edges.
- Several images in one prompt: each is padded to a square (``image_mean`` fill, centred), resized to
  ``size`` and gives only the base grid, followed by one ``image_newline``.

The newline tokens are visual (image-token id) but map to no patch, as for LLaVA-NeXT.

Videos (``LlavaOnevisionVideoProcessor`` and ``LlavaOnevisionModel.get_video_features``): every frame is
resized as a whole to ``size`` (no crop, aspect not kept), gives the base ``g x g`` patch grid, which
``apply_pooling`` bilinearly resizes to ``ceil(g / 2)`` per side (``align_corners=False`` samples each
output cell's centre exactly, so pooled token ``(i, j)`` covers the cell ``(i, j)`` of a regular
``ceil(g / 2)`` grid over the frame); frames follow each other, then one ``image_newline`` (no patch)
ends the video. All of them carry ``video_token_id``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.families.llava_next import (
    ANYRES_REQUIRES, NEXT_IMAGE, NEXT_PATCH, NEXT_PINPOINTS, _cells, _frame_axes, _frame_hw, _with_newlines,
    anyres_axes, base_cells,
)
from core_eval.adapters.regions import (
    ImageContext, RegionMappingError, RegionRule, VideoContext, batch_output, frame_groups, grid_cells, no_patch,
    square_side, video_rows,
)

ONEVISION_ASPECT = "anyres_max_3"  # tiny recipe: grids over 27 tokens (the 6x6 of a square image) are downsampled


def max_frames(vision_aspect_ratio: str) -> int:
    """``N`` of ``anyres_max_N`` (read as the model does: ``int(s.strip("anyres_max_"))``)."""
    try:
        return int(str(vision_aspect_ratio).strip("anyres_max_"))
    except ValueError:
        raise RegionMappingError(f"llava_onevision: vision_aspect_ratio={vision_aspect_ratio!r} is not 'anyres_max_N'")


def _resample_edges(e0: np.ndarray, e1: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells of ``n_out`` equal parts of a grid axis with cells ``[e0[k], e1[k])``, in the same coordinates."""
    n = len(e0)

    def at(t):  # token-unit coordinate t in [0, n] -> pixel coordinate, linear inside each cell
        k = np.minimum(np.floor(t).astype(int), n - 1)
        return e0[k] + (t - k) * (e1[k] - e0[k])

    t = np.arange(n_out + 1) * (n / n_out)
    edges = at(t)
    return edges[:-1], edges[1:]


def _in_multi_image_prompt(ctx: ImageContext) -> bool:
    counts = batch_output(ctx.outputs, "batch_num_images")
    if counts is None:
        return False  # as the model without batch_num_images: every image is tiled
    seen = 0
    for n in (int(v) for v in counts):
        if ctx.index < seen + n:
            return n != 1
        seen += n
    raise RegionMappingError(f"llava_onevision: image {ctx.index} lies beyond batch_num_images={list(counts)}")


def _square_base(ctx: ImageContext, g: int) -> torch.Tensor:
    """Multi-image layout: pad to a centred square, resize to ``size``: a ``g x g`` grid."""
    side = max(ctx.width, ctx.height)
    px, py = (side - ctx.width) // 2, (side - ctx.height) // 2
    fh, fw, (sy, oy), (sx, ox) = _frame_axes(ctx, side, side)
    return grid_cells(ox * sx - px, oy * sy - py, (fw + ox) * sx - px, (fh + oy) * sy - py, g, g)


def _check_full_strategy(p) -> None:
    if getattr(p, "vision_feature_select_strategy", None) == "default":
        raise RegionMappingError(
            "llava_onevision: vision_feature_select_strategy='default' drops one token per frame, which "
            "LlavaOnevisionModel.pack_image_features cannot reshape into its patch grid; use 'full' (as the "
            "released checkpoints do)"
        )


def _onevision_rects(ctx: ImageContext) -> torch.Tensor:
    """LLaVA-OneVision: alone in its prompt, base grid then the unpadded high-res grid (downsampled past
    ``anyres_max_N``) with a no-patch newline after each row; among several images, the padded-square
    base grid and one newline. ``batch_num_images`` (batch outputs) tells which; without it: alone."""
    p = ctx.processor
    _check_full_strategy(p)
    g = square_side(p.num_image_tokens, "num_image_tokens")
    if _in_multi_image_prompt(ctx):
        return torch.cat([_square_base(ctx, g), no_patch(1)])
    frame = _frame_hw(ctx)
    (y0, y1), (x0, x1) = anyres_axes(ctx, (g, g), frame)
    h, w = len(y0), len(x0)
    ratio = math.sqrt(h * w / (max_frames(p.vision_aspect_ratio) * g**2))
    if ratio > 1.1:
        (y0, y1), (x0, x1) = _resample_edges(y0, y1, int(h // ratio)), _resample_edges(x0, x1, int(w // ratio))
    high = _with_newlines(_cells((y0, y1), (x0, x1)), len(y0))
    return torch.cat([base_cells(ctx, (g, g), frame), high])


def _onevision_video_rects(ctx: VideoContext) -> torch.Tensor:
    """LLaVA-OneVision videos: per frame, the whole frame as a regular ``ceil(g / 2)`` grid (pooled base
    grid, ``g^2 = num_image_tokens``), row-major, frames in order; then one no-patch newline."""
    _check_full_strategy(ctx.processor)
    if ctx.setting("do_center_crop"):
        raise RegionMappingError("llava_onevision: a video processor with do_center_crop=True is not mapped "
                                 "(the released checkpoints resize whole frames); set do_center_crop=False")
    side = math.ceil(square_side(ctx.processor.num_image_tokens, "num_image_tokens") / 2)
    cells = grid_cells(0, 0, ctx.width, ctx.height, side, side)
    return torch.cat([video_rows(frame_groups(ctx.n_frames, 1), cells), no_patch(1, columns=6)])


def _video_tokens(processor) -> tuple[int, ...]:
    vid = getattr(processor, "video_token_id", None)
    return () if vid is None else (int(vid),)


def _tiny(p):
    """LLaVA-OneVision: SigLIP 24 px, patch 8 (3x3 per frame), NeXT's pinpoints, anyres_max_3; Qwen2 LM.
    The 112x84 example: 4x6 unpadded grid (not downsampled) + 4 newlines + 9 base = 37 tokens; a square
    image's 6x6 grid is downsampled to 5x5."""
    from core_eval.testing._tokenizer import ONEVISION_TEMPLATE
    from core_eval.testing.recipe import build_tokenizer, lm_kwargs, token_ids, vision_kwargs
    from transformers import (
        LlavaOnevisionConfig, LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor,
        Qwen2Config, SiglipVisionConfig,
    )

    tok = build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>",
        named={"image_token": "<image>", "video_token": "<video>"}, chat_template=ONEVISION_TEMPLATE,
    )
    size = {"height": NEXT_IMAGE, "width": NEXT_IMAGE}
    n = (NEXT_IMAGE // NEXT_PATCH) ** 2
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=NEXT_PINPOINTS),
        tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(size=dict(size)), num_image_tokens=n,
        vision_feature_select_strategy="full", vision_aspect_ratio=ONEVISION_ASPECT,
        chat_template=ONEVISION_TEMPLATE,
    )
    text = Qwen2Config(**lm_kwargs(p["lm"], tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>", head_dim=False,
                                     tie=True))
    vision = SiglipVisionConfig(**vision_kwargs(layers=p["vision_layers"]), image_size=NEXT_IMAGE,
                                patch_size=NEXT_PATCH, vision_use_head=False)
    img, vid = token_ids(tok, "<image>", "<video>")
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=img, video_token_index=vid,
        image_grid_pinpoints=NEXT_PINPOINTS, vision_aspect_ratio=ONEVISION_ASPECT,
        vision_feature_select_strategy="full", vision_feature_layer=-1, tie_word_embeddings=True,
    )
    return config, processor, token_ids(tok, "<|im_end|>", "<|endoftext|>")


FAMILY = Family(
    name="llava_onevision", model_types=("llava_onevision",), layers="model.language_model.layers",
    video_token_fields=("video_token_id",),
    notes="anyres tiles + newline per row, grid downsampled to anyres_max_N; multi-image: base only",
    region=RegionRule("base image, then unpadded anyres grid [bilinearly downsampled] with a no-patch newline per "
                      "row; multi-image: padded square base + newline; videos: pooled base grid per frame + one "
                      "newline", _onevision_rects, extra_visual_tokens=_video_tokens,
                      video_rects=_onevision_video_rects),
    requires=(*ANYRES_REQUIRES, "config.video_token_id", "processor.num_image_tokens",
              "processor.vision_aspect_ratio"),
    tiny=(TinyRecipe("llava_onevision", _tiny, "LlavaOnevisionForConditionalGeneration", image_tokens=37),),
)
