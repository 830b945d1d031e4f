"""Retrieval Attention Mass captured next to the normal SDPA call (ram-v1, DESIGN §3).

:class:`RamCapture` attaches an observing patch to every LM attention layer. For the query rows
that matter (a few per sample) it recomputes the post-softmax attention row over all keys in
float32 — the same ``softmax(q k^T * scale + mask)`` eager attention computes — and keeps only the
mass on the target region and on all visual tokens. The layer's output is the untouched SDPA
output, so capture never changes what the model computes; the extra work is
``O(rows x keys)`` per head instead of ``O(T x keys)``, and no ``(B, H, T, T)`` tensor exists.

Positions: ``region`` / ``visual`` are ``(B, T0)`` flags over the absolute positions of the
prompt; later positions (answer or generated tokens) are neither. ``rows`` is ``(B, R)`` absolute
query positions (``-1`` = unused slot) for a prefill pass; during ``generate`` each decode step's
single row is captured when :attr:`capture_decode` is set.
"""

from __future__ import annotations

import torch

from core_eval.adapters import adapter_for
from core_eval.attention.tracker import recent_keys
from core_eval.attention import SequenceTracker, allowed_keys, attach_patch, detach_patches, ensure_registered


class RamCapture:
    """Accumulates, per sample and head, attention mass on the region and on visual tokens.

    Use as a context manager around the forward / ``generate`` calls; call :meth:`reset` before
    each batch and :meth:`result` after it.
    """

    def __init__(self, model):
        self.model = model
        self.adapter = adapter_for(model)
        s = self.adapter.shape
        self.L, self.H = s.num_layers, s.num_heads
        self.tracker = SequenceTracker(self.adapter.visual_mask)
        self._patches = []
        self._previous_backend = None

    # ------------------------------------------------------------------ set-up

    def __enter__(self):
        name = ensure_registered()
        if self.adapter.text_config._attn_implementation != name:
            self._previous_backend = self.adapter.text_config._attn_implementation
            self.adapter.set_lm_attention(name)
        self.tracker.install(self.model)
        for layer in range(self.L):
            patch = _LayerCapture(self, layer)
            attach_patch(self.adapter.attention(layer), patch)
            self._patches.append((self.adapter.attention(layer), patch))
        return self

    def __exit__(self, *exc):
        for module, patch in self._patches:
            detach_patches(module, [patch])
        self._patches.clear()
        self.tracker.remove()
        if self._previous_backend is not None:
            self.adapter.set_lm_attention(self._previous_backend)
            self._previous_backend = None

    def reset(self, region: torch.Tensor, rows: torch.Tensor | None, *, capture_decode: bool = False) -> None:
        """Start a batch. ``region`` ``(B, T0)`` bool over prompt positions; ``rows`` ``(B, R)``
        absolute prefill query positions (``-1`` = unused slot) or ``None``; ``capture_decode``
        records every decode step's row (``generate``)."""
        B = region.shape[0]
        self.region, self.rows, self.capture_decode = region.bool(), rows, capture_decode
        self.ram_sum = torch.zeros(B, self.L, self.H, dtype=torch.float64)
        self.vis_sum = torch.zeros(B, self.L, self.H, dtype=torch.float64)
        self.count = torch.zeros(B, dtype=torch.float64)
        self.steps_ram: list[torch.Tensor] = []  # per decode step: (B, L, H)
        self.steps_vis: list[torch.Tensor] = []

    def result(self, valid_steps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``ram`` and ``visual_mass`` ``(B, L, H)``: means over captured rows; ``rows`` ``(B,)``.

        ``valid_steps`` ``(B, S)`` bool selects which decode steps count per sample (e.g. not
        after the sample's EOS); default: all.
        """
        ram, vis, n = self.ram_sum.clone(), self.vis_sum.clone(), self.count.clone()
        if self.steps_ram:
            S = len(self.steps_ram)
            v = torch.ones(ram.shape[0], S, dtype=torch.bool) if valid_steps is None else valid_steps[:, :S].cpu()
            w = v.double()[:, :, None, None]
            ram += (torch.stack(self.steps_ram, 1) * w).sum(1)
            vis += (torch.stack(self.steps_vis, 1) * w).sum(1)
            n += v.sum(1).double()
        d = n.clamp(min=1)[:, None, None]
        return {"ram": (ram / d).float(), "visual_mass": (vis / d).float(), "rows": n.long()}

    # ------------------------------------------------------------------ per layer

    def observe(self, layer, query, key, attention_mask, scaling, softcap=None):
        B, H, q, D = query.shape
        kv = key.shape[2]
        if q > 1:  # prefill: the requested rows
            if self.rows is None:
                return
            rows = self.rows.to(query.device)
            valid = rows >= 0
            idx = rows.clamp(min=0)
        else:  # decode step: its single row
            if not self.capture_decode:
                return
            idx = torch.zeros(B, 1, dtype=torch.long, device=query.device)
            valid = torch.ones(B, 1, dtype=torch.bool, device=query.device)
        R = idx.shape[1]
        qr = query.gather(2, idx[:, None, :, None].expand(B, H, R, D)).float()  # (B, H, R, D)
        Hkv = key.shape[1]
        scores = torch.einsum("bkgrd,bksd->bkgrs", qr.view(B, Hkv, H // Hkv, R, D), key.float()).reshape(B, H, R, kv)
        scores = scores * (scaling if scaling is not None else D**-0.5)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        allowed = allowed_keys(attention_mask, q, kv, query.device).expand(B, 1, q, kv)
        if q > 1:
            allowed = allowed.gather(2, idx[:, None, :, None].expand(B, 1, R, kv))
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
        total = self.tracker.flags.shape[1]
        region = self.region[:, :total]
        region = torch.cat([region, region.new_zeros(B, total - region.shape[1])], 1)
        region = recent_keys(region, kv).to(query.device)
        visual = self.tracker.key_flags(kv).to(query.device)
        w = valid[:, None, :].to(probs.dtype)
        ram = ((probs * region[:, None, None, :]).sum(-1) * w).sum(-1).double().cpu()  # (B, H)
        vis = ((probs * visual[:, None, None, :]).sum(-1) * w).sum(-1).double().cpu()
        if q > 1:
            self.ram_sum[:, layer] += ram
            self.vis_sum[:, layer] += vis
            if layer == 0:
                self.count += valid.sum(-1).double().cpu()
        else:
            if layer == 0:
                self.steps_ram.append(torch.zeros(B, self.L, self.H, dtype=torch.float64))
                self.steps_vis.append(torch.zeros(B, self.L, self.H, dtype=torch.float64))
            self.steps_ram[-1][:, layer] = ram
            self.steps_vis[-1][:, layer] = vis


class _LayerCapture:
    def __init__(self, owner: RamCapture, layer: int):
        self.owner, self.layer = owner, layer

    def __call__(self, module, query, key, value, attention_mask, out, scaling):
        with torch.no_grad():
            self.owner.observe(self.layer, query, key, attention_mask, scaling,
                               getattr(module, "attn_logit_softcapping", None))
        return out
