"""InternVL (HF checkpoints): 448 px tiles + thumbnail, pixel shuffle; causal mask.

InternVL2.5 / 3 carry a Qwen2 LM, InternVL3.5 a Qwen3 one (``Qwen3Config``: explicit head_dim,
per-head q/k RMSNorm over head_dim, shared by all heads, so the sparse path's head permutation of the
q/k/v/o projections stays exact); the vision side and the region rule are the same.

Videos (``InternVLVideoProcessor`` / ``InternVLProcessor``): every frame is resized as a whole to one tile
(``size``, aspect not kept) and written as an image, ``Frame{k}: <img>`` + ``image_seq_length`` image
tokens + ``</img>``; the processor puts the frames into ``pixel_values`` after the prompt's images, so
video tokens are image tokens that follow the images' ones.
"""

from __future__ import annotations

import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.regions import (
    ImageContext, RegionMappingError, RegionRule, VideoContext, frame_groups, grid_cells, image_token_id_of, size_get,
    square_side, tile_cells, video_rows,
)

INTERNVL_TILE, INTERNVL_PATCH, INTERNVL_MAX_TILES = 32, 8, 4  # tiny recipe: 4 tokens per tile


def _internvl_rects(ctx: ImageContext) -> torch.Tensor:
    """InternVL (GotOcr2 image processor): dynamic tiling + thumbnail.

    With ``crop_to_patches`` the image is resized to the aspect-matched ``cols x rows`` canvas of
    ``size`` tiles (``get_optimal_tiled_canvas``) and cut into tiles, row-major; when there is
    more than one tile the thumbnail (whole image resized to one tile) follows. Each tile gives a
    row-major ``n x n`` token grid, ``n^2 = image_seq_length`` (pixel shuffle keeps row-major order).
    """
    n = square_side(ctx.processor.image_seq_length, "image_seq_length")
    whole = grid_cells(0, 0, ctx.width, ctx.height, n, n)
    if not ctx.setting("crop_to_patches"):
        return whole
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    size = ctx.setting("size")
    cols, rows = get_optimal_tiled_canvas(
        (ctx.height, ctx.width), (size_get(size, "height"), size_get(size, "width")),
        int(ctx.setting("min_patches")), int(ctx.setting("max_patches")),
    )
    if cols * rows == 1:
        return whole
    return torch.cat([tile_cells(ctx.width, ctx.height, rows, cols, n), whole])


def _internvl_video_rects(ctx: VideoContext) -> torch.Tensor:
    """InternVL videos: per frame (in order), the whole frame as a row-major ``n x n`` token grid,
    ``n^2 = image_seq_length`` (one tile, pixel shuffle keeps row-major order)."""
    if ctx.setting("do_center_crop"):
        raise RegionMappingError("internvl: a video processor with do_center_crop=True is not mapped (the released "
                                 "checkpoints resize whole frames); set do_center_crop=False")
    n = square_side(ctx.processor.image_seq_length, "image_seq_length")
    return video_rows(frame_groups(ctx.n_frames, 1), grid_cells(0, 0, ctx.width, ctx.height, n, n))


def _tiny(p, qwen3: bool = False):
    """InternVL: 32 px tiles, patch 8, downsample 0.5 -> 4 tokens per tile (<= 4 tiles + thumbnail); Qwen2 LM
    (InternVL2.5 / 3), or with ``qwen3`` a Qwen3 LM with per-head q/k RMSNorm (InternVL3.5 HF checkpoints)."""
    from core_eval.testing.recipe import INTERNVL_TEMPLATE, build_tokenizer, lm_kwargs, token_ids, vision_kwargs
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLProcessor, Qwen2Config, Qwen3Config
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    tok = build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>",
        named={"start_image_token": "<img>", "end_image_token": "</img>",
               "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        chat_template=INTERNVL_TEMPLATE,
    )
    per_tile = (INTERNVL_TILE // INTERNVL_PATCH) ** 2 // 4  # downsample_ratio 0.5
    tile = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=tile, crop_to_patches=True, min_patches=1,
                                              max_patches=INTERNVL_MAX_TILES),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size=dict(tile)),
        image_seq_length=per_tile,
        chat_template=INTERNVL_TEMPLATE,
    )
    if qwen3:  # Qwen3 states head_dim explicitly (and normalises q and k per head)
        text = Qwen3Config(**lm_kwargs(p["lm"], tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>", tie=True))
    else:
        text = Qwen2Config(**lm_kwargs(p["lm"], tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>", head_dim=False,
                                       tie=True))
    vision = InternVLVisionConfig(**vision_kwargs(layers=p["vision_layers"]), image_size=[INTERNVL_TILE] * 2,
                                  patch_size=[INTERNVL_PATCH] * 2)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=token_ids(tok, "<IMG_CONTEXT>")[0],
                            image_seq_length=per_tile, downsample_ratio=0.5, vision_feature_layer=-1,
                            tie_word_embeddings=True)
    return config, processor, token_ids(tok, "<|im_end|>", "<|endoftext|>")


FAMILY = Family(
    name="internvl", model_types=("internvl",), layers="model.language_model.layers",
    notes="448px tiles + pixel shuffle; Qwen2 (InternVL2.5/3) or Qwen3 (InternVL3.5) LM",
    region=RegionRule("aspect-matched tiles row-major + thumbnail, pixel shuffle; videos: one whole-frame tile per "
                      "frame, on the image token", _internvl_rects, video_rects=_internvl_video_rects,
                      video_token=image_token_id_of),
    requires=("config.image_token_id", "processor.image_seq_length"),
    tiny=(TinyRecipe("internvl", _tiny, "InternVLForConditionalGeneration", image_tokens=20),
          TinyRecipe("internvl3_5", lambda p: _tiny(p, qwen3=True), "InternVLForConditionalGeneration",
                     image_tokens=20)),
)
