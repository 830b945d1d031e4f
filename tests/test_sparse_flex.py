"""The flex prefill backend on synthetic tensors: its block structure covers exactly what the
mask_mod allows (so skipped blocks hold no allowed key), the compiled kernel equals the oracle and
compiles once per length bucket, the block structure is cached across forwards without ever standing
for another mask, and :func:`flex_support` says why it cannot run."""

from __future__ import annotations

import pytest
import torch
from test_model_mask import synthetic_mask

from core_eval.attention.reference import allowed_keys
from core_eval.sparse import COMPILE_SECONDS, FlexPlan, Pattern, bucket, flex_prefill, flex_support, reference_hybrid, row_flags
from core_eval.sparse.flex import BLOCK, StructureCache

FULL = torch.tensor([True, False, False, False])  # query head 0 full (KV head 0 shared with head 1: GQA)


def case(T, masked, kind="text_only", window=37, seed=0, B=2):
    """q/k/v ``(B, 4|2, T, 16)``, the model mask (``None`` or padding + an image block seen
    bidirectionally + holes), visual flags, pattern."""
    g = torch.Generator().manual_seed(seed)
    H, Hkv, D = 4, 2, 16
    q, k, v = (torch.randn(B, h, T, D, generator=g) for h in (H, Hkv, Hkv))
    visual = torch.zeros(B, T, dtype=torch.bool)
    visual[:, 40:T - 60] = True
    mask = synthetic_mask(T, pad=(0, 7, 2, 5)[:B], block=(40, T - 60), prefix=0, holes=0.05)[:, None] if masked else None
    return q, k, v, mask, visual, Pattern(kind, n_sink=3, window=window)


def plan_for(mask, visual, pattern, T, structures=None):
    real, vis, sink = row_flags(mask, visual.shape[0], T, "cpu", visual, pattern.n_sink)
    return FlexPlan(None if mask is None else allowed_keys(mask, T, T, "cpu"), pattern.far(real, vis, sink), pattern, T,
                    structures)


def dense_blocks(num, idx, nb):
    """Ordered block lists -> ``(B, H, nb, nb)`` bool map."""
    out = torch.zeros(*idx.shape[:-1], nb, dtype=torch.bool)
    used = torch.arange(idx.shape[-1]) < num[..., None].long()
    return out.scatter_(-1, idx.long(), used)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kind,window", [("streaming", 37), ("text_only", 37), ("streaming", 300)])
def test_block_structure_covers_the_allowed_keys(masked, kind, window):
    """Every pair the oracle allows lies in a listed block; full blocks hold only allowed pairs; and
    blocks really are skipped (the backend saves work). A batch of 3 runs as 4: the padded row has
    no block at all."""
    T = 333
    q, k, v, mask, visual, pattern = case(T, masked, kind, window, B=3)
    bm = plan_for(mask, visual, pattern, T).for_heads(FULL)
    nb, Tp = bucket(T) // BLOCK, bucket(T)
    part = dense_blocks(bm.kv_num_blocks, bm.kv_indices, nb)
    full = dense_blocks(bm.full_kv_num_blocks, bm.full_kv_indices, nb)
    assert not (part & full).any() and part.shape[0] == 4
    assert not (part[3].any() or full[3].any())  # the padded batch row: no work
    part, full = part[:3], full[:3]
    expand = lambda m: m.repeat_interleave(BLOCK, -2).repeat_interleave(BLOCK, -1)[..., :T, :T]  # noqa: E731
    model = allowed_keys(mask, T, T, "cpu").expand(3, 1, T, T)
    real, vis, sink = row_flags(mask, 3, T, "cpu", visual, pattern.n_sink)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    keep = (i - j < window)[None, None] | pattern.far(real, vis, sink)[:, None, None, :]
    allowed = torch.where(FULL[None, :, None, None], model, model & keep)  # (B, H, T, T), as reference_hybrid
    assert not (allowed & ~expand(part | full)).any()
    assert not (expand(full) & ~allowed).any()
    if window < T:
        assert (~(part | full)[:, 1:]).any()  # sparse heads skip blocks
    # the block mask runs at the buckets: batch 3 -> 4 rows, 333 tokens -> 512
    assert bm.shape == (4, 4, Tp, Tp)


