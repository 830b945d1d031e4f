"""Slow, explicit attention helpers: boolean masks and SDPA on a subset of heads.

Shapes follow transformers' attention interface: query ``(B, H, q, D)``, key/value
``(B, Hkv, kv, D)``, outputs ``(B, h, q, D)`` for the ``h`` heads asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def allowed_keys(attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device) -> torch.Tensor:
    """Boolean ``(B|1, 1, q, kv)`` mask of the keys each query row may see.

    ``attention_mask`` is what the model passes to the attention function: a boolean 4-D mask
    (``sdpa_mask``), an additive float mask, or ``None``. ``None`` means what transformers' SDPA
    path makes of it: a single query row sees every key (decode step); several rows are causal with
    upper-left alignment (``q == kv``, or a prefill into a longer static cache).
    """
    if attention_mask is None:
        if q_len == 1:
            return torch.ones(1, 1, 1, kv_len, dtype=torch.bool, device=device)
        i = torch.arange(q_len, device=device)[:, None]
        j = torch.arange(kv_len, device=device)[None, :]
        return (j <= i)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask[..., :kv_len]
    return attention_mask[..., :kv_len] > torch.finfo(attention_mask.dtype).min / 2


def gather_heads(query, key, value, heads: torch.Tensor):
    """Select query heads ``heads`` and the KV head each reads (GQA: ``h // groups``)."""
    groups = query.shape[1] // key.shape[1]
    kv = heads // groups
    return query.index_select(1, heads), key.index_select(1, kv), value.index_select(1, kv)


def masked_sdpa(query, key, value, allowed: torch.Tensor, scaling: float | None = None) -> torch.Tensor:
    """SDPA with an explicit boolean mask; rows with no allowed key output zeros.

    query ``(B, h, q, D)``, key/value ``(B, h, kv, D)`` (same head count), allowed broadcastable
    to ``(B, h, q, kv)``. Returns ``(B, h, q, D)``.
    """
    any_key = allowed.any(dim=-1, keepdim=True)
    safe = allowed | ~any_key  # avoid NaN rows; zeroed below
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=safe, scale=scaling)
    return torch.where(any_key, out, torch.zeros((), dtype=out.dtype, device=out.device))
