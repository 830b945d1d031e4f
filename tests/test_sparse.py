"""Hybrid sparse attention: the fast paths (head permutation, gathered prefill, per-head KV cache)
equal the oracle (dense attention with an explicit per-head boolean mask: the model's own mask AND
the pattern) on every architecture, Gemma 3's bidirectional image blocks included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ALL_FAMILIES, TEXT_FAMILIES, VLM_FAMILIES, grow_inputs
from transformers import DynamicCache

import oracles
from core_eval import load
from core_eval.adapters import adapter_for
from core_eval.attention.cache_kwarg import cache_kwarg
from core_eval.sparse import HybridCache, HybridLayer, Pattern
from core_eval.intervene import apply_intervention

FULL = [(0, 0), (1, 2), (1, 3), (2, 1)]
SINK, WINDOW = 2, 8
CASES = [(f, k) for f in ALL_FAMILIES for k in ("streaming", "text_only") if f in VLM_FAMILIES or k == "streaming"]


@pytest.fixture
def models(tiny_loaded):
    return tiny_loaded


def oracle_logits(model, inputs, full_kv, kind, visual_ids):
    ad = adapter_for(model)
    g, s = ad.shape.groups, ad.shape
    oracles.HYBRID_STATE.update(
        full={l: torch.tensor([h // g in kvs for h in range(s.num_heads)])
              for l, kvs in full_kv.items() if len(kvs) < s.num_kv_heads and not ad.is_sliding(l)},
        pattern=Pattern(kind, SINK, WINDOW), visual=ad.visual_mask(visual_ids))
    ad.set_lm_attention(oracles.HYBRID_NAME)
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        ad.set_lm_attention("sdpa")


# backend=flex with the eager FlexAttention (exact, no compile); the compiled kernel: test_sparse_flex.py
FLEX = dict(backend="flex", flex_compile=False)
# every family once (streaming), text_only where the mask is not plain causal (Gemma 3, PaliGemma) and on a GQA VLM
FLEX_CASES = [(f, "streaming") for f in ALL_FAMILIES] + [(f, "text_only") for f in ("gemma3", "paligemma", "qwen2_vl")]


def hybrid_backends(model, iv) -> set[str]:
    """The prefill backends the hybrid layers used last."""
    ad = adapter_for(model)
    return {ad.attention(l)._core_eval_compute.last_backend for l in iv.variant.hybrid_layers}


@pytest.mark.parametrize("family,kind", CASES)
def test_fast_paths_equal_the_explicit_mask_oracle(models, family, kind):
    check_against_oracle(models, family, kind, block=16)


@pytest.mark.parametrize("family,kind", FLEX_CASES)
def test_flex_backend_equals_the_explicit_mask_oracle(models, family, kind):
    """One FlexAttention call per layer, composed with the mask the model passes (Gemma 3's
    bidirectional image blocks, left padding), prefill and greedy decode through the hybrid cache."""
    check_against_oracle(models, family, kind, **FLEX)


def test_flex_block_structure_is_built_once_for_repeated_forwards(models):
    """The layers of a forward share one plan, and a second forward of the same bucket reuses the
    cached block lists (core_eval.sparse.STRUCTURES): one build, one hit, the same logits."""
    from core_eval.sparse import STRUCTURES

    model, proc, inputs = models("llava")
    iv = apply_intervention(model, FULL, "streaming", sink=SINK, window=WINDOW, **FLEX)
    try:
        STRUCTURES.clear()
        with torch.no_grad():
            first, second = model(**inputs).logits, model(**inputs).logits
        assert len(iv.variant.hybrid_layers) > 1 and (STRUCTURES.builds, STRUCTURES.hits) == (1, 1)
        assert torch.equal(first, second)
    finally:
        iv.remove()


@pytest.fixture
def visual_keep():
    """A pattern of one's own: sparse heads keep every visual token at any distance (and the sinks +
    window) and drop distant text, the reverse of text_only; registered for this test only."""
    from core_eval.masks import register_variant
    from core_eval.masks.registry import _REGISTRY
    from core_eval.sparse import PATTERNS, register_pattern
    from core_eval.sparse.variant import SparseVariant

    register_pattern("test_visual_keep", lambda real, visual, sink: sink | visual, needs_visual=True)

    @register_variant
    class VisualKeep(SparseVariant):
        name = pattern_kind = "test_visual_keep"

    yield "test_visual_keep"
    del _REGISTRY["test_visual_keep"], PATTERNS["test_visual_keep"]


@pytest.mark.parametrize("family", ["llava", "gemma3"])
@pytest.mark.parametrize("backend", ["blocks", "flex"])
def test_a_registered_pattern_equals_the_oracle(models, visual_keep, family, backend):
    check_against_oracle(models, family, visual_keep, backend=backend, flex_compile=False)


def check_against_oracle(models, family, kind, **options):
    model, proc, inputs = models(family)
    T = inputs["input_ids"].shape[1]
    with torch.no_grad():
        dense = model(**inputs).logits
    iv = apply_intervention(model, FULL, kind, sink=SINK, window=WINDOW, **options)
    try:
        assert iv.variant.hybrid_layers, "no layer became hybrid"
        with torch.no_grad():
            got = model(**inputs).logits
            assert hybrid_backends(model, iv) == {options.get("backend", "blocks")}  # auto: short prompts -> blocks
            gen = model.generate(**inputs, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    finally:
        full_kv = iv.variant.full_kv
        iv.remove()
    m = inputs["attention_mask"].bool()
    want = oracle_logits(model, inputs, full_kv, kind, inputs["input_ids"])
    torch.testing.assert_close(got[m], want[m], atol=1e-5, rtol=0)  # prefill
    assert (got[m] - dense[m]).abs().max() > 1e-4  # and the pattern really bites at this length
    # decode: 20 greedy steps through the hybrid cache == greedy argmax of the oracle on the sequence
    assert gen.shape[1] == T + 20
    full = oracle_logits(model, grow_inputs(model, inputs, gen[:, :-1]), full_kv, kind, gen[:, :-1])
    full[..., torch.tensor(model.generation_config.eos_token_id).flatten()] = -float("inf")  # min_new_tokens bans EOS
    assert torch.equal(full[:, T - 1 :].argmax(-1), gen[:, T:])


@pytest.mark.parametrize("family", TEXT_FAMILIES)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "hybrid"])
def test_chunked_prefill_equals_one_shot(models, family, sparse):
    """Prefill in chunks of 5 and 7 tokens (left-padded batch of 2) gives the one-shot prefill's logits and
    the same next decode step, dense (DynamicCache) and hybrid (HybridCache: each chunk's sparse heads
    see the store's kept keys and the chunk's own); hybrid is also checked against the oracle."""
    from core_eval.sparse.cache import chunked_prefill

    model, proc, inputs = models(family)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    m = mask.bool()
    with torch.no_grad():
        dense = model(input_ids=ids, attention_mask=mask).logits
    iv = apply_intervention(model, FULL, "streaming", sink=SINK, window=WINDOW) if sparse else None
    try:
        hybrid = {l: adapter_for(model).attention(l)._core_eval_compute for l in iv.variant.hybrid_layers} if iv else {}
        new_cache = (lambda: HybridCache.attached(model.config, hybrid)) if sparse else (
            lambda: DynamicCache(config=model.config))
        runs = []
        with torch.no_grad():
            for chunk in (ids.shape[1], 5, 7):
                cache = new_cache()
                logits = chunked_prefill(model, ids, mask, cache, chunk)
                step = model(input_ids=logits[:, -1:].argmax(-1), attention_mask=torch.cat([mask, mask[:, -1:]], 1),
                             **{cache_kwarg(model): cache}, use_cache=True).logits
                runs.append((logits, step))
        full_kv = iv.variant.full_kv if iv else None
    finally:
        if iv:
            iv.remove()
    (one, one_step), *chunked = runs
    assert ids.shape[1] > 7 and not m.all()  # several chunks, and padding
    for logits, step in chunked:
        torch.testing.assert_close(logits[m], one[m], atol=1e-5, rtol=0)
        torch.testing.assert_close(step, one_step, atol=1e-5, rtol=0)
    if sparse:
        torch.testing.assert_close(one[m], oracle_logits(model, inputs, full_kv, "streaming", ids)[m], atol=1e-5, rtol=0)
        assert (one[m] - dense[m]).abs().max() > 1e-4  # the pattern bites


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_flex_decode_path_equals_sdpa(models, family):
    """decode_path="flex" (FlexAttention on the whole store, eager here) gives the SDPA path's logits
    at every one of 12 greedy steps, over a store that compacts (window 8). Run with deterministic
    algorithms, under which torch fills uninitialised memory with NaN: the store's free slots must not
    reach the output (they did, through flex's 0 x NaN, when the store was torch.empty)."""
    from core_eval.sparse.attention import DECODE_PATHS

    model, proc, inputs = models(family)
    iv = apply_intervention(model, FULL, "streaming", sink=SINK, window=WINDOW, flex_compile=False)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        layers = [adapter_for(model).attention(l)._core_eval_compute for l in iv.variant.hybrid_layers]
        steps = {}
        for path in DECODE_PATHS:
            for a in layers:
                a.decode_path = path
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                     output_logits=True, return_dict_in_generate=True)
            steps[path] = torch.stack(out.logits[1:])  # the decode steps (the first comes from the prefill)
    finally:
        torch.use_deterministic_algorithms(was)
        iv.remove()
    assert steps["sdpa"].isfinite().all()
    torch.testing.assert_close(steps["flex"], steps["sdpa"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_head_full_is_bit_identical_to_dense(models, family):
    model, proc, inputs = models(family)
    s = adapter_for(model).shape
    with torch.no_grad():
        dense = model(**inputs).logits
        dense_gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    every = [(l, h) for l in range(s.num_layers) for h in range(s.num_heads)]
    iv = apply_intervention(model, every, "streaming", sink=SINK, window=WINDOW)
    try:
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, dense)
            assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), dense_gen)
    finally:
        iv.remove()


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_permutation_is_exact_and_undone(models, family):
    """A window longer than the sequence makes sparse heads full: only the head permutation remains."""
    model, proc, inputs = models(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        dense = model(**inputs).logits
    iv = apply_intervention(model, FULL, "streaming", sink=SINK, window=10_000)
    try:
        with torch.no_grad():
            got = model(**inputs).logits
        m = inputs["attention_mask"].bool()
        torch.testing.assert_close(got[m], dense[m], atol=1e-5, rtol=0)
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights were permuted
    finally:
        iv.remove()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "generate" not in model.__dict__


@pytest.mark.parametrize("family", ["llava", "llama"])
def test_hybrid_cache_holds_less(models, family):
    model, proc, inputs = models(family)
    iv = apply_intervention(model, [(0, 0)], "streaming", sink=SINK, window=WINDOW)
    try:
        hybrid = {l: (a.n_full_kv, a.pattern) for l, a in
                  ((l, adapter_for(model).attention(l)._core_eval_compute) for l in iv.variant.hybrid_layers)}
        cache = HybridCache(model.config, hybrid)
        for l in iv.variant.hybrid_layers:
            adapter_for(model).attention(l)._core_eval_compute.cache_layer = cache.layers[l]
        with torch.no_grad():
            model(**inputs, **{cache_kwarg(model): cache}, use_cache=True)
        dense_cache = DynamicCache(config=model.config)
    finally:
        iv.remove()
    with torch.no_grad():
        model(**inputs, **{cache_kwarg(model): dense_cache}, use_cache=True)
    dense_bytes = sum((l.keys.numel() + l.values.numel()) * 4 for l in dense_cache.layers)
    assert cache.kv_bytes() < 0.5 * dense_bytes
    for layer in cache.layers:  # sparse heads keep at most the sinks + the window per row
        if isinstance(layer, HybridLayer):
            assert layer.n <= SINK + WINDOW  # used slots (the store keeps spare capacity)


def test_load_with_sparse_records_the_full_kv_heads(tiny_dir, tmp_path):
    from core_eval.spec import spec_from_scores

    d = tiny_dir("qwen2_vl")
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config

    shape = shape_from_config(load_config(d))
    ram = np.random.default_rng(0).random((shape.num_layers, shape.num_heads))
    spec = spec_from_scores({"ram": ram}, {"name": "t"}, {"name": "ram-v1"}, shape=shape, frac=0.25).write(tmp_path / "s.json")
    loaded = load(d, spec=spec, heads="top", frac=0.25, sparse="text_only", variant_options={"window": 8, "sink": 2})
    v = loaded.summary["variant"]
    assert v["name"] == "text_only" and v["kind"] == "sparse" and v["options"]["window"] == 8
    assert v["n_full_kv_heads"] >= 1 and v["hybrid_layers"]
    from core_eval.loading import LoadError

    with pytest.raises(LoadError, match="both given"):
        load(d, spec=spec, heads="top", ablation="zero", sparse="streaming")


def test_load_honours_the_spec_kv_policy(tiny_dir, tmp_path):
    """The spec's kv_policy decides the full KV heads unless kv_policy is given; ``mean`` keeps the
    ``ceil(heads / groups)`` KV groups of highest mean score whole (Qwen2-VL tiny: GQA)."""
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config
    from core_eval.spec import spec_from_scores, to_kv_heads

    d = tiny_dir("qwen2_vl")
    shape = shape_from_config(load_config(d))
    assert shape.groups > 1
    ram = np.random.default_rng(1).random((shape.num_layers, shape.num_heads))
    opts = {"window": 8, "sink": 2}
    full = {}
    for policy in ("any", "all", "mean"):
        spec = spec_from_scores({"ram": ram}, {"name": "t"}, {"name": "ram-v1"}, shape=shape, frac=0.25,
                                kv_policy=policy).write(tmp_path / f"{policy}.json")
        v = load(d, spec=spec, heads="top", frac=0.25, sparse="streaming", variant_options=opts).summary["variant"]
        assert v["options"]["kv_policy"] == policy and v["kv_policy_source"] == "spec"
        full[policy] = sorted((int(k.split("_")[1]), h) for k, hs in v["full_kv_heads"].items() for h in hs)
    heads = spec_from_scores({"ram": ram}, {"name": "t"}, {"name": "ram-v1"}, shape=shape, frac=0.25).heads
    assert full["any"] == to_kv_heads(heads, shape, "any") and full["all"] == to_kv_heads(heads, shape, "all")
    assert full["mean"] == to_kv_heads(heads, shape, "mean", scores=ram)
    assert len({tuple(full[p]) for p in full}) == 3  # the three policies really differ here
    v = load(d, spec=tmp_path / "mean.json", heads="top", frac=0.25, sparse="streaming",
             variant_options={**opts, "kv_policy": "any"}).summary["variant"]
    assert v["options"]["kv_policy"] == "any" and v["kv_policy_source"] == "option"


def test_backend_choice_says_why(models, monkeypatch):
    """auto keeps the blocks path on the CPU and says so; a configuration flex cannot run makes auto
    fall back with flex_support's reason and backend=flex refuse with it."""
    import core_eval.sparse.attention as hybrid_attention

    model, proc, inputs = models("llava")
    iv = apply_intervention(model, FULL, "streaming", sink=SINK, window=WINDOW)  # backend=auto
    try:
        with torch.no_grad():
            model(**inputs)
        layer = adapter_for(model).attention(iv.variant.hybrid_layers[0])._core_eval_compute
        assert (layer.last_backend, layer.last_reason) == ("blocks", hybrid_attention.CPU_AUTO_REASON)
    finally:
        iv.remove()
    monkeypatch.setattr(hybrid_attention, "flex_support", lambda *a, **k: "no flex for this test")
    iv = apply_intervention(model, FULL, "streaming", sink=SINK, window=WINDOW, backend="flex")
    try:
        with torch.no_grad(), pytest.raises(RuntimeError, match="backend=flex cannot run this prefill: no flex for this test"):
            model(**inputs)
    finally:
        iv.remove()
