"""Slow, obviously-right references used by the tests (never by the product).

``oracle_attention`` is eager attention written out with matmul + softmax and an explicit
per-head boolean mask. Heads listed in ``ORACLE_HEADS[layer]`` get their mode's treatment:
``uniform`` (scores zeroed before masking) or ``visual_knockout`` (visual keys masked out).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ORACLE_NAME = "core_eval_test_oracle"
ORACLE_HEADS: dict[int, dict[int, str]] = {}
ORACLE_STATE: dict[str, torch.Tensor] = {}  # "visual": (B, T) bool over absolute positions


def oracle_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    B, H, q, D = query.shape
    groups = H // key.shape[1]
    k = key.repeat_interleave(groups, dim=1).float()
    v = value.repeat_interleave(groups, dim=1).float()
    kv = k.shape[2]
    scores = (query.float() @ k.transpose(-1, -2)) * (scaling if scaling is not None else D**-0.5)
    if attention_mask is None:
        if q == 1:
            allowed = torch.ones(1, 1, 1, kv, dtype=torch.bool)
        else:
            allowed = torch.ones(q, kv, dtype=torch.bool).tril()[None, None]
    else:
        allowed = attention_mask.bool()[..., :kv]
    allowed = allowed.expand(B, H, q, kv).clone()
    for h, mode in ORACLE_HEADS.get(module.layer_idx, {}).items():
        if mode == "uniform":
            scores[:, h] = 0.0
        elif mode == "visual_knockout":
            allowed[:, h] &= ~ORACLE_STATE["visual"][:, None, :kv]
        else:
            raise ValueError(mode)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = probs @ v
    return out.transpose(1, 2).to(query.dtype).contiguous(), None


AttentionInterface.register(ORACLE_NAME, oracle_attention)
AttentionMaskInterface.register(ORACLE_NAME, sdpa_mask)


# ---------------------------------------------------------------- hybrid sparse attention oracle

HYBRID_NAME = "core_eval_test_hybrid_oracle"
HYBRID_STATE: dict = {}  # "full": {layer: (H,) bool}, "pattern": Pattern, "visual": (B, T) bool


def hybrid_oracle(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Dense attention with an explicit per-head boolean mask (core_eval.sparse.reference_hybrid):
    the mask the model built (``sdpa_mask`` is registered under this name, so Gemma 3's bidirectional
    image blocks arrive here) for full heads, that mask AND the sparse pattern for the others."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from core_eval.sparse import reference_hybrid

    full = HYBRID_STATE["full"].get(module.layer_idx)
    if full is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    visual = HYBRID_STATE["visual"][:, : key.shape[2]]
    return reference_hybrid(query, key, value, attention_mask, scaling, full, HYBRID_STATE["pattern"], visual), None


AttentionInterface.register(HYBRID_NAME, hybrid_oracle)
AttentionMaskInterface.register(HYBRID_NAME, sdpa_mask)
