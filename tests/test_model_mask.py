"""Mask variants start from the mask the model builds and only remove keys (DESIGN §8).

Gemma 3's image tokens attend bidirectionally within an image; a sparse head whose window covers
the whole input must then compute exactly what the model computes, on every family.
"""

from __future__ import annotations

import pytest
import torch
from test_sparse import CASES, FULL, SINK
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from core_eval.adapters import adapter_for
from core_eval.attention.cache_kwarg import cache_kwarg
from core_eval.sparse import Pattern, reference_hybrid, sparse_prefill
from core_eval.attention.reference import allowed_keys
from core_eval.intervene import apply_intervention

# ---------------------------------------------------------------- what the model passes to attention

RECORD_NAME = "core_eval_test_record_mask"
RECORDED: dict[int, torch.Tensor | None] = {}  # layer -> the attention_mask it was given


def recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA, remembering the mask each layer was passed."""
    RECORDED[module.layer_idx] = attention_mask
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


AttentionInterface.register(RECORD_NAME, recording_attention)
AttentionMaskInterface.register(RECORD_NAME, sdpa_mask)


def full_layer_mask(model, inputs) -> torch.Tensor:
    """``(B, q, kv)`` bool: the keys the model's own mask allows in its first full-attention layer
    (one a hybrid path handles), recorded from what the model passes to the attention function."""
    ad = adapter_for(model)
    RECORDED.clear()
    ad.set_lm_attention(RECORD_NAME)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        ad.set_lm_attention("sdpa")
    B, T = inputs["input_ids"].shape
    layer = next(l for l in sorted(RECORDED) if not ad.is_sliding(l))
    return allowed_keys(RECORDED[layer], T, T, "cpu").expand(B, 1, T, T)[:, 0]


def test_gemma3_mask_is_bidirectional_within_an_image(tiny_loaded):
    """So the invariant below really exercises keys after the query on Gemma 3."""
    model, proc, inputs = tiny_loaded("gemma3")
    B, T = inputs["input_ids"].shape
    visual = adapter_for(model).visual_mask(inputs["input_ids"])
    m = full_layer_mask(model, inputs)
    later = m & torch.ones(T, T, dtype=torch.bool).triu(1)  # (B, q, kv): keys after the query
    assert later.any(), "the tiny Gemma 3 attends causally: the invariant test would not exercise the fix"
    assert bool((later <= (visual[:, :, None] & visual[:, None, :])).all())  # only image -> image


# ---------------------------------------------------------------- the invariant, on real models


@pytest.mark.parametrize("family,kind", CASES)  # every family; text_only on VLMs
def test_window_longer_than_the_input_changes_nothing(tiny_loaded, family, kind):
    """Nothing is dropped: prefill logits equal the unmodified model's; greedy decoding through the
    hybrid cache and through a dense cache (the one-row masked path) gives the same tokens."""
    model, proc, inputs = tiny_loaded(family)
    kw = cache_kwarg(model)
    with torch.no_grad():
        dense = model(**inputs).logits
        dense_gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    iv = apply_intervention(model, FULL, kind, sink=SINK, window=100_000)
    try:
        assert iv.variant.hybrid_layers, "no layer became hybrid"
        with torch.no_grad():
            got = model(**inputs).logits
            gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
            gen_dense_cache = model.generate(**inputs, **{kw: DynamicCache(config=model.config)},
                                             max_new_tokens=6, do_sample=False)
    finally:
        iv.remove()
    m = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[m], dense[m], atol=1e-5, rtol=0)
    assert torch.equal(gen, dense_gen) and torch.equal(gen_dense_cache, dense_gen)


# ---------------------------------------------------------------- sparse_prefill vs a loop, synthetic masks


def loop_oracle(q, k, v, mask, visual, n_sink, window, keeps_text, scaling):
    """Row by row: key ``j`` iff ``mask[b, i, j]`` and (sink, or text [text_only], or ``i - j < window``)."""
    B, H, T, D = q.shape
    g = H // k.shape[1]
    out = torch.zeros_like(q)
    real = mask.any(1)  # (B, T): keys some row sees
    for b in range(B):
        sinks = set(torch.nonzero(real[b]).flatten()[:n_sink].tolist())
        for i in range(T):
            keys = [j for j in range(T) if mask[b, i, j]
                    and (j in sinks or (keeps_text and not visual[b, j]) or i - j < window)]
            if not keys:
                continue
            for h in range(H):
                s = (k[b, h // g, keys] @ q[b, h, i]) * scaling
                out[b, h, i] = torch.softmax(s, 0) @ v[b, h // g, keys]
    return out


def synthetic_mask(T, pad, block, prefix, holes):
    """``(B, T, T)`` bool: causal, left padding ``pad[b]``, an image block ``block`` (a, b) seen
    bidirectionally (Gemma 3), a bidirectional prefix of ``prefix`` real tokens (PaliGemma), and
    a fraction ``holes`` of keys removed at random (not the diagonal nor the last row, which
    defines the real tokens), so the mask also removes far keys."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    g = torch.Generator().manual_seed(2)
    rows = []
    for p in pad:
        real = j >= p
        bidir = ((i >= block[0]) & (i < block[1]) & (j >= block[0]) & (j < block[1]))
        bidir |= (i < p + prefix) & (j < p + prefix)
        kept = (torch.rand(T, T, generator=g) >= holes) | (i == j) | (i == T - 1)
        rows.append(((j <= i) | bidir) & real & (i >= p) & kept)
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["streaming", "text_only"])
@pytest.mark.parametrize("window,block", [(4, 4), (4, 16), (8, 5), (100, 8)])
@pytest.mark.parametrize("prefix,holes", [(0, 0.0), (9, 0.0), (0, 0.3)])
def test_sparse_prefill_composes_with_the_model_mask(kind, window, block, prefix, holes):
    """The near slice reaches keys after a block's rows (an image spanning blocks), far keys obey
    the model's mask, and ``reference_hybrid`` computes the same."""
    torch.manual_seed(0)
    B, H, Hkv, T, D = 2, 4, 2, 37, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    mask = synthetic_mask(T, pad=(0, 5), block=(11, 30), prefix=prefix, holes=holes)
    visual = torch.zeros(B, T, dtype=torch.bool)
    visual[:, 11:30] = True
    pattern = Pattern(kind, n_sink=2, window=window)
    want = loop_oracle(q, k, v, mask, visual, 2, window, kind == "text_only", D**-0.5)
    am = mask[:, None]  # (B, 1, T, T): what sdpa_mask passes
    real = mask[:, -1]
    sink = real & (real.long().cumsum(1) <= 2)
    got = sparse_prefill(q, k, v, real, visual & real, sink, pattern, D**-0.5, block=block, model_mask=am)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    ref = reference_hybrid(q, k, v, am, D**-0.5, torch.zeros(H, dtype=torch.bool), pattern, visual)
    torch.testing.assert_close(ref.transpose(1, 2), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("window,block", [(4, 4), (8, 5)])
def test_sparse_prefill_without_a_mask_is_causal(window, block):
    """``model_mask=None`` (what the model passes for an unpadded causal prompt) means causal."""
    torch.manual_seed(1)
    B, H, T, D = 1, 2, 23, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None]
    visual = torch.zeros(B, T, dtype=torch.bool)
    visual[:, 6:15] = True
    real = torch.ones(B, T, dtype=torch.bool)
    sink = real & (torch.arange(T) < 2)
    pattern = Pattern("text_only", n_sink=2, window=window)
    want = loop_oracle(q, k, v, causal, visual, 2, window, True, D**-0.5)
    got = sparse_prefill(q, k, v, real, visual, sink, pattern, D**-0.5, block=block)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
