"""Hybrid sparse attention mechanics: full heads keep full causal attention, the rest a sparse pattern.

Semantics (DESIGN §4), for a sparse head: query ``i`` sees key ``j`` iff ``j <= i`` and (``j`` is
not visual [``text_only`` only], or ``j`` is one of the row's first ``n_sink`` real tokens, or
``i - j < window``); padding keys are never seen.

Real savings rather than masking:

* a load-time permutation of the q/k/v/o projections puts each layer's full KV heads first
  (:func:`permute_layer`; exact), so the two groups are contiguous slices;
* prefill: the full group runs one SDPA over all keys; the sparse group runs block by block over
  the keys it may see, gathered (sinks + text tokens + the window): ``O(T * (W + sinks + text))``
  instead of ``O(T^2)`` (:func:`sparse_prefill`);
* decode: :class:`HybridLayer` is a cache layer that stores all positions only for the full
  heads and, for the sparse heads, only what a future query may still see.

:func:`reference_hybrid` is the oracle: one dense attention over all keys with an explicit
per-head boolean mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from core_eval.attention.reference import allowed_keys, masked_sdpa

PATTERNS = ("streaming", "text_only")


@dataclass(frozen=True)
class Pattern:
    """A sparse head's pattern: ``kind`` in :data:`PATTERNS`, ``n_sink`` sink tokens, ``window``."""

    kind: str
    n_sink: int = 4
    window: int = 256

    def __post_init__(self):
        if self.kind not in PATTERNS:
            raise ValueError(f"sparse pattern {self.kind!r}; use one of {', '.join(PATTERNS)}")
        if self.n_sink < 0 or self.window < 1:
            raise ValueError(f"sink={self.n_sink} must be >= 0 and window={self.window} >= 1")

    @property
    def keeps_text(self) -> bool:
        return self.kind == "text_only"

    def far(self, real, visual, sink):
        """Keys visible from any distance: sinks (and text tokens for ``text_only``)."""
        far = sink.clone()
        if self.keeps_text:
            far |= ~visual
        return far & real

    def allowed(self, q_pos, k_pos, k_far, k_real):
        """``(B, 1, q, K)`` bool: q_pos ``(B|1, q)``, key positions/flags ``(B, K)`` (pos -1 = empty)."""
        qp, kp = q_pos[:, None, :, None], k_pos[:, None, None, :]
        ok = (kp <= qp) & (kp >= 0) & k_real[:, None, None, :]
        return ok & ((qp - kp < self.window) | k_far[:, None, None, :])


def row_flags(attention_mask, batch: int, kv: int, device, visual: torch.Tensor, n_sink: int):
    """``real``, ``visual``, ``sink`` flags ``(B, kv)`` over absolute key positions ``0..kv-1``.

    ``real`` comes from the last query row of the model's mask (it sees every real key of a
    full-attention layer); sinks are each row's first ``n_sink`` real positions.
    """
    if attention_mask is None:
        real = torch.ones(batch, kv, dtype=torch.bool, device=device)
    else:
        m = attention_mask if attention_mask.dtype == torch.bool else attention_mask > torch.finfo(attention_mask.dtype).min / 2
        real = m[:, 0, -1, :kv].expand(batch, kv)
    rank = real.long().cumsum(1) - 1
    sink = real & (rank < n_sink)
    return real, visual.to(device)[:, :kv] & real, sink


def sparse_prefill(q, k, v, real, visual, sink, pattern: Pattern, scaling, block: int = 0):
    """Sparse heads over a whole prompt, block by block on gathered keys.

    q ``(B, Hq, T, D)``, k/v ``(B, Hkv, T, D)`` at positions ``0..T-1``; flags ``(B, T)``.
    Returns ``(B, Hq, T, D)``.
    """
    B, Hq, T, D = q.shape
    g = Hq // k.shape[1]
    W = pattern.window
    block = block or max(64, min(W, 512))
    far = pattern.far(real, visual, sink)
    n_far = far.sum(1)
    # sorted far positions per row, padded with T (never < lo)
    far_pos = torch.where(far, torch.arange(T, device=q.device)[None], torch.full_like(far, T, dtype=torch.long))
    far_pos = far_pos.sort(1).values[:, : int(n_far.max().item()) if T else 0]
    out = q.new_empty(B, Hq, T, D)
    for s in range(0, T, block):
        e = min(T, s + block)
        lo = max(0, s - W + 1)
        n = int((far_pos < lo).sum(1).max().item()) if far_pos.numel() else 0
        fp = far_pos[:, :n]
        near = torch.arange(lo, e, device=q.device).expand(B, e - lo)
        idx = torch.cat([fp.clamp(max=T - 1), near], 1)  # (B, K)
        k_pos = torch.cat([torch.where(fp < lo, fp, torch.full_like(fp, -1)), near], 1)
        gi = idx[:, None, :, None].expand(B, k.shape[1], idx.shape[1], D)
        kb, vb = k.gather(2, gi), v.gather(2, gi)
        if g > 1:
            kb, vb = kb.repeat_interleave(g, 1), vb.repeat_interleave(g, 1)
        q_pos = torch.arange(s, e, device=q.device)[None]
        ok = pattern.allowed(q_pos, k_pos, far.gather(1, idx), real.gather(1, idx))
        out[:, :, s:e] = masked_sdpa(q[:, :, s:e], kb, vb, ok, scaling)
    return out


