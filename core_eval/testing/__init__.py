"""Offline tiny random models (real configs, processors and tokenizers) for tests and demos.

>>> from core_eval.testing import tiny_model_dir, load_tiny, example_inputs
>>> model, processor = load_tiny("qwen2_vl")          # cached build, loaded via Auto classes
>>> batch = example_inputs("qwen2_vl", batch=2)       # chat-templated, left-padded, with images
>>> model.generate(**batch, max_new_tokens=3, do_sample=False)
"""

from .inputs import (
    DEFAULT_PROMPTS,
    EXAMPLE_IMAGE_SIZE,
    EXAMPLE_IMAGE_TOKENS,
    example_inputs,
    example_messages,
    is_text_only,
    load_processor,
    load_tiny,
    resolve_dir,
    synthetic_image,
)
from .tiny_models import (
    FACTORY_VERSION,
    FAMILIES,
    TEXT_FAMILIES,
    VLM_FAMILIES,
    build_tiny,
    cache_key,
    cache_root,
    tiny_model_dir,
)

__all__ = [
    "DEFAULT_PROMPTS",
    "EXAMPLE_IMAGE_SIZE",
    "EXAMPLE_IMAGE_TOKENS",
    "FACTORY_VERSION",
    "FAMILIES",
    "TEXT_FAMILIES",
    "VLM_FAMILIES",
    "build_tiny",
    "cache_key",
    "cache_root",
    "example_inputs",
    "example_messages",
    "is_text_only",
    "load_processor",
    "load_tiny",
    "resolve_dir",
    "synthetic_image",
    "tiny_model_dir",
]
