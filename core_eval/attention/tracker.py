"""Per-row visual-token positions across prefill and decode.

A forward pre-hook on the top-level model sees ``input_ids`` on every call (prefill and each
``generate`` step). The tracker resets on a prefill (empty cache) and appends on later calls,
so at any time ``flags`` is ``(B, T_total)`` with ``True`` where the token is visual.
"""

from __future__ import annotations

import torch

from core_eval.attention.cache_kwarg import cache_in


class SequenceTracker:
    """Tracks which absolute positions hold visual tokens; install with :meth:`install`."""

    def __init__(self, visual_mask_fn):
        self._visual_mask_fn = visual_mask_fn  # (B, T) ids -> (B, T) bool
        self.flags: torch.Tensor | None = None
        self._handle = None

    def install(self, model: torch.nn.Module) -> "SequenceTracker":
        self._handle = model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _pre_hook(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            self.flags = None  # inputs_embeds only: positions unknown (patches that need them raise)
            return
        cache = cache_in(kwargs)
        prefill = cache is None or cache.get_seq_length() == 0
        new = self._visual_mask_fn(input_ids)
        if prefill or self.flags is None or self.flags.shape[0] != new.shape[0]:
            self.flags = new
        else:
            self.flags = torch.cat([self.flags, new], dim=1)

    def key_flags(self, kv_len: int) -> torch.Tensor:
        """``(B, kv)`` bool for the keys a layer sees now (see :func:`recent_keys`)."""
        if self.flags is None:
            raise RuntimeError(
                "core_eval needs input_ids to locate visual tokens, but the model was called with "
                "inputs_embeds only; pass input_ids (as processors and generate() do)."
            )
        return recent_keys(self.flags, kv_len)


def recent_keys(flags: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Flags ``(B, T_total)`` over all positions so far -> ``(B, kv_len)`` for a layer's keys.

    Full caches hold positions ``0..kv-1`` (a static cache may be longer than the sequence: the
    rest is padded with ``False``); sliding-window caches hold the last ``kv`` positions.
    """
    total = flags.shape[1]
    if kv_len >= total:
        return torch.cat([flags, flags.new_zeros(flags.shape[0], kv_len - total)], dim=1)
    return flags[:, total - kv_len :]
