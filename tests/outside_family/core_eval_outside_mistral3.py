"""A model family defined OUTSIDE core_eval: Mistral 3 (Pixtral vision tower), in one module.

What a user writes to add a family: the Family record with its region rule, and (optionally) a
tiny recipe for tests. Used by tests/test_outside_family.py through ``family=
core_eval_outside_mistral3:FAMILY`` and, installed as a throw-away distribution
(``pyproject.toml`` beside this file), through the ``core_eval.families`` entry point.

Pixtral resizes the whole image (aspect kept, longest edge capped) to multiples of
``patch_size * spatial_merge_size``, then emits one ``[IMG]`` token per merged patch, row-major, with
an ``[IMG_BREAK]`` after each row and ``[IMG_END]`` last. Only ``[IMG]`` carries image features,
so only ``[IMG]`` positions are visual tokens; the break/end markers are text.
"""

from __future__ import annotations

from core_eval.adapters import Family, TinyRecipe
from core_eval.adapters.regions import ImageContext, RegionRule, batch_output, grid_cells


def pixtral_rects(ctx: ImageContext):
    """One cell per merged patch of the resized image (``image_sizes`` row ``index``), row-major."""
    step = int(ctx.processor.patch_size) * int(ctx.processor.spatial_merge_size)
    h, w = (int(v) for v in batch_output(ctx.outputs, "image_sizes")[ctx.index])
    return grid_cells(0, 0, ctx.width, ctx.height, h // step, w // step)


def tiny_mistral3(p):
    from transformers import Mistral3Config, MistralConfig, PixtralImageProcessor, PixtralProcessor, PixtralVisionConfig

    from core_eval.testing.recipe import LLAVA_TEMPLATE, build_tokenizer, lm_kwargs, token_ids, vision_kwargs

    template = LLAVA_TEMPLATE.replace("<image>", "[IMG]")  # the same turn layout, Pixtral's placeholder
    tok = build_tokenizer(["<unk>", "<s>", "</s>", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "<pad>"],
                          bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True, chat_template=template)
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": 56}, patch_size={"height": 8, "width": 8}),
        tokenizer=tok, patch_size=8, spatial_merge_size=2, chat_template=template,
    )
    text = MistralConfig(**lm_kwargs(p["lm"], tok, bos="<s>", eos="</s>", pad="<pad>"), sliding_window=None)
    vision = PixtralVisionConfig(**vision_kwargs(layers=p["vision_layers"]), image_size=56, patch_size=8,
                                 head_dim=8)
    config = Mistral3Config(vision_config=vision, text_config=text, image_token_index=token_ids(tok, "[IMG]")[0],
                            spatial_merge_size=2, vision_feature_layer=-1)
    return config, processor, token_ids(tok, "</s>")


FAMILY = Family(
    name="mistral3_outside", model_types=("mistral3",), layers="model.language_model.layers",
    notes="Mistral 3 / Pixtral, defined outside core_eval (test fixture)",
    region=RegionRule("aspect-kept resize -> merged patch grid, row-major ([IMG_BREAK] rows)", pixtral_rects),
    requires=("config.image_token_id", "processor.patch_size", "processor.spatial_merge_size"),
    tiny=(TinyRecipe("mistral3_outside", tiny_mistral3, "Mistral3ForConditionalGeneration", image_tokens=12),),
)