def reference_hybrid(query, key, value, attention_mask, scaling, full_heads: torch.Tensor, pattern: Pattern, visual):
    """Oracle: dense attention over all keys with an explicit per-head boolean mask.

    ``full_heads`` ``(H,)`` bool marks full query heads; the others follow ``pattern``. Query
    rows are the last ``q`` positions of the ``kv`` keys (prefill, or decode with a full cache);
    ``visual`` ``(B, kv)``. Returns ``(B, q, H, D)``.
    """
    B, H, q, D = query.shape
    kv = key.shape[2]
    g = H // key.shape[1]
    k, v = key.repeat_interleave(g, 1), value.repeat_interleave(g, 1)
    model_mask = allowed_keys(attention_mask, q, kv, query.device).expand(B, 1, q, kv)
    real, vis, sink = row_flags(attention_mask, B, kv, query.device, visual, pattern.n_sink)
    q_pos = torch.arange(kv - q, kv, device=query.device)[None]
    k_pos = torch.arange(kv, device=query.device)[None].expand(B, kv)
    sparse = model_mask & pattern.allowed(q_pos, k_pos, pattern.far(real, vis, sink), real)
    full = full_heads.to(query.device)[None, :, None, None]
    per_head = torch.where(full, model_mask, sparse)  # (B, H, q, kv)
    return masked_sdpa(query, k, v, per_head, scaling).transpose(1, 2)


# ------------------------------------------------------------------------------ load-time permutation


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


# ------------------------------------------------------------------------------ decode-time cache


class HybridLayer(DynamicLayer):
    """Cache layer: all positions for the ``n_full`` full KV heads (the normal dense store, which
    is what :meth:`update` returns), and for the sparse KV heads only the positions a future query
    may still see (``sp_*``, per row, compacted every ``window`` steps)."""

    def __init__(self, n_full: int, pattern: Pattern, **kwargs):
        super().__init__(**kwargs)
        self.n_full, self.pattern = n_full, pattern
        self.total = 0
        self.sp_k = self.sp_v = self.sp_pos = self.sp_far = None
        self.new = None
        self._since_compact = 0

    def update(self, key_states, value_states, *args, **kwargs):
        f = self.n_full
        keys, values = super().update(key_states[:, :f], value_states[:, :f])
        self.new = (key_states[:, f:], value_states[:, f:], self.total)
        self.total += key_states.shape[2]
        return keys, values

    def get_seq_length(self) -> int:
        return self.total

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.total + query_length, 0

    def commit(self, real: torch.Tensor, far: torch.Tensor) -> None:
        """Fold the last update's sparse keys into the store. ``real``/``far``: ``(B, q)`` flags of
        the new positions."""
        k, v, start = self.new
        B, q = k.shape[0], k.shape[2]
        pos = torch.arange(start, start + q, device=k.device)[None].expand(B, q)
        pos = torch.where(real, pos, torch.full_like(pos, -1))
        if self.sp_k is None:
            self.sp_k, self.sp_v, self.sp_pos, self.sp_far = k, v, pos, far & real
        else:
            self.sp_k = torch.cat([self.sp_k, k], 2)
            self.sp_v = torch.cat([self.sp_v, v], 2)
            self.sp_pos = torch.cat([self.sp_pos, pos], 1)
            self.sp_far = torch.cat([self.sp_far, far & real], 1)
        self._since_compact += q
        self.new = None
        if q > 1 or self._since_compact >= self.pattern.window:
            self._compact()

    def _compact(self) -> None:
        """Drop positions no future query (position >= total) can see."""
        keep = (self.sp_pos >= 0) & (self.sp_far | (self.sp_pos > self.total - self.pattern.window))
        n = int(keep.sum(1).max().item())
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :n]  # kept first, in order
        gi = order[:, None, :, None].expand(-1, self.sp_k.shape[1], n, self.sp_k.shape[3])
        self.sp_k, self.sp_v = self.sp_k.gather(2, gi), self.sp_v.gather(2, gi)
        kept = keep.gather(1, order)
        self.sp_pos = torch.where(kept, self.sp_pos.gather(1, order), torch.full_like(order, -1))
        self.sp_far = self.sp_far.gather(1, order) & kept
        self._since_compact = 0

    def sparse_bytes(self) -> int:
        if self.sp_k is None:
            return 0
        return self.sp_k.numel() * self.sp_k.element_size() * 2

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("hybrid sparse attention does not support beam search (per-row sparse stores)")

    def batch_repeat_interleave(self, repeats):
        raise NotImplementedError("hybrid sparse attention does not support batch expansion (beam search, n>1)")


