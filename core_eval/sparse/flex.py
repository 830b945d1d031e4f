"""The ``flex`` prefill backend: one FlexAttention call per hybrid layer, all heads, a per-head block mask.

Full heads get the model's own mask; sparse heads get the model's mask AND the pattern (sinks, text
tokens for ``text_only``, or ``i - j < window``). The model's mask is what the model passes to the
attention function (a bool ``(B|1, 1, T, T)`` tensor from ``sdpa_mask``: padding, Gemma 3's
bidirectional image blocks, PaliGemma's prefix) or ``None`` (plain causal); the mask_mod reads that
tensor, so nothing the model allows or forbids is re-derived here.

Why all heads in one call rather than only the sparse group: the number of sparse heads differs from
layer to layer, and a compiled kernel is specialised on the head count, so a sparse-group call would
compile once per distinct count; with all heads the layer shape is the same everywhere and the
model compiles once per length bucket (and batch size).

Costs (CPU, torch 2.14, measured here): the first call of a length bucket compiles the kernel,
about 10-30 s (less when inductor's on-disk cache already holds it); a later bucket about 4-9 s. Each
forward pads the model's mask to the bucket and summarises it per block once (every layer reuses it;
one pass, 9 ms at 8k tokens on the CPU when no padding copy is needed, +24 ms for the copy); the block
lists themselves come from :data:`STRUCTURES`, an LRU keyed on that summary (a hit is exactly a build).
Lengths are padded up to a power of two (>= 128): padded keys are masked out and padded query rows
have no key blocks, so the padding costs memory copies, not attention work. The batch is padded
up to a power of two the same way (the last, smaller batch of an evaluation reuses the kernel). A mask
kind (``None`` vs a tensor) compiles once more; past torch's recompile limit
(``torch._dynamo.config.recompile_limit``, 8 by default) torch runs further shapes eagerly: exact, slow.
On the CPU the compiled kernel is exact but slower than the blocks path (one layer at 8k tokens,
12 heads, window 256: 0.56 s vs 0.22 s; dense SDPA 0.86 s), so ``backend=auto`` uses flex on CUDA
only; GPU speed is not measured yet (``benchmarks/sparse_attention.py --device cuda``).
"""

from __future__ import annotations

import importlib.util
import shutil
import time
import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from core_eval.sparse.pattern import Pattern

BLOCK = 128  # FlexAttention's default sparse block size (queries and keys)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: seconds of the first call per compiled shape ``(device, dtype, B_bucket, H, Hkv, T_bucket, D, compiled)``
COMPILE_SECONDS: dict[tuple, float] = {}

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - exercised only on old torch
    BlockMask = flex_attention = None

_compiled = None


def bucket(T: int, least: int = BLOCK) -> int:
    """The padded size ``T`` runs at: the next power of two, at least ``least`` (lengths: :data:`BLOCK`;
    batches: 1, so the last, smaller batch of an evaluation reuses the kernel of the others)."""
    return max(least, 1 << (max(T, 1) - 1).bit_length())


def flex_support(device, dtype, attention_mask, *, compile: bool = True, requires_grad: bool = False) -> str | None:
    """``None`` when the flex backend can run this prefill, else one sentence saying why it cannot.

    ``attention_mask`` is what the model passes to the attention function (bool, additive float, or
    ``None``). Used by ``backend=auto`` to choose and by ``backend=flex`` to refuse clearly.
    """
    device = torch.device(device)
    if flex_attention is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs torch >= 2.5)"
    if device.type not in ("cpu", "cuda"):
        return f"FlexAttention runs on cpu and cuda here, not on {device.type}"
    if dtype not in DTYPES:
        return f"dtype {dtype} is not one of float32, bfloat16, float16"
    if requires_grad and device.type == "cpu":
        return "FlexAttention has no backward on the CPU and the inputs require grad"
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        floor = torch.finfo(attention_mask.dtype).min / 2
        if bool(((attention_mask != 0) & (attention_mask > floor)).any()):
            return "the model's attention mask is an additive float mask with biases (not only 0 / -inf): not a block mask"
    if compile:
        if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            return "torch.compile on the CPU needs a C++ compiler and none is on PATH (or use flex_compile=false: eager, slow)"
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs triton, which is not installed"
    return None


def _kernel(compile: bool):
    global _compiled
    if not compile:
        return flex_attention
    if _compiled is None:
        # dynamic=False: one specialised kernel per (bucket, batch, heads, head_dim, dtype); buckets keep that few
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


class StructureCache:
    """A small LRU of block structures (the ordered block lists of both head kinds), shared across forwards.

    The key is the bucket ``(device, Tp, Bp)``, the pattern, and the block-level summary of the current
    forward (which blocks of the model's mask hold some / only allowed pairs; which key blocks hold some /
    only far keys). The structure is a function of that key alone, so a hit is exactly what a build
    would give: a new padding mask that moves a block boundary misses and builds; one that does not
    reuses the lists, and the mask_mod still reads the current mask. ``builds`` / ``hits`` count.
    """

    def __init__(self, size: int = 8):
        self.size, self.builds, self.hits = size, 0, 0
        self._entries: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key, build):
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        value = self._entries[key] = build()
        self.builds += 1
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)  # least recently used
        return value

    def clear(self) -> None:
        self._entries.clear()
        self.builds = self.hits = 0