def test_compiled_kernel_equals_the_oracle_and_compiles_once_per_bucket():
    """One compile (a padded, bidirectional mask at 200 tokens, batch 4), reused at 250 tokens and batch
    3 (the same buckets: 256 tokens, 4 rows) with another mask object: both exact to the explicit-mask
    oracle (<= 1e-5, float32)."""
    from torch._dynamo.utils import counters

    before, graphs = dict(COMPILE_SECONDS), []
    for T, B in ((200, 4), (250, 3)):
        q, k, v, mask, visual, pattern = case(T, True, seed=T, B=B)
        plan = plan_for(mask, visual, pattern, T)
        got = flex_prefill(q, k, v, plan, FULL, 0.25, compile=True).transpose(1, 2)
        want = reference_hybrid(q, k, v, mask, 0.25, FULL, pattern, visual)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        graphs.append(counters["stats"]["unique_graphs"])  # session-wide (eager flex traces too): compare
    new = set(COMPILE_SECONDS) - set(before)
    assert len(new) == 1 and next(iter(new))[5] == bucket(250) == 256
    assert graphs[1] == graphs[0]  # no recompile for the second length, batch size or mask


def test_flex_support_says_why_not():
    x = torch.zeros(1)
    assert flex_support("cpu", torch.float32, None) is None
    assert flex_support("cpu", torch.bfloat16, torch.ones(1, 1, 4, 4, dtype=torch.bool)) is None
    assert "int64" in flex_support("cpu", torch.int64, None)
    assert "meta" in flex_support("meta", torch.float32, None)
    assert "backward" in flex_support("cpu", torch.float32, None, requires_grad=True)
    additive = torch.zeros(1, 1, 4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), torch.finfo(x.dtype).min)
    assert flex_support("cpu", torch.float32, additive) is None  # a 0 / -inf float mask is fine
    assert "biases" in flex_support("cpu", torch.float32, additive - 0.5 * torch.eye(4))


def padded_case(T, pads, seed=0):
    """``case`` with a causal mask and left padding ``pads`` (one per row): blocks the mask leaves whole
    are "full" blocks, so a structure reused for the wrong mask would skip its mask_mod on padding."""
    q, k, v, _, visual, pattern = case(T, False, seed=seed, B=len(pads))
    mask = synthetic_mask(T, pad=pads, block=(0, 0), prefix=0, holes=0.0)[:, None]
    return q, k, v, mask, visual, pattern


def test_block_structure_is_reused_within_a_bucket():
    """Two forwards whose masks agree block by block build once; a new tensor each time."""
    cache = StructureCache()
    for seed in (0, 1):
        q, k, v, mask, visual, pattern = padded_case(250, (5, 0, 0, 0), seed)
        plan_for(mask.clone(), visual, pattern, 250, cache)
    assert (cache.builds, cache.hits, len(cache)) == (1, 1, 1)


def test_a_new_padding_mask_in_the_same_bucket_stays_exact():
    """The compiled kernel (which, unlike eager FlexAttention, skips unlisted blocks and the mask_mod of
    full ones) at one bucket (256 tokens, 4 rows) with four padding masks in row 0: pad 0, 130 and 5 each
    change the block summary (builds), pad 7 keeps pad 5's (a hit: the lists are reused, the mask_mod
    reads the new mask). All exact to the oracle; the pad-0 structure applied to the last mask is not
    (what a cache keyed on the bucket alone would do: blocks full for pad 0 hold padding at pad 7)."""
    cache, plans = StructureCache(), []
    for pad, builds in ((0, 1), (130, 2), (5, 3), (7, 3)):
        q, k, v, mask, visual, pattern = padded_case(256, (pad, 0, 0, 0), seed=pad)
        plans.append(plan := plan_for(mask, visual, pattern, 256, cache))
        assert cache.builds == builds
        got = flex_prefill(q, k, v, plan, FULL, 0.25, compile=True).transpose(1, 2)
        want = reference_hybrid(q, k, v, mask, 0.25, FULL, pattern, visual)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    plan._ordered = plans[0]._ordered  # a wrong cache
    got = flex_prefill(q, k, v, plan, FULL, 0.25, compile=True).transpose(1, 2)
    assert (got - want).abs().max() > 1e-2


def test_the_structure_cache_is_bounded():
    cache = StructureCache(size=2)
    for T in (100, 200, 400, 100):  # three buckets, then the first again: evicted, so built again
        q, k, v, mask, visual, pattern = padded_case(T, (0, 3))
        plan_for(mask, visual, pattern, T, cache)
    assert (cache.builds, cache.hits, len(cache)) == (4, 0, 2)
