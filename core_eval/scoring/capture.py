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

Keeping rows (for plots): ``reset(..., keep={layer: [heads]})`` also keeps, for those heads, the
full post-softmax rows over all keys: :attr:`RamCapture.kept` ``{layer: (B, h, R, kv)}`` for the
prefill rows (heads in the order asked; unused row slots are zeros) and
:attr:`RamCapture.kept_steps` ``{layer: [(B, h, 1, kv_t), ...]}`` per decode step. Still no
``output_attentions`` and no change to the outputs.

Cost: everything stays on the model's device while the forward runs (no per-layer host sync);
per-head masses of all layers are stacked and copied to the CPU once, when they are read
(:meth:`RamCapture.result`, the accumulator properties). Key masks and the rows' device copy are
built once per forward pass, not once per layer, and only the needed rows of the attention mask
are read.
"""

from __future__ import annotations

import torch

from core_eval.adapters import adapter_for
from core_eval.attention import SequenceTracker, attach_patch, detach_patches, ensure_registered
from core_eval.attention.tracker import recent_keys


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
        self.keep: dict[int, list[int]] = {}
        self.rows = None
        self.capture_decode = False

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
        self._release()
        if self._previous_backend is not None:
            self.adapter.set_lm_attention(self._previous_backend)
            self._previous_backend = None

    def reset(self, region: torch.Tensor, rows: torch.Tensor | None, *, capture_decode: bool = False,
              keep: dict[int, list[int]] | None = None) -> None:
        """Start a batch. ``region`` ``(B, T0)`` bool over prompt positions; ``rows`` ``(B, R)``
        absolute prefill query positions (``-1`` = unused slot) or ``None``; ``capture_decode``
        records every decode step's row (``generate``); ``keep`` ``{layer: [heads]}`` also keeps
        those heads' full attention rows (:attr:`kept`, :attr:`kept_steps`)."""
        B = region.shape[0]
        self.region, self.rows, self.capture_decode = region.bool(), rows, capture_decode
        self.keep = _check_keep(keep, self.L, self.H)
        self._ram_sum = torch.zeros(B, self.L, self.H, dtype=torch.float64)
        self._vis_sum = torch.zeros(B, self.L, self.H, dtype=torch.float64)
        self._count = torch.zeros(B, dtype=torch.float64)
        self._steps_ram: list[torch.Tensor] = []  # per decode step: (B, L, H)
        self._steps_vis: list[torch.Tensor] = []
        self._pending: list[tuple[int | None, int, torch.Tensor]] = []  # (step or None, layer, (2, B, H) on device)
        self._kept: dict[int, torch.Tensor] = {}
        self._kept_steps: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.keep}
        self._forward_cache: dict = {}
        self._flags_ref = None

    # ------------------------------------------------------------------ results

    def _flush(self) -> None:
        """Move the masses computed on the device since the last flush to the CPU (one copy)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        dev = pending[0][2].device  # layers may sit on several devices (device_map)
        values = torch.stack([v.to(dev) for _, _, v in pending]).cpu().double()  # (N, 2, B, H)
        for (step, layer, _), v in zip(pending, values):
            if step is None:
                self._ram_sum[:, layer] += v[0]
                self._vis_sum[:, layer] += v[1]
            else:
                self._steps_ram[step][:, layer] = v[0]
                self._steps_vis[step][:, layer] = v[1]

    def _release(self) -> None:
        """Drop the per-forward cache (it holds the last attention mask and key flags)."""
        if hasattr(self, "_forward_cache"):
            self._forward_cache.clear()
            self._flags_ref = None

    @property
    def ram_sum(self) -> torch.Tensor:
        """``(B, L, H)`` float64: region mass summed over the captured prefill rows."""
        self._flush()
        return self._ram_sum

    @property
    def vis_sum(self) -> torch.Tensor:
        """``(B, L, H)`` float64: visual mass summed over the captured prefill rows."""
        self._flush()
        return self._vis_sum

    @property
    def count(self) -> torch.Tensor:
        """``(B,)`` float64: number of captured prefill rows per sample."""
        return self._count

    @property
    def steps_ram(self) -> list[torch.Tensor]:
        """Per decode step, ``(B, L, H)`` float64 region mass of that step's row."""
        self._flush()
        return self._steps_ram

    @property
    def steps_vis(self) -> list[torch.Tensor]:
        self._flush()
        return self._steps_vis

    @property
    def kept(self) -> dict[int, torch.Tensor]:
        """``{layer: (B, h, R, kv)}`` float32 CPU: the kept heads' attention rows of the last prefill."""
        self._kept = {layer: t.cpu() for layer, t in self._kept.items()}
        return self._kept

    @property
    def kept_steps(self) -> dict[int, list[torch.Tensor]]:
        """``{layer: [(B, h, 1, kv_t) per decode step]}`` float32 CPU."""
        self._kept_steps = {layer: [t.cpu() for t in ts] for layer, ts in self._kept_steps.items()}
        return self._kept_steps

    def result(self, valid_steps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``ram`` and ``visual_mass`` ``(B, L, H)``: means over captured rows; ``rows`` ``(B,)``.

        ``valid_steps`` ``(B, S)`` bool selects which decode steps count per sample (e.g. not
        after the sample's EOS); default: all.
        """
        self._flush()
        self._release()
        ram, vis, n = self._ram_sum.clone(), self._vis_sum.clone(), self._count.clone()
        if self._steps_ram:
            S = len(self._steps_ram)
            v = torch.ones(ram.shape[0], S, dtype=torch.bool) if valid_steps is None else valid_steps[:, :S].cpu()
            w = v.double()[:, :, None, None]
            ram += (torch.stack(self._steps_ram, 1) * w).sum(1)
            vis += (torch.stack(self._steps_vis, 1) * w).sum(1)
            n += v.sum(1).double()
        d = n.clamp(min=1)[:, None, None]
        return {"ram": (ram / d).float(), "visual_mass": (vis / d).float(), "rows": n.long()}

    # ------------------------------------------------------------------ per layer

    def _per_forward(self, kv: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, kv, 2)`` float32 [region, visual] key masks and the rows on ``device``; built
        once per forward pass (the tracker makes a new flags tensor on every model call)."""
        if self.tracker.flags is None:
            self.tracker.key_flags(kv)  # raises: positions unknown (inputs_embeds only)
        flags = self.tracker.flags
        if self._flags_ref is not flags:
            self._forward_cache.clear()
            self._flags_ref = flags
        hit = self._forward_cache.get((kv, device))
        if hit is None:
            B, total = flags.shape
            region = self.region[:, :total]
            region = torch.cat([region, region.new_zeros(B, total - region.shape[1])], 1)
            masks = torch.stack([recent_keys(region, kv), recent_keys(flags, kv)], -1)
            rows = None if self.rows is None else self.rows.to(device)
            hit = self._forward_cache[(kv, device)] = (masks.to(device=device, dtype=torch.float32), rows)
        return hit

    def _row_bias(self, attention_mask, idx, valid, q: int, kv: int):
        """Additive ``(B, 1, R, kv)`` float32 bias (0 / -inf) for the rows, or ``None`` (every key
        allowed), and the row weights ``(B, R)``: ``valid`` rows that see at least one key (a row
        with none gets weight 0 and no mask, so no NaN appears). Cached per forward and mask (the
        model passes the same mask object to all layers of a kind)."""
        key = ("bias", id(attention_mask), q, kv, idx.device)
        hit = self._forward_cache.get(key)
        if hit is not None and hit[0] is attention_mask:
            return hit[1], hit[2]
        allowed = _allowed_rows(attention_mask, idx, q, kv)
        if allowed is None:
            bias, w = None, valid.float()
        else:
            some = allowed.any(-1)
            allowed = allowed | ~some[..., None]
            bias = torch.zeros(allowed.shape, dtype=torch.float32, device=idx.device)
            bias = bias.masked_fill_(~allowed, float("-inf"))[:, None]
            w = (valid & some).float()
        self._forward_cache[key] = (attention_mask, bias, w)
        return bias, w

    def observe(self, layer, query, key, attention_mask, scaling, softcap=None):
        B, H, q, D = query.shape
        kv = key.shape[2]
        prefill = q > 1
        if prefill and self.rows is None or not prefill and not self.capture_decode:
            return
        masks, rows = self._per_forward(kv, query.device)
        if prefill:  # the requested rows
            valid = rows >= 0
            idx = rows.clamp(min=0)
            if layer == 0:
                self._count += (self.rows >= 0).sum(-1).double().cpu()
        else:  # decode step: its single row
            idx = torch.zeros(B, 1, dtype=torch.long, device=query.device)
            valid = torch.ones(B, 1, dtype=torch.bool, device=query.device)
        bias, w = self._row_bias(attention_mask, idx, valid, q, kv)
        R = idx.shape[1]
        Hkv = key.shape[1]
        scale = scaling if scaling is not None else D**-0.5
        qr = query.gather(2, idx[:, None, :, None].expand(B, H, R, D)).float()  # (B, H, R, D)
        if softcap is None:
            qr = qr * scale  # on the few rows, not on the (rows x keys) scores
        scores = torch.matmul(qr.view(B, Hkv, (H // Hkv) * R, D), key.float().transpose(-1, -2)).view(B, H, R, kv)
        if softcap is not None:
            scores = torch.tanh(scores * (scale / softcap)) * softcap
        if bias is not None:
            scores += bias
        probs = torch.softmax(scores, dim=-1)
        # (B, H, R, kv) @ (B, 1, kv, 2) -> (B, H, R, 2); weight the rows, sum them -> (2, B, H)
        mass = (torch.matmul(probs, masks[:, None]) * w[:, None, :, None]).sum(2).permute(2, 0, 1)
        if prefill:
            self._pending.append((None, layer, mass))
        else:
            if layer == 0:
                self._steps_ram.append(torch.zeros(B, self.L, self.H, dtype=torch.float64))
                self._steps_vis.append(torch.zeros(B, self.L, self.H, dtype=torch.float64))
            self._pending.append((len(self._steps_ram) - 1, layer, mass))
        heads = self.keep.get(layer)
        if heads:
            sel = probs[:, heads] * w[:, None, :, None]
            if prefill:
                self._kept[layer] = sel
            else:
                self._kept_steps[layer].append(sel)


def _check_keep(keep, L: int, H: int) -> dict[int, list[int]]:
    if not keep:
        return {}
    out = {}
    for layer, heads in keep.items():
        layer = int(layer)
        heads = [int(h) for h in heads]
        if not 0 <= layer < L or any(not 0 <= h < H for h in heads):
            raise ValueError(f"keep={{{layer}: {heads}}} is outside the model's {L} layers x {H} heads")
        if heads:
            out[layer] = heads
    return out


def _allowed_rows(attention_mask, idx: torch.Tensor, q: int, kv: int) -> torch.Tensor | None:
    """``(B, R, kv)`` bool: the keys query rows ``idx`` ``(B, R)`` (indices into the ``q`` rows of
    this call) may see, reading only those rows of the mask; ``None`` = every key.

    Same semantics as :func:`core_eval.attention.allowed_keys` (``None`` mask: one row sees all
    keys, several rows are causal with upper-left alignment).
    """
    B, R = idx.shape
    if attention_mask is None:
        if q == 1:
            return None
        return torch.arange(kv, device=idx.device)[None, None, :] <= idx[:, :, None]
    m = attention_mask[:, 0, :, :kv].expand(B, q, kv)
    m = m.gather(1, idx[:, :, None].expand(B, R, kv))
    if m.dtype != torch.bool:
        m = m > torch.finfo(m.dtype).min / 2
    return m


class _LayerCapture:
    def __init__(self, owner: RamCapture, layer: int):
        self.owner, self.layer = owner, layer

    def __call__(self, module, query, key, value, attention_mask, out, scaling):
        with torch.no_grad():
            self.owner.observe(self.layer, query, key, attention_mask, scaling,
                               getattr(module, "attn_logit_softcapping", None))
        return out
