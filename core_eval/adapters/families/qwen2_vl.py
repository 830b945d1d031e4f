"""Qwen2-VL: dynamic resolution, 2x2 patch merge, M-RoPE, causal mask; video through the same tower."""

from __future__ import annotations

import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.regions import (
    ImageContext, RegionMappingError, RegionRule, VideoContext, batch_output, frame_groups, grid_cells, size_get,
    video_rows,
)

QWEN_PATCH, QWEN_MERGE = 14, 2  # tiny recipe: tokens = (H/28)*(W/28), pixels in [28*28, 112*112] -> 1..16
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 28 * 28, 112 * 112


def _qwen_rects(ctx: ImageContext) -> torch.Tensor:
    """Qwen2-VL / Qwen2.5-VL: smart_resize of the whole image -> ``(t, h, w)`` patch grid.

    One token per ``merge_size x merge_size`` block, row-major over the merged grid
    ``(h / m, w / m)``, repeated per temporal frame. The grid is read from ``image_grid_thw``
    (row ``index``); without it, it is recomputed with ``smart_resize``. The resize keeps the whole
    image, so token ``(r, c)`` covers ``[c W / cols, (c + 1) W / cols) x [r H / rows, ...)``.
    """
    m = int(ctx.setting("merge_size"))
    grid = batch_output(ctx.outputs, "image_grid_thw")
    if grid is not None:
        t, gh, gw = (int(v) for v in grid[ctx.index])
    else:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        patch, size = int(ctx.setting("patch_size")), ctx.setting("size")
        rh, rw = smart_resize(ctx.height, ctx.width, factor=patch * m, min_pixels=size_get(size, "shortest_edge"),
                              max_pixels=size_get(size, "longest_edge"))
        t, gh, gw = 1, rh // patch, rw // patch
    return grid_cells(0, 0, ctx.width, ctx.height, gh // m, gw // m).repeat(t, 1)


def grid_video_rects(ctx: VideoContext, family: str) -> torch.Tensor:
    """Qwen-VL / GLM-4.1V videos: every frame resized as a whole (``smart_resize``) -> a ``(t, h, w)``
    patch grid read from ``video_grid_thw`` (row ``index``), ``temporal_patch_size`` consecutive frames per
    temporal step (the processor's ``patchify`` pads the last step by repeating the last frame). Per step,
    one token per ``merge_size x merge_size`` block, row-major over the merged grid; step ``s`` covers
    frames ``[s tp, min((s + 1) tp, n_frames))``.
    """
    grid = batch_output(ctx.outputs, "video_grid_thw")
    if grid is None:
        raise RegionMappingError(f"{family}: mapping video tokens needs the processor's video_grid_thw; pass the "
                                 "batch outputs the video tokens came from")
    m, tp = int(ctx.setting("merge_size")), int(ctx.setting("temporal_patch_size"))
    t, gh, gw = (int(v) for v in grid[ctx.index])
    groups = frame_groups(ctx.n_frames, tp)
    if len(groups) != t:
        raise RegionMappingError(
            f"{family}: video {ctx.index} has {ctx.n_frames} frames, i.e. {len(groups)} temporal patches of {tp}, but "
            f"video_grid_thw says t={t}: the processor resampled the frames (pass do_sample_frames=False, as "
            "core_eval.prompting does)"
        )
    return video_rows(groups, grid_cells(0, 0, ctx.width, ctx.height, gh // m, gw // m))


def _qwen_video_rects(ctx: VideoContext) -> torch.Tensor:
    """Qwen2-VL / 2.5-VL / 3-VL videos (see :func:`grid_video_rects`); Qwen3-VL's per-step ``<t seconds>``
    timestamps and vision start / end tokens between the steps are text, not video tokens."""
    return grid_video_rects(ctx, "qwen")


def qwen_video_tokens(processor) -> tuple[int, ...]:
    vid = getattr(processor, "video_token_id", None)
    return () if vid is None else (int(vid),)


#: The region rule of the Qwen-VL families (merge geometry shared by 2-VL, 2.5-VL and 3-VL).
QWEN_REGION = RegionRule("smart_resize -> image_grid_thw -> merged blocks, row-major; videos: per temporal patch "
                         "of 2 frames, the same blocks", _qwen_rects, extra_visual_tokens=qwen_video_tokens,
                         video_rects=_qwen_video_rects)
QWEN_REQUIRES = ("config.image_token_id", "config.video_token_id", "processor.image_processor.merge_size",
                 "processor.image_processor.patch_size")


_QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]


def tiny_qwen_vl(p, v25: bool):
    """Qwen2-VL / 2.5-VL: patch 14, merge 2, 28..112 px (1..16 tokens per image), M-RoPE."""
    from core_eval.testing.recipe import QWEN_TEMPLATE, build_tokenizer, lm_kwargs, mrope_section, token_ids
    if v25:
        from transformers import Qwen2_5_VLConfig as Cfg
        from transformers import Qwen2_5_VLProcessor as Proc
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig as TextCfg
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig as VisCfg
    else:
        from transformers import Qwen2VLConfig as Cfg
        from transformers import Qwen2VLProcessor as Proc
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig as TextCfg
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig as VisCfg
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tok = build_tokenizer(
        _QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN_TEMPLATE
    )
    geometry = dict(patch_size=QWEN_PATCH, merge_size=QWEN_MERGE, temporal_patch_size=2)
    size = {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS}
    processor = Proc(
        image_processor=Qwen2VLImageProcessor(size=size, **geometry),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(size=dict(size), **geometry),
        chat_template=QWEN_TEMPLATE,
    )
    lm = p["lm"]
    text = TextCfg(
        **lm_kwargs(lm, tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>", head_dim=False),
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                         "mrope_section": mrope_section(lm["head_dim"])},
    )
    vis_common = dict(depth=p["vision_layers"], num_heads=2, patch_size=QWEN_PATCH,
                      spatial_merge_size=QWEN_MERGE, temporal_patch_size=2)
    if v25:
        vision = VisCfg(**vis_common, hidden_size=32, intermediate_size=64, out_hidden_size=lm["hidden_size"],
                        window_size=56, fullatt_block_indexes=[p["vision_layers"] - 1])
    else:
        vision = VisCfg(**vis_common, embed_dim=32, mlp_ratio=2, hidden_size=lm["hidden_size"])
    return qwen_vl_config(Cfg, tok, text, vision), processor, token_ids(tok, "<|im_end|>", "<|endoftext|>")


def qwen_vl_config(config_class, tok, text, vision):
    """A Qwen-VL-layout config (2-VL, 2.5-VL, 3-VL) with the vision token ids from ``tok``."""
    from core_eval.testing.recipe import token_ids

    img, vid, vs, ve = token_ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return config_class(text_config=text, vision_config=vision, image_token_id=img, video_token_id=vid,
                        vision_start_token_id=vs, vision_end_token_id=ve)


FAMILY = Family(
    name="qwen2_vl", model_types=("qwen2_vl",), layers="model.language_model.layers", vision="model.visual",
    video_token_fields=("video_token_id",), notes="dynamic resolution, 2x2 patch merge, M-RoPE",
    region=QWEN_REGION, requires=QWEN_REQUIRES,
    tiny=(TinyRecipe("qwen2_vl", lambda p: tiny_qwen_vl(p, v25=False), "Qwen2VLForConditionalGeneration",
                     image_tokens=12),),
)
