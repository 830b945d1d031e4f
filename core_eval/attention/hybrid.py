"""Hybrid sparse attention mechanics: full heads keep the model's attention, the rest a sparse pattern.

Semantics (DESIGN §4, §8), for a sparse head: query ``i`` sees key ``j`` iff the model's own mask
allows it (what the model passes to the attention function: causal, padding, and e.g. Gemma 3's
bidirectional image blocks or PaliGemma's bidirectional prefix) AND (``j`` is one of the row's
first ``n_sink`` real tokens, or ``j`` is not visual [``text_only`` only], or ``i - j < window``).
The pattern only ever removes keys; ``i - j < window`` holds for every future key ``j > i``, so a
bidirectional block stays visible within the window. ``attention_mask=None`` means plain causal
(:func:`core_eval.attention.reference.allowed_keys`).

Real savings rather than masking:

* a load-time permutation of the q/k/v/o projections puts each layer's full KV heads first
  (:func:`permute_layer`; exact), so the two groups are contiguous slices;
* prefill: the full group runs one SDPA over all keys; the sparse group runs block by block over
  the keys it may see, gathered (sinks + text tokens + the window): ``O(T * (W + sinks + text))``
  instead of ``O(T^2)`` for causal masks (:func:`sparse_prefill`);
* decode: :class:`HybridLayer` is a cache layer that stores all positions only for the full
  heads and, for the sparse heads, only what a future query may still see.

:func:`reference_hybrid` is the oracle: one dense attention over all keys with an explicit
per-head boolean mask (the model's mask AND the pattern).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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

    def allowed(self, q_pos, k_pos, k_far, k_real, model_mask=None):
        """``(B, 1, q, K)`` bool: what the pattern leaves of the model's mask.

        q_pos ``(B|1, q)``, key positions/flags ``(B, K)`` (pos -1 = empty slot); ``model_mask``
        ``(B|1, 1, q, K)`` bool over the same keys, or ``None`` for plain causal (``kp <= qp``).
        The pattern adds no causality of its own: ``qp - kp < window`` holds for future keys.
        """
        qp, kp = q_pos[:, None, :, None], k_pos[:, None, None, :]
        base = (kp <= qp) if model_mask is None else model_mask
        ok = base & (kp >= 0) & k_real[:, None, None, :]
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
    may still see, in a preallocated per-row store (``sp_*``; slots ``[0, n)`` used, compacted
    when full)."""

    def __init__(self, n_full: int, pattern: Pattern, **kwargs):
        super().__init__(**kwargs)
        self.n_full, self.pattern = n_full, pattern
        self.total = 0
        self.n = 0
        self.sp_k = self.sp_v = self.sp_pos = self.sp_far = self.n_real = None
        self.prefill_chunk = None

    def update(self, key_states, value_states, *args, **kwargs):
        f = self.n_full
        keys, values = super().update(key_states[:, :f], value_states[:, :f])
        k, v = key_states[:, f:], value_states[:, f:]
        q = k.shape[2]
        if self.sp_k is None or q > 1:  # prefill (or a chunk): folded in by commit_chunk
            self.prefill_chunk = (k, v, self.total)
        else:  # decode: write the new key in place
            if self.n == self.sp_k.shape[2]:
                self._compact(extra=self.pattern.window)
            self.sp_k[:, :, self.n] = k[:, :, 0]
            self.sp_v[:, :, self.n] = v[:, :, 0]
            self.sp_pos[:, self.n] = self.total
            self.n += 1
        self.total += q
        return keys, values

    def get_seq_length(self) -> int:
        return self.total

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.total + query_length, 0

    def set_new_flags(self, real: torch.Tensor, visual: torch.Tensor) -> None:
        """Flags ``(B,)`` of the token just written by a decode :meth:`update`."""
        sink = real & (self.n_real < self.pattern.n_sink)
        far = sink | (~visual if self.pattern.keeps_text else torch.zeros_like(sink))
        self.sp_far[:, self.n - 1] = far & real
        self.sp_pos[:, self.n - 1] = torch.where(real, self.sp_pos[:, self.n - 1], -1)
        self.n_real += real.long()

    def commit_chunk(self, real: torch.Tensor, far: torch.Tensor) -> None:
        """Fold the last chunk's sparse keys into the store (``real``/``far``: ``(B, q)`` flags of
        the chunk's positions)."""
        k, v, start = self.prefill_chunk
        self.prefill_chunk = None
        B, q = k.shape[0], k.shape[2]
        pos = torch.arange(start, start + q, device=k.device)[None].expand(B, q)
        pos = torch.where(real, pos, torch.full_like(pos, -1))
        if self.sp_k is None:
            self.sp_k, self.sp_v, self.sp_pos, self.sp_far = k, v, pos, far & real
            self.n = q
            self.n_real = real.long().sum(1)
        else:
            used = slice(0, self.n)
            self.sp_k = torch.cat([self.sp_k[:, :, used], k], 2)
            self.sp_v = torch.cat([self.sp_v[:, :, used], v], 2)
            self.sp_pos = torch.cat([self.sp_pos[:, used], pos], 1)
            self.sp_far = torch.cat([self.sp_far[:, used], far & real], 1)
            self.n += q
            self.n_real += real.long().sum(1)
        self._compact(extra=self.pattern.window)

    def _compact(self, extra: int) -> None:
        """Keep what a query at position >= total can see, in order, with ``extra`` free slots."""
        pos, far = self.sp_pos[:, : self.n], self.sp_far[:, : self.n]
        keep = (pos >= 0) & (far | (pos > self.total - self.pattern.window))
        n = int(keep.sum(1).max().item())
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :n]
        B, Hs, _, D = self.sp_k.shape
        gi = order[:, None, :, None].expand(B, Hs, n, D)
        k_new = self.sp_k.new_empty(B, Hs, n + extra, D)
        v_new = self.sp_v.new_empty(B, Hs, n + extra, D)
        k_new[:, :, :n] = self.sp_k[:, :, : self.n].gather(2, gi)
        v_new[:, :, :n] = self.sp_v[:, :, : self.n].gather(2, gi)
        kept = keep.gather(1, order)
        pos_new = torch.full((B, n + extra), -1, dtype=torch.long, device=pos.device)
        far_new = torch.zeros(B, n + extra, dtype=torch.bool, device=pos.device)
        pos_new[:, :n] = torch.where(kept, pos.gather(1, order), -1)
        far_new[:, :n] = far.gather(1, order) & kept
        self.sp_k, self.sp_v, self.sp_pos, self.sp_far, self.n = k_new, v_new, pos_new, far_new, n

    def sparse_bytes(self) -> int:
        """Bytes of the sparse heads' keys and values actually held (used slots)."""
        if self.sp_k is None:
            return 0
        return 2 * self.sp_k[:, :, : self.n].numel() * self.sp_k.element_size()

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
        """Sparse query heads q ``(B, Hs, ql, D)`` -> ``(B, Hs, ql, D)``; every case starts from the
        model's mask ``attention_mask`` (bool/float 4-D over the ``kv`` keys, or ``None`` = causal)."""
        B, Hs, ql, D = q.shape
        p = self.pattern
        if cache_layer is not None and cache_layer.prefill_chunk is None:  # decode step, hybrid cache
            real = _last_real(attention_mask, B, q.device)
            visual = self.tracker.key_flags(kv)[:, -1].to(q.device)
            cache_layer.set_new_flags(real, visual)
            n = cache_layer.n
            pos, far = cache_layer.sp_pos[:, :n], cache_layer.sp_far[:, :n]
            ok = (pos >= 0) & (far | (kv - 1 - pos < p.window))
            if attention_mask is not None:  # the store is compacted: read the model's row at each slot's position
                row = allowed_keys(attention_mask, 1, kv, q.device)[:, 0, -1].expand(B, kv)
                ok &= row.gather(1, pos.clamp(min=0))
            return F.scaled_dot_product_attention(q, cache_layer.sp_k[:, :, :n], cache_layer.sp_v[:, :, :n],
                                                  attn_mask=ok[:, None, None, :], scale=scaling,
                                                  enable_gqa=self.groups > 1)
        visual = self.tracker.key_flags(kv)
        real, vis, sink = row_flags(attention_mask, B, kv, q.device, visual, p.n_sink)
        # bool view of the model's (B|1, 1, ql, kv) mask; None stays None (causal, never materialized)
        model_mask = None if attention_mask is None else allowed_keys(attention_mask, ql, kv, q.device)
        if cache_layer is not None:  # prefill into an empty hybrid cache
            k_new, v_new, start = cache_layer.prefill_chunk
            if start != 0 or ql != kv:
                raise NotImplementedError("hybrid sparse attention: chunked prefill into a filled cache")
            out = sparse_prefill(q, k_new, v_new, real, vis, sink, p, scaling, self.block, model_mask=model_mask)
            cache_layer.commit_chunk(real, p.far(real, vis, sink))
            return out
        # no hybrid cache: every key is here (a plain forward, or decode with a dense cache)
        k, v = key[:, self.n_full_kv :], value[:, self.n_full_kv :]
        if ql == kv:
            return sparse_prefill(q, k, v, real, vis, sink, p, scaling, self.block, model_mask=model_mask)
        q_pos = torch.arange(kv - ql, kv, device=q.device)[None]
        k_pos = torch.arange(kv, device=q.device)[None].expand(B, kv)
        ok = p.allowed(q_pos, k_pos, p.far(real, vis, sink), real, model_mask=model_mask)
        g = self.groups
        return masked_sdpa(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), ok, scaling)


def _last_real(attention_mask, batch, device) -> torch.Tensor:
    """``(B,)``: is the newest token a real (non-padding) one."""
    if attention_mask is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    m = attention_mask if attention_mask.dtype == torch.bool else attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return m[:, 0, -1, -1].expand(batch)
