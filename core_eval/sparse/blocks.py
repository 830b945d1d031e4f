"""The ``blocks`` prefill backend: sparse heads block by block on gathered keys (SDPA, float masks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core_eval.sparse.pattern import Pattern


def sparse_prefill(q, k, v, real, visual, sink, pattern: Pattern, scaling, block: int = 0, model_mask=None):
    """Sparse heads over a whole prompt: block by block, each block on the keys it may see.

    q ``(B, Hq, T, D)``, k/v ``(B, Hkv, T, D)`` at positions ``0..T-1``; flags ``(B, T)``;
    ``model_mask`` ``(B|1, 1, T, T)`` bool, the mask the model built (``None``: causal, padding
    from ``real``). Query ``i`` sees, within the model's mask, two disjoint key sets: its window
    (every key with ``i - j < W``, future keys included) and the far keys (sinks, and text tokens
    for ``text_only``) at positions ``<= i - W``. A block of ``Bq`` queries ``[s, e)`` (default
    ``min(W, 128)``) gets one SDPA call on the far keys (gathered once per row) plus the
    contiguous slice ``[s - W + 1, hi)``, ``hi`` = one past the furthest key any row of the block
    may see (``e`` for a causal mask): ``O(T * (n_far + Bq + W))`` instead of ``O(T^2)`` for causal
    masks, plus the size of a bidirectional block for the rows inside it. Returns ``(B, Hq, T, D)``.
    """
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    W = pattern.window
    Bq = block or min(W, 128)  # measured on CPU: 128-query blocks beat larger ones (less masked waste)
    dev = q.device
    far = pattern.far(real, visual, sink)
    n_far = int(far.sum(1).max().item()) if T else 0
    ar = torch.arange(T, device=dev)
    far_pos = torch.where(far, ar[None], torch.full_like(ar, T)[None]).sort(1).values[:, :n_far]  # (B, F), T = none
    gi = far_pos.clamp(max=T - 1)[:, None, :, None].expand(B, Hkv, n_far, D)
    kf, vf = k.gather(2, gi), v.gather(2, gi)
    neg = torch.finfo(q.dtype).min
    # rows that may see no key (padding; with the model's mask, any row it leaves empty) output zeros
    maybe_empty = model_mask is not None or not bool(real.all())
    out = q.new_empty(B, Hq, T, D)
    for s in range(0, T, Bq):
        e = min(T, s + Bq)
        lo = max(0, s - W + 1)
        qp = ar[s:e, None]
        if model_mask is None:  # causal: the window ends at the block's last query; padding from `real`
            hi = e
            near = ar[None, lo:hi]
            ok_near = ((near <= qp) & (qp - near < W))[None] & real[:, None, lo:hi]  # (B, q, Kn)
            ok_far = far_pos[:, None, :] <= qp[None] - W  # (B, q, F); padding slots (T) never pass
        else:
            rows = model_mask[:, 0, s:e].expand(B, e - s, T)  # (B, q, T) bool, a view
            # A bidirectional block (Gemma 3 image, PaliGemma prefix) lets a row see keys after
            # itself, all inside its window (i - j < 0 < W): extend the near slice to the furthest
            # key any row of this block may see, else those keys would silently be dropped.
            later = model_mask[:, 0, s:e, e:].any(1).any(0).nonzero()
            hi = e + int(later[-1]) + 1 if len(later) else e
            near = ar[None, lo:hi]
            ok_near = (qp - near < W)[None] & rows[:, :, lo:hi]  # (B, q, Kn): the model decides causality
            # Far keys pass the pattern at any distance but must still pass the model's mask (its
            # padding, and whatever else it removes): gather the mask's columns at the far positions.
            ok_far = (far_pos[:, None, :] <= qp[None] - W) & rows.gather(
                2, far_pos.clamp(max=T - 1)[:, None, :].expand(B, e - s, n_far))
        ok = torch.cat([ok_far, ok_near], 2)[:, None]  # (B, 1, q, F + Kn)
        kb = torch.cat([kf, k[:, :, lo:hi]], 2)
        vb = torch.cat([vf, v[:, :, lo:hi]], 2)
        if maybe_empty:  # empty query rows: give them one key and zero them afterwards
            has_key = ok.any(-1, keepdim=True)
            ok = ok | ~has_key
        mask = torch.zeros(ok.shape, dtype=q.dtype, device=dev).masked_fill_(~ok, neg)
        o = F.scaled_dot_product_attention(q[:, :, s:e], kb, vb, attn_mask=mask, scale=scaling,
                                           enable_gqa=Hq != Hkv)
        out[:, :, s:e] = torch.where(has_key, o, torch.zeros((), dtype=o.dtype, device=dev)) if maybe_empty else o
    return out
