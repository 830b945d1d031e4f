"""Deterministic example inputs and loaders for the tiny models."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .tiny_models import VLM_FAMILIES, recipes, tiny_model_dir

EXAMPLE_IMAGE_SIZE = (112, 84)  # (width, height)
#: Visual (image placeholder) tokens per ``synthetic_image()`` of EXAMPLE_IMAGE_SIZE, per built-in
#: tiny model (``TinyRecipe.image_tokens``, declared in each family module).
EXAMPLE_IMAGE_TOKENS = {name: r.image_tokens for name, (_, r) in recipes().items() if name in VLM_FAMILIES}
DEFAULT_PROMPTS = (
    "Describe the image.",
    "What colour is the square in the top left corner of this picture?",
)
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
]


def synthetic_image(index: int = 0, size: tuple[int, int] = EXAMPLE_IMAGE_SIZE):
    """A deterministic RGB PIL image: a 4x3 grid of coloured blocks, rotated by ``index``."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    cols, rows = 4, 3
    for r in range(rows):
        for c in range(cols):
            colour = _PALETTE[(r * cols + c + index) % len(_PALETTE)]
            draw.rectangle(
                [c * w // cols, r * h // rows, (c + 1) * w // cols - 1, (r + 1) * h // rows - 1], fill=colour
            )
    return img


def resolve_dir(family_or_dir: str | os.PathLike) -> Path:
    """A family name -> its cached tiny model dir; anything else is taken as a path."""
    if isinstance(family_or_dir, str) and family_or_dir in recipes():
        return tiny_model_dir(family_or_dir)
    return Path(family_or_dir)


def is_text_only(model_dir: str | os.PathLike) -> bool:
    """True if the directory holds no image processor (text-only model)."""
    d = Path(model_dir)
    return not ((d / "processor_config.json").exists() or (d / "preprocessor_config.json").exists())


def load_processor(family_or_dir: str | os.PathLike):
    """``AutoProcessor`` for image-text models, ``AutoTokenizer`` for text-only ones, tagged with the
    checkpoint config's family (as ``core_eval.load`` does)."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    from core_eval.adapters import bind_family, family_for_config

    d = resolve_dir(family_or_dir)
    proc = AutoTokenizer.from_pretrained(d) if is_text_only(d) else AutoProcessor.from_pretrained(d)
    bind_family(proc, family_for_config(AutoConfig.from_pretrained(d)))
    return proc


def load_tiny(family_or_dir: str | os.PathLike, **from_pretrained_kwargs: Any):
    """Load ``(model, processor)`` through the Auto classes, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    d = resolve_dir(family_or_dir)
    auto = AutoModelForCausalLM if is_text_only(d) else AutoModelForImageTextToText
    model = auto.from_pretrained(d, **from_pretrained_kwargs).eval()
    return model, load_processor(d)


def example_messages(prompt: str, n_images: int = 1) -> list[dict]:
    """One user turn: ``n_images`` image entries, then the text."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def _prompts(prompt: str | Sequence[str] | None, batch: int) -> list[str]:
    if prompt is None:
        return [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] + " Be brief." * (i // len(DEFAULT_PROMPTS))
                for i in range(batch)]
    if isinstance(prompt, str):
        return [prompt + " Be brief." * i for i in range(batch)]
    prompts = list(prompt)
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for batch={batch}")
    return prompts


def example_inputs(
    family_or_dir: str | os.PathLike,
    *,
    batch: int = 1,
    padding_side: str = "left",
    n_images: int = 1,
    prompt: str | Sequence[str] | None = None,
    processor: Any = None,
):
    """Processor outputs (``BatchFeature``) for a chat-templated prompt with synthetic images.

    Every sample gets ``n_images`` images (``synthetic_image(k)`` for the k-th image overall,
    all the same size, so each image gives the same number of visual tokens) and its own
    prompt; by default the prompts of a batch differ in length, so ``batch >= 2`` exercises
    padding on ``padding_side``. Text-only models ignore ``n_images`` and return the
    tokenizer's ``BatchEncoding``. Pass ``processor`` to skip loading one. Exactly one BOS
    (for families that have one) starts every unpadded sequence.
    """
    from types import SimpleNamespace

    from core_eval.prompting import encode

    d = resolve_dir(family_or_dir)
    proc = processor if processor is not None else load_processor(d)
    n = 0 if not hasattr(proc, "image_processor") else n_images
    samples = [SimpleNamespace(question=p, answer="", images=[synthetic_image(i * n + k) for k in range(n)])
               for i, p in enumerate(_prompts(prompt, batch))]
    return encode(proc, samples, padding_side=padding_side)
