"""Decode-time per-head KV cache: all positions for full heads, only what sparse heads can still see."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from core_eval.sparse.pattern import Pattern


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
        self.sp_far[:, self.n - 1] = self.pattern.far(real, visual, sink)  # the same elementwise rule as prefill
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
        # free slots are zeros, not uninitialised memory: decode_path="flex" reads the whole store, and a
        # masked slot holding NaN (torch.empty's memory; always NaN under deterministic algorithms) poisons
        # the output (probability 0 x NaN)
        k_new = self.sp_k.new_zeros(B, Hs, n + extra, D)
        v_new = self.sp_v.new_zeros(B, Hs, n + extra, D)
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

    @classmethod
    def attached(cls, config, attentions: dict) -> HybridCache:
        """A cache for the hybrid layers ``attentions`` (layer -> ``HybridAttention``), each pointed at its
        cache layer (what ``generate()`` gets)."""
        cache = cls(config, {l: (a.n_full_kv, a.pattern) for l, a in attentions.items()})
        for l, a in attentions.items():
            a.cache_layer = cache.layers[l]
        return cache

    def kv_bytes(self) -> int:
        """Bytes held by keys and values, all layers."""
        total = 0
        for layer in self.layers:
            if layer.keys is not None:
                total += (layer.keys.numel() + layer.values.numel()) * layer.keys.element_size()
            if isinstance(layer, HybridLayer):
                total += layer.sparse_bytes()
        return total


def chunked_prefill(model, input_ids, attention_mask, cache, chunk: int, last_only: bool = False) -> torch.Tensor:
    """Prefill ``input_ids`` ``(B, T)`` into ``cache`` in forwards of ``chunk`` tokens (each sees the cache
    and its own tokens; ``attention_mask`` ``(B, T)`` grows with them). Returns the logits ``(B, T, V)``,
    or ``(B, 1, V)`` of the last token with ``last_only``. Text only: a chunk carries no image inputs."""
    from core_eval.attention.cache_kwarg import cache_kwarg

    kw, T, outs = cache_kwarg(model), input_ids.shape[1], []
    for s in range(0, T, chunk):
        e = min(T, s + chunk)
        out = model(input_ids=input_ids[:, s:e], attention_mask=attention_mask[:, :e], **{kw: cache}, use_cache=True,
                    logits_to_keep=1 if last_only else 0)
        outs.append(out.logits)
    return outs[-1] if last_only else torch.cat(outs, 1)
