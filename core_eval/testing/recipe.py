"""Helpers the families' tiny recipes share (``TinyRecipe.build`` in ``core_eval/adapters/families/``).

A recipe gets ``params`` (``params["lm"]``: hidden_size, num_hidden_layers, num_attention_heads,
num_key_value_heads, intermediate_size, initializer_range, max_position_embeddings, head_dim;
``params["vision_layers"]``; plus its ``extra_overrides``) and returns ``(config, processor, eos_ids)``.
"""

from __future__ import annotations

from ._tokenizer import build_tokenizer  # noqa: F401  (re-exported for recipes)
from ._tokenizer import (  # noqa: F401
    CHATML_TEMPLATE,
    GEMMA3_TEMPLATE,
    IDEFICS3_TEMPLATE,
    INTERNVL_TEMPLATE,
    LLAMA3_TEMPLATE,
    LLAVA_TEMPLATE,
    QWEN_TEMPLATE,
)


def vocab_size(tok) -> int:
    """Tokenizer size rounded up to a multiple of 64."""
    return -(-len(tok) // 64) * 64


def token_ids(tok, *tokens: str) -> list[int]:
    """Ids of named tokens (all must exist)."""
    out = [tok.convert_tokens_to_ids(t) for t in tokens]
    assert all(isinstance(i, int) and i >= 0 for i in out), (tokens, out)
    return out


def lm_kwargs(lm: dict, tok, *, bos: str | None, eos: str, pad: str, head_dim: bool = True, tie: bool = False) -> dict:
    """Text-config kwargs: the LM shape plus vocabulary and special-token ids."""
    d = {k: v for k, v in lm.items() if head_dim or k != "head_dim"}
    d.update(
        vocab_size=vocab_size(tok),
        bos_token_id=tok.convert_tokens_to_ids(bos) if bos else None,
        eos_token_id=tok.convert_tokens_to_ids(eos),
        pad_token_id=tok.convert_tokens_to_ids(pad),
        tie_word_embeddings=tie,
    )
    return d


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's ``[16, 24, 24]`` for head_dim 128, scaled down to ``head_dim``."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def vision_kwargs(hidden: int = 32, layers: int = 2, heads: int = 4) -> dict:
    """A small ViT: hidden 32, 2 layers, 4 heads."""
    return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads)
