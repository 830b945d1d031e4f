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
about 10-30 s (less when inductor's on-disk cache already holds it); a later bucket about 4-9 s; each
forward builds the block structure once (under 10 ms at 2k tokens) and every layer reuses it.
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


class FlexPlan:
    """The block structure of one forward, shared by every hybrid layer of it.

    Built from the model's mask and the pattern's far-key flags; ``for_heads`` turns it into a
    :class:`BlockMask` for one layer's per-head full/sparse split. ``mask`` ``(B|1, 1, T, T)`` bool
    or ``None`` (causal); ``far`` ``(B, T)`` bool (sinks, text for ``text_only``; real keys only).
    """

    def __init__(self, mask: torch.Tensor | None, far: torch.Tensor, pattern: Pattern, T: int):
        B, dev = far.shape[0], far.device
        self.Tp, self.pattern = bucket(T), pattern
        Bp = self.Bp = bucket(B, 1)  # padded batch rows get no blocks: no work
        self.n = torch.tensor(T, device=dev)  # a tensor, so a new length in the same bucket does not recompile
        nb, W = self.Tp // BLOCK, pattern.window
        blk = torch.arange(nb, device=dev)
        qs, qe = blk[:, None] * BLOCK, blk[:, None] * BLOCK + BLOCK - 1  # first / last query of a block
        ks, ke = blk[None] * BLOCK, blk[None] * BLOCK + BLOCK - 1
        inside = (ks < T) & (qs < T)  # blocks wholly in the padding hold no work
        if mask is None:  # causal; padded batch rows: nothing
            row = (torch.arange(Bp, device=dev) < B)[:, None, None]
            m_any, m_all = (ks <= qe) & inside & row, (ke <= qs) & (ke < T) & (qe < T) & row
        # The mask_mod reads the model's mask and the far flags padded to the bucket (padding: False), so
        # a kernel compiled for the bucket serves every length and batch size in it (tensors of another
        # shape recompile).
        self.mask = None
        if mask is not None:
            pad = (0, self.Tp - T, 0, self.Tp - T, 0, 0, 0, Bp - B)
            self.mask = F.pad(mask.expand(B, 1, T, T), pad)  # (Bp, 1, Tp, Tp)
            mp = self.mask.view(Bp, nb, BLOCK, nb, BLOCK)
            m_any, m_all = mp.any(4).any(2), mp.all(4).all(2)
        self.far = F.pad(far, (0, self.Tp - T, 0, Bp - B))  # (Bp, Tp)
        farp = self.far.view(Bp, nb, BLOCK)
        # the pattern keeps (q, k) iff q - k < W or k is far: "some pair kept" / "every pair kept" per block
        p_any = (qs - ke < W)[None] | farp.any(2)[:, None, :]
        p_all = (qe - ks < W)[None] | farp.all(2)[:, None, :]
        full_full = m_all  # a full head's block: the model's mask decides alone
        full_part = m_any & ~m_all
        sp_full = m_all & p_all
        sp_part = m_any & p_any & ~sp_full  # conservative: the mask_mod decides inside partial blocks
        # ordered block lists for the two head kinds, (Bp, 2, nb[, nb]); a layer picks one per head
        self._ordered = [_dense_to_ordered(torch.stack([a.expand(Bp, nb, nb), b.expand(Bp, nb, nb)], 1))
                         for a, b in ((full_part, sp_part), (full_full, sp_full))]

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
    with warnings.catch_warnings():
        # eager FlexAttention (flex_compile=false) warns on every process's first call that it is unfused: asked for
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = fn(qp, kp, vp, block_mask=plan.for_heads(full_heads), scale=scaling, enable_gqa=H != k.shape[1])
    if first:
        if q.device.type == "cuda":
            torch.cuda.synchronize(q.device)
        COMPILE_SECONDS[key] = time.perf_counter() - t
    return out[:B, :, :T]