#: the process-wide structure cache of the flex backend (8 entries: a few length x batch buckets)
STRUCTURES = StructureCache()


class FlexPlan:
    """The block structure of one forward, shared by every hybrid layer of it.

    Built from the model's mask and the pattern's far-key flags; ``for_heads`` turns it into a
    :class:`BlockMask` for one layer's per-head full/sparse split. ``mask`` ``(B|1, 1, T, T)`` bool
    or ``None`` (causal); ``far`` ``(B, T)`` bool (sinks, text for ``text_only``; real keys only).
    Every forward pads the mask and flags to the buckets and summarises them per block (what
    correctness needs: a block is skipped or "full" only as the current mask says); the ordered block
    lists come from ``structures`` (:class:`StructureCache`) keyed on that summary.
    """

    def __init__(self, mask: torch.Tensor | None, far: torch.Tensor, pattern: Pattern, T: int,
                 structures: StructureCache | None = None):
        B, dev = far.shape[0], far.device
        self.Tp, self.pattern = bucket(T), pattern
        Bp = self.Bp = bucket(B, 1)  # padded batch rows get no blocks: no work
        self.n = torch.tensor(T, device=dev)  # a tensor, so a new length in the same bucket does not recompile
        nb = self.Tp // BLOCK
        # The mask_mod reads the model's mask and the far flags padded to the bucket (padding: False), so
        # a kernel compiled for the bucket serves every length and batch size in it (tensors of another
        # shape recompile).
        self.mask = None
        if mask is None:  # causal; padded batch rows: nothing
            m_any, m_all = _causal_blocks(T, B, Bp, nb, dev)
        else:
            pad = (0, self.Tp - T, 0, self.Tp - T, 0, 0, 0, Bp - B)
            exact = not any(pad) and mask.shape[0] == B and mask.is_contiguous()
            self.mask = mask if exact else F.pad(mask.expand(B, 1, T, T), pad)  # (Bp, 1, Tp, Tp)
            m_any, m_all = _block_any_all(self.mask.view(Bp, nb, BLOCK, self.Tp))  # (Bp, nb, nb)
        self.far = F.pad(far, (0, self.Tp - T, 0, Bp - B))  # (Bp, Tp)
        f_any, f_all = _block_any_all(self.far.view(Bp, 1, 1, self.Tp))  # (Bp, 1, nb)
        summary = (m_any, m_all, f_any[:, 0], f_all[:, 0])
        key = (str(dev), self.Tp, Bp, pattern, *(_bits(t) for t in summary))
        structures = STRUCTURES if structures is None else structures
        self._ordered = structures.get(key, lambda: _structure(*summary, pattern.window))

    def for_heads(self, full_heads: torch.Tensor) -> BlockMask:
        """BlockMask ``(Bp, H, Tp, Tp)`` for query heads ``full_heads`` ``(H,)`` bool (True = full)."""
        kind = (~full_heads).long().to(self.far.device)  # 0 = full, 1 = sparse
        (pn, pi), (fn, fi) = [(num.index_select(1, kind), idx.index_select(1, kind)) for num, idx in self._ordered]
        mask, far, n, W = self.mask, self.far, self.n, self.pattern.window
        full_h = full_heads.to(self.far.device)

        def mask_mod(b, h, q, k):
            base = (k <= q) & (k < n) if mask is None else mask[b, 0, q, k]  # padded keys: k >= n / False
            return base & (full_h[h] | (q - k < W) | far[b, k])

        return BlockMask.from_kv_blocks(pn, pi, fn, fi, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                        seq_lengths=(self.Tp, self.Tp), compute_q_blocks=False)


def _block_bounds(nb: int, dev):
    """First / last query of each query block ``(nb, 1)`` and first / last key of each key block ``(1, nb)``."""
    blk = torch.arange(nb, device=dev)
    return blk[:, None] * BLOCK, blk[:, None] * BLOCK + BLOCK - 1, blk[None] * BLOCK, blk[None] * BLOCK + BLOCK - 1


def _causal_blocks(T: int, B: int, Bp: int, nb: int, dev):
    """``(Bp, nb, nb)`` "some pair allowed" / "every pair allowed" of the causal mask over ``T`` real keys."""
    qs, qe, ks, ke = _block_bounds(nb, dev)
    row = (torch.arange(Bp, device=dev) < B)[:, None, None]
    inside = (ks < T) & (qs < T)  # blocks wholly in the padding hold no work
    return (ks <= qe) & inside & row, (ke <= qs) & (ke < T) & (qe < T) & row


