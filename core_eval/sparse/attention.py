"""One hybrid layer's attention. Prefill: ``flex`` (all heads, one FlexAttention call) or ``blocks``
(full group through SDPA, sparse group block by block); decode: full group through SDPA, sparse group
on the per-head cache's kept keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from core_eval.attention.reference import allowed_keys, masked_sdpa
from core_eval.sparse.blocks import sparse_prefill
from core_eval.sparse.cache import HybridLayer
from core_eval.sparse.flex import FlexPlan, flex_decode, flex_prefill, flex_support
from core_eval.sparse.pattern import Pattern, row_flags

BACKENDS = ("auto", "flex", "blocks")
#: decode paths of the sparse group on the hybrid cache's store: SDPA on the used slots (the default on
#: every device: on the CPU it measured faster, see the README), FlexAttention on the whole store
DECODE_PATHS = ("sdpa", "flex")
#: why backend=auto keeps the blocks path on the CPU (measured here, torch 2.14, one thread)
CPU_AUTO_REASON = ("on the CPU the blocks path is faster than the compiled FlexAttention kernel (one layer, 8k tokens, "
                   "12 heads, window 256: 0.22 s vs 0.56 s; dense 0.86 s); backend=flex forces it")


class PlanCache:
    """The flex block structure of the current forward, shared by a variant's hybrid layers: rebuilt
    when the model's mask object, the tracker's flags object or the length changes (a new forward)."""

    def __init__(self):
        self._key, self._plan = None, None

    def get(self, attention_mask, flags, T: int, build):
        key = self._key
        if key is None or key[0] is not attention_mask or key[1] is not flags or key[2] != T:
            self._key, self._plan = (attention_mask, flags, T), build()  # references keep ids from being reused
        return self._plan


class HybridAttention:
    """Replaces one layer's SDPA call (``set_compute``). ``n_full_kv`` full KV heads come first.

    Prefill goes through ``backend`` (``auto``: ``flex`` on CUDA when :func:`flex_support` allows it,
    else ``blocks``; on the CPU ``blocks`` measured faster than the compiled FlexAttention kernel, see
    :data:`CPU_AUTO_REASON`); the reason for the last choice is in :attr:`last_reason`. Decode steps
    always use the per-head cache (one SDPA call on the kept keys; ``decode_path="flex"``: FlexAttention).
    """

    def __init__(self, layer: int, n_full_kv: int, groups: int, pattern: Pattern, tracker, block: int = 0,
                 backend: str = "blocks", flex_compile: bool = True, plans: PlanCache | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"sparse backend {backend!r}; use one of {', '.join(BACKENDS)}")
        self.layer, self.n_full_kv, self.groups = layer, n_full_kv, groups
        self.pattern, self.tracker, self.block = pattern, tracker, block
        self.backend, self.flex_compile = backend, flex_compile
        self.plans = plans or PlanCache()
        self.cache_layer: HybridLayer | None = None  # set by the cache's layer while generating
        self.decode_path = "sdpa"  # one of DECODE_PATHS (benchmarks/sparse_attention.py --decode-paths)
        self.last_backend: str | None = None
        self.last_reason: str | None = None

    def choose(self, query, attention_mask) -> str | None:
        """``None`` to run this prefill on flex, else why the blocks path runs it (a sentence)."""
        if self.backend == "blocks":
            return "backend=blocks was asked for"
        reason = flex_support(query.device, query.dtype, attention_mask, compile=self.flex_compile,
                              requires_grad=query.requires_grad and torch.is_grad_enabled())
        if reason is not None and self.backend == "flex":
            raise RuntimeError(f"sparse backend=flex cannot run this prefill: {reason}. Use backend=auto "
                               "(falls back to the blocks path) or backend=blocks.")
        if reason is None and self.backend == "auto" and query.device.type == "cpu":
            reason = CPU_AUTO_REASON
        return reason

    def __call__(self, module, query, key, value, attention_mask, scaling=None, **kwargs):
        B, H, q, D = query.shape
        fq = self.n_full_kv * self.groups
        kv = key.shape[2]
        cache_layer = self.cache_layer if key.shape[1] == self.n_full_kv and self.n_full_kv < H // self.groups else None
        if q == kv and q > 1 and fq < H:  # a prefill over the whole prompt
            self.last_reason = self.choose(query, attention_mask)
            self.last_backend = "flex" if self.last_reason is None else "blocks"
            if self.last_reason is None:
                return self._flex(query, key, value, attention_mask, scaling, cache_layer)
        parts = []
        if fq:
            full, _ = sdpa_attention_forward(module, query[:, :fq], key[:, : self.n_full_kv],
                                             value[:, : self.n_full_kv], attention_mask, scaling=scaling, **kwargs)
            parts.append(full)
        if fq < H:
            parts.append(self._sparse(query[:, fq:], key, value, attention_mask, scaling, cache_layer, kv).transpose(1, 2))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)

    def _flex(self, query, key, value, attention_mask, scaling, cache_layer):
        """All heads in one FlexAttention call (full heads: the model's mask; sparse: AND the pattern)."""
        B, H, T, D = query.shape
        p, dev = self.pattern, query.device
        real, vis, sink = row_flags(attention_mask, B, T, dev, self.tracker.key_flags(T), p.n_sink)
        far = p.far(real, vis, sink)
        plan = self.plans.get(attention_mask, self.tracker.flags, T, lambda: FlexPlan(
            None if attention_mask is None else allowed_keys(attention_mask, T, T, dev), far, p, T))
        if cache_layer is not None:  # q == kv: a prefill into an empty hybrid cache (later chunks take _sparse)
            k_new, v_new, _ = cache_layer.prefill_chunk
            key, value = torch.cat([key, k_new], 1), torch.cat([value, v_new], 1)
            cache_layer.commit_chunk(real, far)
        full_heads = torch.arange(H, device=dev) < self.n_full_kv * self.groups
        return flex_prefill(query, key, value, plan, full_heads, scaling, self.flex_compile).transpose(1, 2)

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
            if self.decode_path == "flex":  # every slot of the store (its capacity: no recompile per step)
                ok = self._store_allowed(cache_layer.sp_pos, cache_layer.sp_far, attention_mask, 1, kv)
                return flex_decode(q, cache_layer.sp_k, cache_layer.sp_v, ok[:, 0, 0], scaling, self.flex_compile)
            ok = self._store_allowed(cache_layer.sp_pos[:, :n], cache_layer.sp_far[:, :n], attention_mask, 1, kv)
            return F.scaled_dot_product_attention(q, cache_layer.sp_k[:, :, :n], cache_layer.sp_v[:, :, :n],
                                                  attn_mask=ok, scale=scaling, enable_gqa=self.groups > 1)
        visual = self.tracker.key_flags(kv)
        real, vis, sink = row_flags(attention_mask, B, kv, q.device, visual, p.n_sink)
        # bool view of the model's (B|1, 1, ql, kv) mask; None stays None (causal, never materialized)
        model_mask = None if attention_mask is None else allowed_keys(attention_mask, ql, kv, q.device)
        if cache_layer is not None and cache_layer.prefill_chunk[2] == 0 and ql == kv:  # prefill, empty cache
            k_new, v_new, _ = cache_layer.prefill_chunk
            out = sparse_prefill(q, k_new, v_new, real, vis, sink, p, scaling, self.block, model_mask=model_mask)
            cache_layer.commit_chunk(real, p.far(real, vis, sink))
            return out
        if cache_layer is not None:  # a prefill chunk into a filled cache: the store's kept keys + the chunk's
            k_new, v_new, start = cache_layer.prefill_chunk
            n, far = cache_layer.n, p.far(real, vis, sink)[:, start:]
            pos = torch.arange(start, kv, device=q.device)[None].expand(B, ql)
            pos = torch.cat([cache_layer.sp_pos[:, :n], torch.where(real[:, start:], pos, -1)], 1)
            ok = self._store_allowed(pos, torch.cat([cache_layer.sp_far[:, :n], far], 1), attention_mask, ql, kv)
            g = self.groups
            k = torch.cat([cache_layer.sp_k[:, :, :n], k_new], 2).repeat_interleave(g, 1)
            v = torch.cat([cache_layer.sp_v[:, :, :n], v_new], 2).repeat_interleave(g, 1)
            cache_layer.commit_chunk(real[:, start:], far)
            return masked_sdpa(q, k, v, ok, scaling)
        # no hybrid cache: every key is here (a plain forward, or decode with a dense cache)
        k, v = key[:, self.n_full_kv :], value[:, self.n_full_kv :]
        if ql == kv:
            return sparse_prefill(q, k, v, real, vis, sink, p, scaling, self.block, model_mask=model_mask)
        q_pos = torch.arange(kv - ql, kv, device=q.device)[None]
        k_pos = torch.arange(kv, device=q.device)[None].expand(B, kv)
        ok = p.allowed(q_pos, k_pos, p.far(real, vis, sink), real, model_mask=model_mask)
        g = self.groups
        return masked_sdpa(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), ok, scaling)

    def _store_allowed(self, pos, far, attention_mask, ql: int, kv: int) -> torch.Tensor:
        """``(B, 1, ql, S)``: what the last ``ql`` queries of ``kv`` keys may see of the stored keys at
        positions ``pos`` ``(B, S)`` (-1: empty slot), far flags ``far`` ``(B, S)``. The store is compacted,
        so the model's mask is read at each slot's position (its causality, padding and blocks)."""
        B, S = pos.shape
        rows = allowed_keys(attention_mask, ql, kv, pos.device).expand(B, 1, ql, kv)
        model = rows.gather(3, pos.clamp(min=0)[:, None, None, :].expand(B, 1, ql, S))
        q_pos = torch.arange(kv - ql, kv, device=pos.device)[None]
        return self.pattern.allowed(q_pos, pos, far, pos >= 0, model_mask=model)


def _last_real(attention_mask, batch, device) -> torch.Tensor:
    """``(B,)``: is the newest token a real (non-padding) one."""
    if attention_mask is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return allowed_keys(attention_mask, 1, attention_mask.shape[-1], device)[:, 0, -1, -1].expand(batch)
