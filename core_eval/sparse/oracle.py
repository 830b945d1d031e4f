"""The test oracle: dense attention with an explicit per-head boolean mask."""

from __future__ import annotations

import torch

from core_eval.attention.reference import allowed_keys, masked_sdpa
from core_eval.sparse.pattern import Pattern, row_flags


def reference_hybrid(query, key, value, attention_mask, scaling, full_heads: torch.Tensor, pattern: Pattern, visual):
    """Oracle: dense attention over all keys with an explicit per-head boolean mask.

    Full query heads (``full_heads`` ``(H,)`` bool) get the model's own mask (``attention_mask``
    as passed to the attention function, through :func:`allowed_keys`); sparse heads get that
    mask AND the pattern (sinks, text tokens for ``text_only``, or ``i - j < window``), which adds
    no causality of its own. Query rows are the last ``q`` positions of the ``kv`` keys (prefill,
    or decode with a full cache); ``visual`` ``(B, kv)``. Returns ``(B, q, H, D)``.
    """
    B, H, q, D = query.shape
    kv = key.shape[2]
    dev = query.device
    g = H // key.shape[1]
    k, v = key.repeat_interleave(g, 1), value.repeat_interleave(g, 1)
    model_mask = allowed_keys(attention_mask, q, kv, dev).expand(B, 1, q, kv)
    real, vis, sink = row_flags(attention_mask, B, kv, dev, visual, pattern.n_sink)
    qp = torch.arange(kv - q, kv, device=dev)[:, None]
    kp = torch.arange(kv, device=dev)[None, :]
    keep = (qp - kp < pattern.window)[None, None] | pattern.far(real, vis, sink)[:, None, None, :]
    sparse = model_mask & keep
    full = full_heads.to(dev)[None, :, None, None]
    per_head = torch.where(full, model_mask, sparse)  # (B, H, q, kv)
    return masked_sdpa(query, k, v, per_head, scaling).transpose(1, 2)
