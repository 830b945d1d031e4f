"""Qwen3-VL and Qwen3-VL-MoE specifics: DeepStack (what it means for visual_knockout, measured),
the q_norm / k_norm-exact head permutation of hybrid sparse attention, the MoE layers, token ids,
token counts without ``image_grid_thw``, and video prompts (timestamps are text, video pads visual)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import test_sparse
from core_eval.adapters import adapter_for, registered_families
from core_eval.adapters.regions import image_token_rects, token_rects
from core_eval.sparse import permute_layer, unpermute_layer
from core_eval.intervene import apply_intervention
from core_eval.prompting import encode
from core_eval.testing import synthetic_image

FAMILIES = ["qwen3_vl", "qwen3_vl_moe"]
PROMPT = "What colour is the top left square?"


def one(proc, image):
    return encode(proc, [SimpleNamespace(question=PROMPT, answer="", images=[image])])


def forward(model, inputs, heads=(), deepstack=True):
    """(logits, last hidden states) of row 0, with ``visual_knockout`` on ``heads`` and optionally
    without DeepStack (``_deepstack_process`` made the identity on this instance)."""
    lm = model.model.language_model
    if not deepstack:
        lm._deepstack_process = lambda hidden, mask, embeds: hidden
    iv = apply_intervention(model, list(heads), "visual_knockout")
    try:
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
    finally:
        iv.remove()
        lm.__dict__.pop("_deepstack_process", None)
    return out.logits[0], out.hidden_states[-1][0]


# --------------------------------------------------------------------------- DeepStack
@pytest.mark.parametrize("family", FAMILIES)
def test_deepstack_adds_vision_features_at_visual_positions_after_the_first_layers(tiny_loaded, family):
    """Between decoder layers k and k+1 the hidden states change by exactly the k-th DeepStack feature
    at the visual positions, and not at all at text positions (outside attention)."""
    model, proc, inputs = tiny_loaded(family)
    ad = adapter_for(model)
    visual = ad.visual_mask(inputs["input_ids"])
    with torch.no_grad():
        feats = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).deepstack_features
    feats = [torch.cat(f) for f in feats]
    assert len(feats) == len(model.config.vision_config.deepstack_visual_indexes) == 2 < ad.shape.num_layers
    seen: dict = {}
    hooks = [layer.register_forward_hook(lambda m, args, out, i=i: seen.update({("in", i): args[0], ("out", i): out}))
             for i, layer in enumerate(ad.layers)]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    for k in range(ad.shape.num_layers - 1):
        added = seen[("in", k + 1)] - seen[("out", k)]
        assert torch.equal(added[~visual], torch.zeros_like(added[~visual]))  # text positions: nothing added
        if k < len(feats):
            assert feats[k].abs().max() > 0.02
            torch.testing.assert_close(added[visual], feats[k], atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(added, torch.zeros_like(added))


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_knockout_with_deepstack(tiny_loaded, family):
    """What visual_knockout means under DeepStack (the module docstring's claims, measured).

    Two different images of the same size (same M-RoPE positions), the same prompt:
    - no knockout: the answer rows depend on the image, and DeepStack changes them;
    - every head of every layer knocked out: the text rows are independent of the image and of
      DeepStack, while the visual positions' hidden states still depend on the image;
    - every head of layers >= 1 knocked out: the answer still depends on the image (layer-0 heads
      read the embeddings) but no longer on DeepStack, which enters after layer 0.
    """
    model, proc, _ = tiny_loaded(family)
    s = adapter_for(model).shape
    a, b = one(proc, synthetic_image(0)), one(proc, synthetic_image(3))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["image_grid_thw"], b["image_grid_thw"])
    text = ~adapter_for(model).visual_mask(a["input_ids"])[0]
    every = [(l, h) for l in range(s.num_layers) for h in range(s.num_heads)]
    late = [(l, h) for l in range(1, s.num_layers) for h in range(s.num_heads)]

    def diff(x, y):
        return float((x - y).abs().max())

    la, _ = forward(model, a)
    lb, _ = forward(model, b)
    la_nods, _ = forward(model, a, deepstack=False)
    assert diff(la[text], lb[text]) > 1e-2 and diff(la[text], la_nods[text]) > 1e-2

    la, ha = forward(model, a, every)
    lb, hb = forward(model, b, every)
    la_nods, _ = forward(model, a, every, deepstack=False)
    assert diff(la[text], lb[text]) < 1e-6 and diff(la[text], la_nods[text]) < 1e-6
    assert diff(ha[~text], hb[~text]) > 0.1  # the image is still in the residual stream at visual positions

    la, _ = forward(model, a, late)
    lb, _ = forward(model, b, late)
    la_nods, _ = forward(model, a, late, deepstack=False)
    assert diff(la[text], lb[text]) > 1e-2
    assert diff(la[text], la_nods[text]) < 1e-6


def test_notes_and_docstring_state_the_deepstack_caveat():
    import core_eval.adapters.families.qwen3_vl as mod

    for fam in FAMILIES:
        notes = registered_families()[fam].notes
        assert "DeepStack" in notes and "visual_knockout" in notes
    assert "visual_knockout" in mod.__doc__ and "RAM keeps its definition" in mod.__doc__


# --------------------------------------------------------------------------- attention: q_norm / k_norm
@pytest.mark.parametrize("family", FAMILIES)
def test_head_permutation_is_exact_with_q_norm_and_k_norm(tiny_loaded, family):
    """q_norm / k_norm hold one head_dim-sized weight shared by all heads, so permuting head rows of
    q/k/v (and o's columns) gives the same attention output; checked with random norm weights."""
    model, _, inputs = tiny_loaded(family)
    ad = adapter_for(model)
    s = ad.shape
    attn = copy.deepcopy(ad.attention(1))
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (s.head_dim,)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        attn.q_norm.weight.copy_(1 + torch.randn(s.head_dim, generator=g))
        attn.k_norm.weight.copy_(1 + torch.randn(s.head_dim, generator=g))
    x = torch.randn(1, 10, model.config.text_config.hidden_size, generator=g)
    pos = torch.arange(10)[None].expand(3, 1, 10)
    cos_sin = model.model.language_model.rotary_emb(x, pos)
    before = [p.clone() for p in attn.parameters()]
    with torch.no_grad():
        ref = attn(x, cos_sin, None)[0]
        perm = permute_layer(attn, [1], s.num_kv_heads, s.groups, s.head_dim, ("q_proj", "k_proj", "v_proj", "o_proj"))
        got = attn(x, cos_sin, None)[0]
        unpermute_layer(attn, perm, s.groups, s.head_dim, ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert perm.tolist() == [1, 0]
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(before, attn.parameters()))


@pytest.mark.parametrize("family", FAMILIES)
def test_permutation_is_exact_and_undone(tiny_loaded, family):
    test_sparse.test_permutation_is_exact_and_undone(tiny_loaded, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_head_full_is_bit_identical_to_dense(tiny_loaded, family):
    test_sparse.test_every_head_full_is_bit_identical_to_dense(tiny_loaded, family)


# --------------------------------------------------------------------------- MoE
def test_moe_layers_are_experts_and_attention_is_dense(tiny_loaded):
    model, _, inputs = tiny_loaded("qwen3_vl_moe")
    ad = adapter_for(model)
    tc = model.config.text_config
    assert (tc.num_experts, tc.num_experts_per_tok, tc.mlp_only_layers) == (4, 2, [])
    for i in range(ad.shape.num_layers):
        assert type(ad.layers[i].mlp).__name__ == "Qwen3VLMoeTextSparseMoeBlock"
        assert ad.o_proj(i).in_features == ad.shape.num_heads * ad.shape.head_dim
    # the routers really spread tokens over several experts, top-2 each
    picks = []
    hook = ad.layers[0].mlp.gate.register_forward_hook(lambda m, a, out: picks.append(out[2]))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    assert picks[0].shape[-1] == 2 and len(picks[0].unique()) >= 3


# --------------------------------------------------------------------------- tokens, sizes, video
@pytest.mark.parametrize("family", FAMILIES)
def test_token_ids_and_template(tiny_loaded, family):
    model, proc, inputs = tiny_loaded(family)
    tok = proc.tokenizer
    ids = tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])
    c = model.config
    assert [c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id] == ids
    assert adapter_for(model).visual_token_ids == tuple(ids[:2])
    assert (proc.image_processor.patch_size, proc.image_processor.merge_size) == (16, 2)
    assert c.vision_config.patch_size == 16 and c.vision_config.spatial_merge_size == 2
    assert "mm_token_type_ids" in inputs  # M-RoPE needs it with images
    text = proc.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"  # no default system turn


@pytest.mark.parametrize("family", FAMILIES)
def test_token_counts_follow_the_processor_for_many_sizes(tiny_loaded, family):
    _, proc, _ = tiny_loaded(family)
    sizes = [(1, 1), (17, 300), (300, 17), (64, 64), (65, 63), (128, 96), (200, 150), (333, 111), (96, 128),
             (400, 300), (129, 257)]
    samples = [SimpleNamespace(question="q", answer="", images=[Image.new("RGB", wh)]) for wh in sizes]
    inputs = encode(proc, samples)
    tr = token_rects(proc, inputs, [s.images for s in samples])  # raises on any count mismatch
    assert torch.equal(tr.image >= 0, inputs["input_ids"] == proc.image_token_id)
    m = proc.image_processor.merge_size
    for i, wh in enumerate(sizes):  # without image_grid_thw the rule recomputes smart_resize (factor 32)
        t, gh, gw = inputs["image_grid_thw"][i].tolist()
        assert len(image_token_rects(proc, wh)) == t * gh * gw // m**2


@pytest.mark.parametrize("family", FAMILIES)
def test_video_timestamps_are_text_and_video_pads_are_visual(tiny_loaded, family):
    model, proc, _ = tiny_loaded(family)
    ad = adapter_for(model)
    frames = np.stack([np.full((64, 96, 3), 40 * i, dtype=np.uint8) for i in range(4)])
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    meta = [{"fps": 2.0, "total_num_frames": 4, "frames_indices": [0, 1, 2, 3]}]
    batch = proc(text=[text], videos=[frames], video_metadata=meta, do_sample_frames=False, return_tensors="pt")
    ids = batch["input_ids"][0]
    t, gh, gw = batch["video_grid_thw"][0].tolist()
    per_frame = gh * gw // proc.video_processor.merge_size**2
    assert int((ids == model.config.video_token_id).sum()) == t * per_frame and t == 2
    decoded = proc.tokenizer.decode(ids)
    assert "<0.2 seconds>" in decoded and "<1.2 seconds>" in decoded  # one timestamp per temporal patch
    vis = ad.visual_mask(batch["input_ids"])[0]
    assert torch.equal(vis, ids == model.config.video_token_id)
    assert int((ids == model.config.vision_start_token_id).sum()) == t + 1  # the template's own, then one per frame
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