class HybridCache(DynamicCache):
    """A ``DynamicCache`` whose hybrid layers are :class:`HybridLayer` (``hybrid``: layer -> (n_full, pattern))."""

    def __init__(self, config, hybrid: dict[int, tuple[int, Pattern]]):
        super().__init__(config=config)
        for layer, (n_full, pattern) in hybrid.items():
            self.layers[layer] = HybridLayer(n_full, pattern)

    def kv_bytes(self) -> int:
        """Bytes held by keys and values, all layers."""
        total = 0
        for layer in self.layers:
            if layer.keys is not None:
                total += (layer.keys.numel() + layer.values.numel()) * layer.keys.element_size()
            if isinstance(layer, HybridLayer):
                total += layer.sparse_bytes()
        return total


# ------------------------------------------------------------------------------ the layer's attention


class HybridAttention:
    """Replaces one layer's SDPA call (``set_compute``). ``n_full_kv`` full KV heads come first."""

    def __init__(self, layer: int, n_full_kv: int, groups: int, pattern: Pattern, tracker, block: int = 0):
        self.layer, self.n_full_kv, self.groups = layer, n_full_kv, groups
        self.pattern, self.tracker, self.block = pattern, tracker, block
        self.cache_layer: HybridLayer | None = None  # set by the cache's layer while generating

    def __call__(self, module, query, key, value, attention_mask, scaling=None, **kwargs):
        B, H, q, D = query.shape
        fq = self.n_full_kv * self.groups
        kv = key.shape[2]
        cache_layer = self.cache_layer if key.shape[1] == self.n_full_kv and self.n_full_kv < H // self.groups else None
        parts = []
        if fq:
            full, _ = sdpa_attention_forward(module, query[:, :fq], key[:, : self.n_full_kv],
                                             value[:, : self.n_full_kv], attention_mask, scaling=scaling, **kwargs)
            parts.append(full)
        if fq < H:
            parts.append(self._sparse(query[:, fq:], key, value, attention_mask, scaling, cache_layer, kv).transpose(1, 2))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)

    def _sparse(self, q, key, value, attention_mask, scaling, cache_layer, kv):
        B, Hs, ql, D = q.shape
        p = self.pattern
        visual = self.tracker.key_flags(kv)
        real, vis, sink = row_flags(attention_mask, B, kv, q.device, visual, p.n_sink)
        if cache_layer is None:  # all keys present (no hybrid cache): prefill or plain decode
            k, v = key[:, self.n_full_kv :], value[:, self.n_full_kv :]
            if ql == kv:
                return sparse_prefill(q, k, v, real, vis, sink, p, scaling, self.block)
            q_pos = torch.arange(kv - ql, kv, device=q.device)[None]
            k_pos = torch.arange(kv, device=q.device)[None].expand(B, kv)
            ok = p.allowed(q_pos, k_pos, p.far(real, vis, sink), real)
            g = self.groups
            return masked_sdpa(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), ok, scaling)
        k_new, v_new, start = cache_layer.new
        new_real, new_far = real[:, start:], p.far(real, vis, sink)[:, start:]
        if start == 0 and ql == kv:  # prefill into an empty hybrid cache
            out = sparse_prefill(q, k_new, v_new, real, vis, sink, p, scaling, self.block)
        else:
            if cache_layer.sp_k is None:
                ks, vs, kp, kf = k_new, v_new, None, None
            else:
                ks, vs = torch.cat([cache_layer.sp_k, k_new], 2), torch.cat([cache_layer.sp_v, v_new], 2)
            pos_new = torch.arange(start, start + ql, device=q.device)[None].expand(B, ql)
            pos_new = torch.where(new_real, pos_new, torch.full_like(pos_new, -1))
            kp = pos_new if cache_layer.sp_pos is None else torch.cat([cache_layer.sp_pos, pos_new], 1)
            kf = new_far if cache_layer.sp_far is None else torch.cat([cache_layer.sp_far, new_far], 1)
            q_pos = torch.arange(start, start + ql, device=q.device)[None]
            ok = p.allowed(q_pos, kp, kf, kp >= 0)
            g = self.groups
            out = masked_sdpa(q, ks.repeat_interleave(g, 1), vs.repeat_interleave(g, 1), ok, scaling)
        cache_layer.commit(new_real, new_far)
        return out
