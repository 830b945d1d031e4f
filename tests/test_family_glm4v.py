"""GLM-4.1V / GLM-4.5V specifics (core_eval/adapters/families/glm4v.py, glm4v_moe.py) beyond the matrix.

- the LM's own mask is causal even between the tokens of one image (``attention_mask="causal"``);
- without ``image_grid_thw`` the region rule recomputes GLM's smart_resize (pixel bounds over
  ``temporal_patch_size`` frames), which differs from Qwen2-VL's;
- video frames are written with the image token, so the visual mask covers them with no video id;
- the attention layout head interventions rely on: separate q/k/v/o Linear layers, per-head partial
  rotary, and (GLM-4.1V) the RMSNorm after ``o_proj``, which keeps zero ablation exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core_eval.adapters import adapter_for, registered_families
from core_eval.adapters.regions import image_token_rects
from core_eval.intervene import apply_intervention
from core_eval.probes import ProbeSample
from core_eval.prompting import encode
from core_eval.testing import example_inputs

FAMILIES = ["glm4v", "glm4v_moe"]


@pytest.mark.parametrize("family", FAMILIES)
def test_lm_mask_is_causal_inside_images(family, tiny_sdpa_eager):
    d, _, eager, proc = tiny_sdpa_eager(family)
    inputs = example_inputs(d, batch=2, processor=proc)
    assert registered_families()[family].attention_mask == "causal"
    with torch.no_grad():
        att = eager(**inputs, output_attentions=True).attentions
    vis = adapter_for(eager).visual_mask(inputs["input_ids"])
    T = inputs["input_ids"].shape[1]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    real = inputs["attention_mask"].bool()
    for a in att:  # (B, H, T, T)
        assert a.shape[-1] == T
        for b in range(2):  # real query rows never see a later key (padding rows are all-masked)
            assert (a[b][:, future & real[b][:, None]] == 0).all()
        # an image token never sees a later token of its own image
        for b in range(2):
            pos = vis[b].nonzero().flatten()
            block = a[b][:, pos][:, :, pos]
            assert (block[:, future[: len(pos), : len(pos)]] == 0).all()


def test_rule_without_grid_recomputes_glm_smart_resize(tiny_dir):
    from core_eval.testing.inputs import load_processor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as qwen_smart_resize

    p = load_processor(tiny_dir("glm4v"))
    ip = p.image_processor
    sizes = [(1, 1), (17, 300), (300, 17), (64, 64), (150, 100), (90, 130), (224, 70), (400, 300), (129, 257)]
    samples = [ProbeSample(id="t", images=[Image.new("RGB", wh)], question="q", answer="a") for wh in sizes]
    inputs = encode(p, samples)
    m2 = ip.merge_size**2
    differs = False
    for i, (w, h) in enumerate(sizes):
        t, gh, gw = inputs["image_grid_thw"][i].tolist()
        assert len(image_token_rects(p, (w, h))) == t * gh * gw // m2 == int(
            (inputs["input_ids"][i] == p.image_token_id).sum())
        f = ip.patch_size * ip.merge_size
        qh, qw = qwen_smart_resize(h, w, factor=f, min_pixels=ip.size.shortest_edge, max_pixels=ip.size.longest_edge)
        differs |= (qh // ip.patch_size) * (qw // ip.patch_size) != gh * gw
    assert differs  # Qwen2-VL's smart_resize would give other grids under these settings


def test_video_frames_are_visual_through_the_image_token(tiny_loaded):
    from transformers.video_utils import VideoMetadata

    model, proc, _ = tiny_loaded("glm4v")
    ad = adapter_for(model)
    assert ad.visual_token_ids == (model.config.image_token_id,)
    video = np.random.RandomState(0).randint(0, 255, (4, 56, 84, 3)).astype(np.uint8)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    meta = VideoMetadata(total_num_frames=4, fps=2, duration=2.0, frames_indices=[0, 1, 2, 3])
    out = proc(text=[text], videos=[video], do_sample_frames=False, video_metadata=[meta], return_tensors="pt")
    assert (out["mm_token_type_ids"] == 2).any()  # the processor's own modality labels: 2 = video
    assert torch.equal(ad.visual_mask(out["input_ids"]), out["mm_token_type_ids"] != 0)
    assert not (out["input_ids"] == model.config.video_token_id).any()
    with torch.no_grad():
        assert torch.isfinite(model(**out).logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_layout_allows_exact_head_slicing(family, tiny_loaded):
    model, proc, inputs = tiny_loaded(family)
    ad = adapter_for(model)
    s, tc = ad.shape, ad.text_config
    assert tc.rope_parameters["partial_rotary_factor"] == 0.5
    for layer in range(s.num_layers):
        attn = ad.attention(layer)
        q, k, v = (getattr(attn, n) for n in ad.family.qkv)
        assert all(isinstance(m, torch.nn.Linear) for m in (q, k, v, ad.o_proj(layer)))
        assert attn.head_dim == s.head_dim and q.bias is not None and ad.o_proj(layer).bias is None
        assert q.out_features == s.num_heads * s.head_dim and k.out_features == s.num_kv_heads * s.head_dim
        assert ad.o_proj(layer).in_features == s.num_heads * s.head_dim
    # zeroing every head of layer 1 zeroes its whole attention branch, through GLM-4.1V's post-o_proj norm
    layer = ad.layers[1]
    branch = layer.post_self_attn_layernorm if family == "glm4v" else ad.o_proj(1)
    seen = []
    h = branch.register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    iv = apply_intervention(model, [(1, i) for i in range(s.num_heads)], "zero")
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        iv.remove()
        h.remove()
    assert seen and all(torch.equal(o, torch.zeros_like(o)) for o in seen)
