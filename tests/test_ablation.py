"""Load-time head ablation on every supported architecture (issue: foundation).

Oracles: weight surgery on ``o_proj`` for ``zero`` / ``mean``; eager attention with an explicit
per-head boolean mask (tests/oracles.py) for ``uniform`` / ``visual_knockout``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ALL_FAMILIES, VLM_FAMILIES, grow_inputs

import oracles
from core_eval import load
from core_eval.adapters import adapter_for
from core_eval.intervene import apply_intervention

MODES = ("zero", "mean", "uniform", "visual_knockout")


def modes_for(family):
    return [m for m in MODES if family in VLM_FAMILIES or m != "visual_knockout"]


CASES = [(f, m) for f in ALL_FAMILIES for m in modes_for(f)]


def random_means(model, seed=0):
    s = adapter_for(model).shape
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s.num_layers, s.num_heads, s.head_dim, generator=g)


def ablate(model, heads, mode, means=None):
    opts = {"means": means} if mode == "mean" else {}
    return apply_intervention(model, heads, mode, **opts)


def run(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw)


def masked(x, inputs):
    """Logits at real (non-padding) positions only."""
    return x[inputs["attention_mask"].bool()]


@pytest.fixture
def models(tiny_loaded):
    return tiny_loaded


# ---------------------------------------------------------------- empty sets are bit-identical


@pytest.mark.parametrize("family,mode", CASES)
def test_empty_head_set_is_bit_identical(models, family, mode):
    model, proc, inputs = models(family)
    ref = run(model, inputs).logits
    ref_tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    iv = ablate(model, [], mode, means=random_means(model))
    try:
        assert model.config.get_text_config()._attn_implementation == "sdpa"
        assert torch.equal(run(model, inputs).logits, ref)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), ref_tokens)
    finally:
        iv.remove()


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_load_with_no_heads_matches_plain_from_pretrained(models, tiny_dir, family):
    model, proc, inputs = models(family)
    loaded = load(tiny_dir(family), heads="none", ablation="uniform")
    assert loaded.summary["n_heads"] == 0
    assert torch.equal(run(loaded.model, inputs).logits, run(model, inputs).logits)


# ---------------------------------------------------------------- zero / mean == weight surgery


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_zero_and_mean_equal_o_proj_weight_surgery(models, family, mode):
    model, proc, inputs = models(family)
    heads = [(0, 1), (2, 0), (2, 3)]
    means = random_means(model)
    iv = ablate(model, heads, mode, means=means)
    try:
        got = run(model, inputs).logits
    finally:
        iv.remove()
    surgered = copy.deepcopy(model)
    ad = adapter_for(surgered)
    D = ad.shape.head_dim
    with torch.no_grad():
        for layer, h in heads:
            o = ad.o_proj(layer)
            cols = slice(h * D, (h + 1) * D)
            if mode == "mean":
                shift = o.weight[:, cols] @ means[layer, h]
                o.bias = torch.nn.Parameter(shift if o.bias is None else o.bias + shift)
            o.weight[:, cols] = 0
    want = run(surgered, inputs).logits
    torch.testing.assert_close(masked(got, inputs), masked(want, inputs), atol=1e-5, rtol=0)
    assert not torch.allclose(masked(got, inputs), masked(run(model, inputs).logits, inputs), atol=1e-4)


# ---------------------------------------------------------------- only the named heads change


def capture_layer(model, layer):
    ad = adapter_for(model)
    store = {}
    h1 = ad.o_proj(layer).register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0].clone()))
    h2 = ad.o_proj(layer).register_forward_hook(lambda m, a, o: store.__setitem__("y", o.clone()))
    return store, (h1, h2)


@pytest.mark.parametrize("family,mode", CASES)
def test_only_the_named_head_changes(models, family, mode):
    model, proc, inputs = models(family)
    ad = adapter_for(model)
    H, D = ad.shape.num_heads, ad.shape.head_dim
    layer, head = 1, 2
    means = random_means(model)

    store_b, hs = capture_layer(model, layer)
    base = run(model, inputs, output_hidden_states=True)
    for h in hs:
        h.remove()
    vision_out = {}
    if ad.vision_tower is not None:
        vh = ad.vision_tower.register_forward_hook(lambda m, a, o: vision_out.setdefault("o", o))
    iv = ablate(model, [(layer, head)], mode, means=means)
    store_a, hs = capture_layer(model, layer)
    try:
        abl = run(model, inputs, output_hidden_states=True)
    finally:
        for h in hs:
            h.remove()
        iv.remove()
    if ad.vision_tower is not None:
        vh.remove()
        # the vision tower keeps its own backend and computes exactly what it computed before
        assert model.config.vision_config._attn_implementation == "sdpa"
        vb = {}
        vh = ad.vision_tower.register_forward_hook(lambda m, a, o: vb.setdefault("o", o))
        run(model, inputs)
        vh.remove()
        assert torch.equal(vision_out["o"][0], vb["o"][0])

    # layers before `layer` (and the input to `layer`) are bit-identical
    for i in range(layer + 1):
        assert torch.equal(base.hidden_states[i], abl.hidden_states[i]), f"hidden state {i} changed"
    xb = store_b["x"].view(*store_b["x"].shape[:-1], H, D)
    xa = store_a["x"].view(*store_a["x"].shape[:-1], H, D)
    others = [h for h in range(H) if h != head]
    # every other head of the layer, including heads sharing the KV head (GQA), is untouched
    assert torch.equal(xb[:, :, others], xa[:, :, others])
    g = ad.shape.groups
    siblings = [h for h in range(H) if h // g == head // g and h != head]
    assert bool(siblings) == (g > 1)  # GQA: query heads sharing the KV head exist ...
    assert torch.equal(xb[:, :, siblings], xa[:, :, siblings])  # ... and are not ablated with it
    real = inputs["attention_mask"].bool()
    assert not torch.allclose(xb[:, :, head][real], xa[:, :, head][real], atol=1e-6)
    # the change of the layer's output equals the head's removed contribution
    W = adapter_for(model).o_proj(layer).weight[:, head * D : (head + 1) * D]
    delta = (xa[:, :, head] - xb[:, :, head]) @ W.T
    torch.testing.assert_close(store_a["y"] - store_b["y"], delta, atol=1e-5, rtol=0)
    assert not torch.allclose(masked(base.logits, inputs), masked(abl.logits, inputs), atol=1e-5)


# ---------------------------------------------------------------- attention-level modes vs oracle


def oracle_logits(model, inputs, heads, mode, input_ids=None):
    oracles.ORACLE_HEADS.clear()
    for layer, h in heads:
        oracles.ORACLE_HEADS.setdefault(layer, {})[h] = mode
    ids = inputs["input_ids"] if input_ids is None else input_ids
    visual = torch.zeros_like(ids, dtype=torch.bool)
    for name in ("image_token_id", "video_token_id"):
        tid = getattr(model.config, name, None)
        if tid is not None:
            visual |= ids == tid
    oracles.ORACLE_STATE["visual"] = visual
    ad = adapter_for(model)
    ad.set_lm_attention(oracles.ORACLE_NAME)
    try:
        return run(model, inputs).logits
    finally:
        ad.set_lm_attention("sdpa")
        oracles.ORACLE_HEADS.clear()


ATTN_CASES = [(f, m) for f, m in CASES if m in ("uniform", "visual_knockout")]


@pytest.mark.parametrize("family,mode", ATTN_CASES)
def test_attention_modes_match_eager_oracle_in_prefill(models, family, mode):
    model, proc, inputs = models(family)
    heads = [(0, 0), (1, 3), (2, 1)]
    iv = ablate(model, heads, mode)
    try:
        got = run(model, inputs).logits
    finally:
        iv.remove()
    want = oracle_logits(model, inputs, heads, mode)
    torch.testing.assert_close(masked(got, inputs), masked(want, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family,mode", CASES)
def test_ablation_applies_in_every_decode_step(models, family, mode):
    """generate() with the KV cache == full forward passes over the generated sequence."""
    model, proc, inputs = models(family)
    heads = [(0, 0), (1, 3), (2, 1)]
    iv = ablate(model, heads, mode, means=random_means(model))
    try:
        gen = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
        seq = gen.sequences
        full_inputs = grow_inputs(model, inputs, seq)  # per-token side inputs grow as generate grows them
        n_new = seq.shape[1] - inputs["input_ids"].shape[1]
        full = run(model, full_inputs).logits
    finally:
        iv.remove()
    T = inputs["input_ids"].shape[1]
    steps = torch.stack([full[:, T - 1 + i] for i in range(n_new)], 1)
    torch.testing.assert_close(torch.stack(gen.scores, 1), steps, atol=1e-4, rtol=0)
    if mode in ("uniform", "visual_knockout"):  # and the oracle agrees on the whole sequence
        want = oracle_logits(model, full_inputs, heads, mode)
        torch.testing.assert_close(full[full_inputs["attention_mask"].bool()],
                                   want[full_inputs["attention_mask"].bool()], atol=1e-5, rtol=0)


def test_gqa_families_really_are_gqa(tiny_dir):
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config

    groups = {f: shape_from_config(load_config(tiny_dir(f))).groups for f in ALL_FAMILIES}
    assert groups["qwen2_vl"] > 1 and groups["gemma3"] > 1 and groups["llama"] > 1
    assert groups["llava"] == 1


def test_remove_restores_the_model_exactly(models):
    model, proc, inputs = models("qwen2_vl")
    ref = run(model, inputs).logits
    iv = ablate(model, [(1, 1)], "visual_knockout")
    assert model.config.get_text_config()._attn_implementation == "core_eval"
    iv.remove()
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    assert torch.equal(run(model, inputs).logits, ref)


def test_summary_records_what_was_applied(tiny_dir):
    loaded = load(tiny_dir("qwen2_vl"), heads=[(2, 1), (0, 3)], ablation="uniform")
    s = loaded.summary
    assert s["variant"]["name"] == "uniform" and s["n_heads"] == 2
    assert s["heads_per_layer"] == {"layer_0": [3], "layer_2": [1]}
    assert s["attention_backend"] == "core_eval" and s["family"] == "qwen2_vl"
    assert s["selection"]["rule"] == "explicit"
