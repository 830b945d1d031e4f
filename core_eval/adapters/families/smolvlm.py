"""SmolVLM: the Idefics3 layout (image splitting + pixel shuffle) under its own model type.

``SmolVLMImageProcessor`` is Idefics3's (same resize, ``resize_for_vision_encoder`` tiling, global
image), and ``SmolVLMProcessor`` expands an image the same way (``<row_r_col_c>`` + ``image_seq_len``
tokens per tile, row-major, then ``<global-img>`` + the global image's tokens), so the region rule is
Idefics3's. The template differs (``<|im_start|>`` BOS, ``<video>``), and video frames are expanded
as single images. ``SmolVLMProcessor`` needs the ``num2words`` package (it refuses to construct
without it); core_eval does not depend on it, its ``test`` extra installs it for the tiny recipe.
"""

from __future__ import annotations

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.families.idefics3 import IDEFICS3_REGION, IDEFICS3_REQUIRES

#: tiny recipe: 32 px tiles, patch 8, pixel shuffle 2 -> 4 tokens per tile; longest edge 96 -> up to 3x3 tiles.
SMOLVLM_TILE, SMOLVLM_PATCH, SMOLVLM_SCALE, SMOLVLM_LONGEST = 32, 8, 2, 96


def _tiny(p):
    """SmolVLM: 32 px tiles, patch 8, pixel shuffle 2 (4 tokens per tile), image splitting on with longest
    edge 96: the 112x84 example image gives 3x3 tiles + global = 40 tokens; Llama LM."""
    from core_eval.testing._tokenizer import SMOLVLM_TEMPLATE
    from core_eval.testing.recipe import build_tokenizer, lm_kwargs, token_ids, vision_kwargs
    from transformers import LlamaConfig, SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
         "<end_of_utterance>", "<global-img>", "<video>", *rows],
        bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>", unk="<|endoftext|>", add_bos=True,
        named={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
               "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>",
               "video_token": "<video>"},
        chat_template=SMOLVLM_TEMPLATE,
    )
    n_tokens = (SMOLVLM_TILE // SMOLVLM_PATCH) ** 2 // SMOLVLM_SCALE**2
    tile = {"longest_edge": SMOLVLM_TILE}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size={"longest_edge": SMOLVLM_LONGEST}, max_image_size=dict(tile),
                                              do_image_splitting=True),
        tokenizer=tok,
        video_processor=SmolVLMVideoProcessor(size={"longest_edge": SMOLVLM_TILE}, max_image_size=dict(tile)),
        image_seq_len=n_tokens, chat_template=SMOLVLM_TEMPLATE,
    )
    text = LlamaConfig(**lm_kwargs(p["lm"], tok, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>"),
                       rms_norm_eps=1e-5)
    vision = SmolVLMVisionConfig(**vision_kwargs(layers=p["vision_layers"]), image_size=SMOLVLM_TILE,
                                 patch_size=SMOLVLM_PATCH)
    config = SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=SMOLVLM_SCALE,
                           image_token_id=token_ids(tok, "<image>")[0])
    return config, processor, token_ids(tok, "<end_of_utterance>", "<|endoftext|>")


FAMILY = Family(
    name="smolvlm", model_types=("smolvlm",), layers="model.text_model.layers", vision="model.vision_model",
    notes="Idefics3 layout (image splitting + pixel shuffle)", region=IDEFICS3_REGION, requires=IDEFICS3_REQUIRES,
    tiny=(TinyRecipe("smolvlm", _tiny, "SmolVLMForConditionalGeneration", gqa=False, image_tokens=40),),
)
