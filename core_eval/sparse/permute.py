"""Load-time permutation of a layer's q/k/v/o projections that puts the full KV heads first (exact)."""

from __future__ import annotations

import torch


def permute_layer(attn, full_kv: list[int], num_kv_heads: int, groups: int, head_dim: int, names) -> torch.Tensor:
    """Reorder one attention module's heads so ``full_kv`` KV heads (and their query heads) come first.

    ``names`` = (q, k, v, o) attribute names. Exact: the layer computes the same function.
    Returns the KV permutation (new -> old) for :func:`unpermute_layer`.
    """
    rest = [h for h in range(num_kv_heads) if h not in set(full_kv)]
    perm_kv = torch.tensor(list(full_kv) + rest, dtype=torch.long)
    _apply(attn, perm_kv, groups, head_dim, names)
    return perm_kv


def unpermute_layer(attn, perm_kv: torch.Tensor, groups: int, head_dim: int, names) -> None:
    _apply(attn, torch.argsort(perm_kv), groups, head_dim, names)


def _apply(attn, perm_kv, groups, head_dim, names):
    qn, kn, vn, on = names
    perm_q = (perm_kv[:, None] * groups + torch.arange(groups)[None]).flatten()

    def rows(linear, perm):
        w = linear.weight.data
        linear.weight.data = w.view(len(perm), head_dim, -1)[perm].reshape(w.shape).contiguous()
        if linear.bias is not None:
            linear.bias.data = linear.bias.data.view(len(perm), head_dim)[perm].reshape(-1).contiguous()

    with torch.no_grad():
        rows(getattr(attn, qn), perm_q)
        rows(getattr(attn, kn), perm_kv)
        rows(getattr(attn, vn), perm_kv)
        o = getattr(attn, on)
        w = o.weight.data
        o.weight.data = w.view(w.shape[0], len(perm_q), head_dim)[:, perm_q].reshape(w.shape).contiguous()
