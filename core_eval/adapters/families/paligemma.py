"""PaliGemma: SigLIP tower, a fixed grid of visual tokens, Gemma LM, and a **prefix-LM** mask.

The processor writes the prompt as ``<image> x n`` + BOS + text + ``"\\n"`` and takes a training
answer as ``suffix=`` (appending EOS); ``token_type_ids`` mark the answer (1) against the prefix
(0), and the model makes the whole prefix (image and prompt) bidirectional and the answer causal.
So teacher forcing must go through ``suffix`` (appending the answer to the prompt text would put
it before the ``"\\n"`` and inside the bidirectional prefix): :func:`teacher_forced` does that.
Checkpoints ship no chat template: the prompt is the question itself, as in real use.
"""

from __future__ import annotations

import torch

from core_eval.adapters.base import Family, TinyRecipe
from core_eval.adapters.regions import ImageContext, RegionRule, grid_cells, square_side

PALIGEMMA_IMAGE, PALIGEMMA_PATCH = 32, 8  # tiny recipe: 4x4 = 16 tokens


def _paligemma_rects(ctx: ImageContext) -> torch.Tensor:
    """PaliGemma (SigLIP image processor): the whole image squashed to ``size`` -> a row-major
    ``n x n`` patch grid, ``n^2 = image_seq_length`` (the projector keeps every patch)."""
    n = square_side(ctx.processor.image_seq_length, "image_seq_length")
    return grid_cells(0, 0, ctx.width, ctx.height, n, n)


def teacher_forced(processor, samples, *, padding_side: str = "left"):
    """Prompt + gold answer through the processor's own ``suffix`` contract.

    Returns ``(inputs, answer_mask, starts)`` as :func:`core_eval.prompting.encode_teacher_forced`:
    ``answer_mask`` ``(B, T)`` is True on the answer's tokens (``token_type_ids == 1`` without the
    EOS the processor appends); ``starts`` ``(B,)`` the first answer position. ``labels`` (the
    processor's training extra) is dropped.
    """
    from core_eval.prompting import prompt_text

    inputs = processor(text=[prompt_text(processor, s) for s in samples], images=[list(s.images) for s in samples],
                       suffix=[s.answer for s in samples], padding=True, padding_side=padding_side,
                       return_tensors="pt")
    inputs.pop("labels", None)
    answer = inputs["token_type_ids"].bool() & inputs["attention_mask"].bool()
    B = answer.shape[0]
    starts = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        pos = answer[b].nonzero().flatten()
        if pos.numel() < 2:
            raise ValueError(f"sample {getattr(samples[b], 'id', b)}: empty gold answer {samples[b].answer!r}")
        answer[b, pos[-1]] = False  # the EOS the processor appended is not part of the answer
        starts[b] = pos[0]
    return inputs, answer, starts


def _tiny(p):
    """PaliGemma: SigLIP 32 px, patch 8 (16 tokens), Gemma LM, no chat template."""
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessor, SiglipVisionConfig

    from core_eval.testing.recipe import build_tokenizer, lm_kwargs, token_ids, vision_kwargs

    tok = build_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], bos="<bos>", eos="<eos>", pad="<pad>",
                          unk="<unk>", named={"image_token": "<image>"})
    n_tokens = (PALIGEMMA_IMAGE // PALIGEMMA_PATCH) ** 2
    image_processor = SiglipImageProcessor(size={"height": PALIGEMMA_IMAGE, "width": PALIGEMMA_IMAGE})
    image_processor.image_seq_length = n_tokens
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)  # adds loc/seg tokens
    lm = p["lm"]
    text = GemmaConfig(**lm_kwargs(lm, tok, bos="<bos>", eos="<eos>", pad="<pad>", tie=True))
    vision = SiglipVisionConfig(**vision_kwargs(layers=p["vision_layers"]), image_size=PALIGEMMA_IMAGE,
                                patch_size=PALIGEMMA_PATCH, vision_use_head=False)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=token_ids(tok, "<image>")[0],
                             projection_dim=lm["hidden_size"], hidden_size=lm["hidden_size"],
                             vocab_size=text.vocab_size, tie_word_embeddings=True)
    return config, processor, token_ids(tok, "<eos>")


FAMILY = Family(
    name="paligemma", model_types=("paligemma",), layers="model.language_model.layers",
    notes="SigLIP grid, Gemma LM; prefix-LM mask (image + prompt bidirectional); answers as suffix",
    region=RegionRule("square resize -> patch grid, row-major", _paligemma_rects),
    attention_mask="prefix_lm",
    requires=("config.image_token_id", "processor.image_seq_length"),
    tiny=(TinyRecipe("paligemma", _tiny, "PaliGemmaForConditionalGeneration", image_tokens=16),),
    teacher_forcing=teacher_forced,
)
