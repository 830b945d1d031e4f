"""Idefics2: SigLIP tower + perceiver resampler (a fixed number of latent tokens per image), Mistral
LM, causal mask.

Region rule, and why it is coarse. Idefics2's connector is a perceiver resampler: every frame (the
image, or one of its crops) becomes ``perceiver_config.resampler_n_latents`` latent tokens
(``processor.image_seq_len`` ``<image>`` tokens), each a learned query that cross-attends to *all*
of the frame's vision patches. No latent corresponds to a patch, so there is no patch -> token
geometry to recover, and this module does not pretend there is: **every latent token is mapped to
the whole view it summarises**. Consequences, by design:

- without ``do_image_splitting`` (the processor's default), each image is one view, so any box on an
  image selects all of that image's latents: RAM equals visual mass and lift is 1. RAM then says
  only *which image* a head reads, never where in it;
- with ``do_image_splitting`` the image is cut into 4 crops (top-left, top-right, bottom-left,
  bottom-right, at ``W // 2`` and ``H // 2`` of the *original* image, before any resize) followed
  by the whole image, ``5 * image_seq_len`` tokens. A box selects the latents of every crop it
  overlaps plus the whole image's: quadrant resolution, no finer.

A latent's rectangle is its view's rectangle in original pixels. (The tower sees the resized view
only in whole vision patches; the few resized pixels past the last whole patch at the right / bottom
edge are inside the rectangle although no patch reads them. The patch size is a model setting the
processor does not carry.) The frame count follows the processor's ``image_processor.do_image_splitting``
attribute, which is what ``Idefics2Processor`` expands the text by; a call-time
``do_image_splitting`` that disagrees gives a batch the model itself rejects, and the rule raises.
"""

from __future__ import annotations

import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.regions import ImageContext, RegionMappingError, RegionRule

#: tiny recipe: views resized into [16, 48] px, patch 8, 4 latents per view, splitting on (5 views).
IDEFICS2_MIN, IDEFICS2_MAX, IDEFICS2_PATCH, IDEFICS2_LATENTS = 16, 48, 8, 4


def idefics2_views(width: int, height: int, split: bool) -> list[tuple[int, int, int, int]]:
    """The views ``(x0, y0, x1, y1)`` Idefics2ImageProcessor feeds the tower, in LM order:
    ``split_images`` (4 crops at the integer midpoints, row-major) then the whole image."""
    views = []
    if split:
        mw, mh = width // 2, height // 2
        views = [(0, 0, mw, mh), (mw, 0, width, mh), (0, mh, mw, height), (mw, mh, width, height)]
    return views + [(0, 0, width, height)]


def _idefics2_rects(ctx: ImageContext) -> torch.Tensor:
    """Idefics2 (perceiver resampler): ``image_seq_len`` latent tokens per view, each mapped to the
    whole view it summarises (see the module docstring); views: [4 crops row-major +] whole image."""
    n = int(ctx.processor.image_seq_len)
    split = bool(ctx.image_processor.do_image_splitting)
    asked = ctx.images_kwargs.get("do_image_splitting")
    if asked is not None and bool(asked) != split:
        raise RegionMappingError(
            f"idefics2: do_image_splitting={asked} was passed at call time, but Idefics2Processor expands each "
            f"<image> by its image_processor.do_image_splitting={split}, so the text and the pixel frames of this "
            "batch disagree (the model rejects it). Set processor.image_processor.do_image_splitting instead."
        )
    views = idefics2_views(ctx.width, ctx.height, split)
    return torch.tensor(views, dtype=torch.float64).repeat_interleave(n, dim=0)


IDEFICS2_REGION = RegionRule(
    "perceiver latents: every latent -> the whole view it summarises ([4 crops +] whole image); no patch grid",
    _idefics2_rects,
)


def _tiny(p):
    """Idefics2: views resized into [16, 48] px, patch 8, perceiver with 4 latents per view; image splitting
    on (4 crops + whole image = 20 tokens); Mistral LM."""
    from core_eval.testing._tokenizer import IDEFICS2_TEMPLATE
    from core_eval.testing.recipe import build_tokenizer, lm_kwargs, token_ids, vision_kwargs
    from transformers import Idefics2Config, Idefics2ImageProcessor, Idefics2Processor, MistralConfig
    from transformers.models.idefics2.configuration_idefics2 import Idefics2PerceiverConfig, Idefics2VisionConfig

    tok = build_tokenizer(
        ["<unk>", "<s>", "</s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        bos="<s>", eos="<end_of_utterance>", pad="<unk>", unk="<unk>", add_bos=True,
        named={"image_token": "<image>", "image_boundary_token": "<fake_token_around_image>"},
        chat_template=IDEFICS2_TEMPLATE,
    )
    image_processor = Idefics2ImageProcessor(
        size={"shortest_edge": IDEFICS2_MIN, "longest_edge": IDEFICS2_MAX}, do_image_splitting=True,
    )
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=IDEFICS2_LATENTS,
                                  chat_template=IDEFICS2_TEMPLATE)
    lm = p["lm"]
    text = MistralConfig(**lm_kwargs(lm, tok, bos="<s>", eos="<end_of_utterance>", pad="<unk>"), rms_norm_eps=1e-5)
    vision = Idefics2VisionConfig(**vision_kwargs(layers=p["vision_layers"]), image_size=IDEFICS2_MAX,
                                  patch_size=IDEFICS2_PATCH)
    perceiver = Idefics2PerceiverConfig(
        hidden_size=lm["hidden_size"], rms_norm_eps=1e-5, resampler_n_latents=IDEFICS2_LATENTS, resampler_depth=2,
        resampler_n_heads=2, resampler_head_dim=16, num_key_value_heads=1,
    )
    config = Idefics2Config(text_config=text, vision_config=vision, perceiver_config=perceiver,
                            image_token_id=token_ids(tok, "<image>")[0])
    return config, processor, token_ids(tok, "<end_of_utterance>", "</s>")


FAMILY = Family(
    name="idefics2", model_types=("idefics2",), layers="model.text_model.layers", vision="model.vision_model",
    notes="perceiver resampler: latents map to their whole view (RAM = visual mass unless do_image_splitting)",
    region=IDEFICS2_REGION,
    requires=("config.image_token_id", "config.perceiver_config.resampler_n_latents", "processor.image_seq_len",
              "processor.image_processor.do_image_splitting"),
    tiny=(TinyRecipe("idefics2", _tiny, "Idefics2ForConditionalGeneration", image_tokens=5 * IDEFICS2_LATENTS),),
)