def _block_any_all(x: torch.Tensor):
    """``x`` ``(Bp, nq, rows, Tp)`` bool -> per ``rows x BLOCK`` block "any" / "all", ``(Bp, nq, Tp / BLOCK)``.
    One pass: a bool tensor's bytes are 0 / 1, so an int64 word holds 8 flags and is at most ``ONES``
    (all True), and the sum of a block row's 16 words is ``16 * ONES`` iff every flag is set (no overflow)."""
    Bp, nq, rows, Tp = x.shape
    s = x.contiguous().view(torch.int64).view(Bp, nq, rows, Tp // BLOCK, BLOCK // 8).sum(4)
    return (s != 0).any(2), (s == BLOCK // 8 * 0x0101010101010101).all(2)


def _bits(t: torch.Tensor) -> bytes:
    """A bool tensor's shape and packed bits: an exact, small cache key."""
    return bytes(str(tuple(t.shape)), "ascii") + np.packbits(t.cpu().numpy()).tobytes()


def _structure(m_any, m_all, f_any, f_all, W: int):
    """Ordered block lists ``[(partial), (full)]``, each (counts ``(Bp, 2, nb)``, indices ``(Bp, 2, nb, nb)``),
    index 0 of dim 1 for full heads, 1 for sparse heads, from the block summary of the mask ``(Bp, nb, nb)``
    and of the far keys ``(Bp, nb)``; the pattern keeps ``(q, k)`` iff ``q - k < W`` or ``k`` is far."""
    Bp, nb = m_any.shape[0], m_any.shape[-1]
    qs, qe, ks, ke = _block_bounds(nb, m_any.device)
    p_any = (qs - ke < W)[None] | f_any[:, None, :]  # some pair of the block kept / every pair kept
    p_all = (qe - ks < W)[None] | f_all[:, None, :]
    sp_full = m_all & p_all
    sp_part = m_any & p_any & ~sp_full  # conservative: the mask_mod decides inside partial blocks
    full_part = m_any & ~m_all  # a full head's block: the model's mask decides alone
    return [_dense_to_ordered(torch.stack([a.expand(Bp, nb, nb), b.expand(Bp, nb, nb)], 1))
            for a, b in ((full_part, sp_part), (m_all, sp_full))]


def _dense_to_ordered(dense: torch.Tensor):
    """``(..., nq, nk)`` bool block map -> (counts ``(..., nq)`` int32, indices ``(..., nq, nk)`` int32),
    indices of the set blocks first (what ``BlockMask.from_kv_blocks`` takes)."""
    d = dense.to(torch.int32)
    num = d.sum(-1, dtype=torch.int32)
    idx = torch.argsort(d, dim=-1, descending=True, stable=True).to(torch.int32)
    return num, idx


def flex_prefill(q, k, v, plan: FlexPlan, full_heads: torch.Tensor, scaling, compile: bool = True) -> torch.Tensor:
    """All heads of a layer over a whole prompt: q ``(B, H, T, D)``, k/v ``(B, Hkv, T, D)`` -> ``(B, H, T, D)``.

    ``full_heads`` ``(H,)`` bool. Rows with no allowed key output zeros (as :func:`masked_sdpa`).
    The call runs at the plan's buckets (batch and length padded up; padding sliced off).
    """
    B, H, T, D = q.shape
    Tp = plan.Tp
    pad = (0, 0, 0, Tp - T, 0, 0, 0, plan.Bp - B)  # length and batch up to the plan's buckets
    qp, kp, vp = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    fn = _kernel(compile)
    key = (q.device.type, q.dtype, plan.Bp, H, k.shape[1], Tp, D, compile)
    first = compile and key not in COMPILE_SECONDS
    t = time.perf_counter()
    out = _call(fn, qp, kp, vp, block_mask=plan.for_heads(full_heads), scale=scaling, enable_gqa=H != k.shape[1])
    if first:
        if q.device.type == "cuda":
            torch.cuda.synchronize(q.device)
        COMPILE_SECONDS[key] = time.perf_counter() - t
    return out[:B, :, :T]


def flex_decode(q, k, v, ok, scaling, compile: bool = True) -> torch.Tensor:
    """One decode query per row on a store of keys: q ``(B, H, 1, D)``, k/v ``(B, Hkv, S, D)``, ``ok``
    ``(B, S)`` bool (slots past the used ones: False) -> ``(B, H, 1, D)``. ``S`` is the store's capacity,
    constant between compactions, so the compiled kernel serves step after step."""

    def score_mod(score, b, h, qi, ki):
        return torch.where(ok[b, ki], score, -float("inf"))

    return _call(_kernel(compile), q, k, v, score_mod=score_mod, scale=scaling, enable_gqa=q.shape[1] != k.shape[1])


def _call(fn, *args, **kwargs):
    with warnings.catch_warnings():
        # eager FlexAttention (flex_compile=false) warns on every process's first call that it is unfused: asked for
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return fn(*args, **kwargs)
