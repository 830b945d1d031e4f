"""Region -> token mapping (core_eval.adapters.regions), checked against the real processors.

The strongest check (``test_tokens_see_their_pixels``) paints a coordinate ramp into the image
(red = x / W, green = y / H), reads the processor's own ``pixel_values`` back per vision patch,
groups patches into LM tokens with the *model's own* merge / pixel-shuffle / pooling code, and
requires every visual token's decoded position to match the centre of the patch rectangle the
mapping claims for it (and to be nearer to it than to any other token's).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core_eval.adapters import registered_families
from core_eval.adapters.regions import (
    RegionMappingError,
    image_token_rects,
    region_masks,
    region_rule,
    sample_region_masks,
    token_rects,
)
from core_eval.probes import Box, ProbeSample, generate
from core_eval.prompting import encode, prompt_text
from core_eval.testing import VLM_FAMILIES
from core_eval.testing.inputs import load_processor, load_tiny, synthetic_image
from core_eval.testing.tiny_models import recipes

_PROCESSORS: dict = {}
_MODELS: dict = {}
#: Anyres families: base grid + unpadded high-res grid, each high-res row ended by a newline token (visual, no patch).
ANYRES = ("llava_next", "llava_onevision")
#: Families that lay an image out differently when its prompt holds several images (OneVision: base grid only).
MULTI_IMAGE_LAYOUT = ("llava_onevision",)


def family_of(tiny: str) -> str:
    """The family a tiny model belongs to (a family may have several tiny recipes: internvl3_5 is internvl's)."""
    return recipes()[tiny][0].name


@pytest.fixture
def proc(tiny_dir):
    """``proc(family, **image_processor_attrs)``: a fresh (or cached) processor of the tiny model."""

    def get(family, **attrs):
        if attrs:
            p = load_processor(tiny_dir(family))
            for k, v in attrs.items():
                setattr(p.image_processor, k, v)
            return p
        if family not in _PROCESSORS:
            _PROCESSORS[family] = load_processor(tiny_dir(family))
        return _PROCESSORS[family]

    return get


@pytest.fixture
def model(tiny_dir):
    def get(family):
        if family not in _MODELS:
            _MODELS[family] = load_tiny(tiny_dir(family))[0]
        return _MODELS[family]

    return get


def sample(images, question="What is shown?", boxes=()):
    return ProbeSample(id="t", images=list(images), question=question, answer="x", boxes=list(boxes))


def encode_kw(p, samples, padding_side="left", **images_kwargs):
    """Like prompting.encode, but passes image kwargs through to the processor call."""
    tok = p.tokenizer
    texts = [prompt_text(p, s) for s in samples]
    kw = dict(padding=True, padding_side=padding_side, return_tensors="pt")
    if tok.bos_token is not None and texts[0].startswith(tok.bos_token):
        kw["add_special_tokens"] = False
    return p(text=texts, images=[list(s.images) for s in samples], **kw, **images_kwargs)


def ramp_image(w, h):
    """RGB image with red = (x + .5) / W and green = (y + .5) / H (scaled to 0..255)."""
    xs = (np.arange(w) + 0.5) / w
    ys = (np.arange(h) + 0.5) / h
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = np.round(255 * xs)[None, :]
    img[..., 1] = np.round(255 * ys)[:, None]
    img[..., 2] = 128
    return Image.fromarray(img)


def positions(mask_row):
    return mask_row.nonzero().flatten().tolist()


# --------------------------------------------------------------------------- registry & errors
def test_every_vlm_family_has_a_rule_and_text_has_none():
    for fam in {family_of(f) for f in VLM_FAMILIES}:
        assert region_rule(fam) is registered_families()[fam].region is not None
    with pytest.raises(RegionMappingError, match="'text' has no region-to-token mapping.*gemma3"):
        region_rule("text")
    with pytest.raises(ValueError, match="'mllama' is not registered"):
        region_rule("mllama")


def test_a_processor_not_loaded_through_core_eval_needs_a_family(tiny_dir):
    """The family comes from the checkpoint's config (recorded at load time), never from the class name."""
    from transformers import AutoConfig, AutoProcessor

    class OddProcessor:
        image_processor = None

    with pytest.raises(RegionMappingError, match="OddProcessor was not loaded through core_eval: pass family="):
        image_token_rects(OddProcessor(), (10, 10))
    bare = AutoProcessor.from_pretrained(tiny_dir("llava"))  # a real LlavaProcessor, but untagged
    with pytest.raises(RegionMappingError, match="LlavaProcessor was not loaded through core_eval"):
        image_token_rects(bare, (10, 10))
    config = AutoConfig.from_pretrained(tiny_dir("llava"))
    assert torch.equal(image_token_rects(bare, (40, 40), family=config),
                       image_token_rects(load_processor(tiny_dir("llava")), (40, 40)))


def test_mismatched_inputs_raise(proc):
    p = proc("qwen2_vl")
    s = sample([synthetic_image(0, (150, 100))])
    inputs = encode(p, [s])
    n = int((inputs["input_ids"] == p.image_token_id).sum())
    # qwen reads the grid from image_grid_thw; without it the size is used (and here it is wrong)
    with pytest.raises(RegionMappingError, match=f"row 0 has {n} image tokens .*give \\[1\\] tokens"):
        region_masks(p, {"input_ids": inputs["input_ids"]}, [[(28, 28)]], [[]])
    pl = proc("llava")
    inputs = encode(pl, [s])
    with pytest.raises(RegionMappingError, match="box image index 1 out of range"):
        region_masks(pl, inputs, [[(150, 100)]], [[Box(1, 0, 0, 5, 5)]])
    with pytest.raises(RegionMappingError, match="2 image lists for a batch of 1"):
        region_masks(pl, inputs, [[(150, 100)], [(150, 100)]], [[], []])
    with pytest.raises(ValueError, match="min_overlap"):
        region_masks(pl, inputs, [[(150, 100)]], [[]], min_overlap=1.5)


# --------------------------------------------------------------------------- whole image
WHOLE_CASES = [(fam, None) for fam in VLM_FAMILIES] + [
    ("idefics3", "split"),  # 3x2 tiles + global
    ("llava", "pad"),  # LlavaImageProcessor: pad to square first
]


def variant_processor(proc, family, variant):
    if variant is None:
        return proc(family)
    if variant == "split":
        tile = proc(family).image_processor.max_image_size["longest_edge"]
        return proc(family, do_image_splitting=True, size={"longest_edge": 3 * tile})
    if variant == "pad":
        from transformers import LlavaImageProcessor

        p = copy.deepcopy(proc("llava"))
        ip = p.image_processor
        p.image_processor = LlavaImageProcessor(size=dict(shortest_edge=ip.size.shortest_edge),
                                                crop_size=dict(height=ip.crop_size.height, width=ip.crop_size.width),
                                                do_pad=True)
        return p
    if variant == "full":
        p = copy.deepcopy(proc("llava"))
        p.vision_feature_select_strategy = "full"
        return p
    if variant == "max1":  # OneVision: at most one frame's worth of high-res tokens (strong downsampling)
        p = copy.deepcopy(proc(family))
        p.vision_aspect_ratio = "anyres_max_1"
        return p
    raise AssertionError(variant)


@pytest.mark.parametrize("family,variant", WHOLE_CASES)
def test_whole_image_box_maps_to_all_visual_tokens(proc, family, variant):
    p = variant_processor(proc, family, variant)
    samples = [sample([synthetic_image(0, (150, 100))]), sample([synthetic_image(1, (90, 130))], "Which colour?")]
    inputs = encode(p, samples)
    m = sample_region_masks(p, inputs, samples, family=family_of(family))
    image_tokens = inputs["input_ids"] == region_rule(family_of(family)).image_token(p)
    assert image_tokens.sum() > 0
    assert torch.equal(m.visual, image_tokens)
    if family in ANYRES:  # the newline tokens (one per high-res row) are visual but never targets
        newline = m.visual & torch.isnan(token_rects(p, inputs, [s.images for s in samples]).rects).any(-1)
        assert all(0 < n < 10 for n in newline.sum(1).tolist())
        assert torch.equal(m.target, m.visual & ~newline)
        return
    assert torch.equal(m.target, m.visual)
    if variant == "split":  # really tiled: 3x2 tiles + global image, image_seq_len tokens each
        assert m.visual[0].sum() == 7 * p.image_seq_len


def test_llava_full_strategy_keeps_cls_as_untargetable_visual_token(proc):
    p = variant_processor(proc, "llava", "full")
    s = sample([synthetic_image(0, (150, 100))])
    inputs = encode(p, [s])
    m = sample_region_masks(p, inputs, [s])
    vis = positions(m.visual[0])
    assert len(vis) == (32 // p.patch_size) ** 2 + 1
    assert positions(m.target[0]) == vis[1:]  # everything but the leading CLS


# --------------------------------------------------------------------------- one patch -> one token
def identity_geometry(p, family):
    """An image size whose preprocessing is the identity, and the token cell size (from the config)."""
    ip = p.image_processor
    if family == "llava":
        side = ip.crop_size.height
        assert ip.size.shortest_edge == side == ip.crop_size.width
        return (side, side), p.patch_size
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"):
        f = ip.patch_size * ip.merge_size
        assert ip.size.shortest_edge <= 6 * f * f <= ip.size.longest_edge
        return (3 * f, 2 * f), f
    if family in ("glm4v", "glm4v_moe"):  # smart_resize bounds count temporal_patch_size frames
        f = ip.patch_size * ip.merge_size
        assert ip.size.shortest_edge <= ip.temporal_patch_size * 6 * f * f <= ip.size.longest_edge
        return (3 * f, 2 * f), f
    if family == "idefics3":
        side = ip.max_image_size["longest_edge"]
        return (side, side), side // int(round(p.image_seq_len**0.5))
    if family in ("internvl", "internvl3_5"):
        side = ip.size.height
        return (side, side), side // int(round(p.image_seq_length**0.5))
    if family in ("gemma3", "paligemma"):
        side = ip.size.height
        return (side, side), side // int(round(p.image_seq_length**0.5))
    raise AssertionError(family)


# anyres families: every patch is seen by a base token and a high-res token; their one-cell box
# check is in test_family_llava_next.py. Tiny models whose processor gives no single token grid for one
# image: idefics2 (perceiver latents: no patch grid at all) and smolvlm (always tiles + global image);
# see tests/test_family_<name>.py.
NO_SINGLE_GRID = {"idefics2", "smolvlm"}


@pytest.mark.parametrize("family", [f for f in VLM_FAMILIES if f not in (*ANYRES, *NO_SINGLE_GRID)])
def test_box_on_one_patch_maps_to_exactly_that_token(proc, family):
    p = proc(family)
    (w, h), cell = identity_geometry(p, family)
    rows, cols = h // cell, w // cell
    s = sample([synthetic_image(0, (w, h))])
    inputs = encode(p, [s])
    vis = positions(sample_region_masks(p, inputs, [s]).visual[0])
    assert len(vis) == rows * cols
    for r in range(rows):
        for c in range(cols):
            x0, y0 = c * cell, r * cell
            for box in (Box(0, x0, y0, x0 + cell, y0 + cell), Box(0, x0 + cell // 2 - 1, y0 + cell // 2 - 1,
                                                                  x0 + cell // 2 + 1, y0 + cell // 2 + 1)):
                m = region_masks(p, inputs, [s.images], [[box]])
                assert positions(m.target[0]) == [vis[r * cols + c]], (family, r, c, box)
    # a box on a patch border covers the two neighbours
    m = region_masks(p, inputs, [s.images], [[Box(0, cell - 1, 0, cell + 1, 1)]])
    assert positions(m.target[0]) == [vis[0], vis[1]]


def test_tiled_box_maps_to_one_token_per_view(proc):
    """InternVL 2x2 tiles + thumbnail: a one-token box hits one token in its tile and one in the thumbnail."""
    p = proc("internvl")
    tile = p.image_processor.size.height
    n = int(round(p.image_seq_length**0.5))
    cell = tile // n
    s = sample([synthetic_image(0, (2 * tile, 2 * tile))])
    inputs = encode(p, [s])
    vis = positions(sample_region_masks(p, inputs, [s]).visual[0])
    assert len(vis) == 5 * n * n
    for y in range(0, 2 * tile, cell):
        for x in range(0, 2 * tile, cell):
            m = region_masks(p, inputs, [s.images], [[Box(0, x, y, x + cell, y + cell)]])
            t = (y // tile) * 2 + x // tile
            in_tile = ((y % tile) // cell) * n + (x % tile) // cell
            thumb = (y // (2 * cell)) * n + x // (2 * cell)  # thumbnail cells are twice as large
            assert positions(m.target[0]) == [vis[t * n * n + in_tile], vis[4 * n * n + thumb]]


def test_min_overlap_fraction(proc):
    p = proc("llava")
    (w, h), cell = identity_geometry(p, "llava")
    s = sample([synthetic_image(0, (w, h))])
    inputs = encode(p, [s])
    box = [[Box(0, 0, 0, cell + cell // 2, cell)]]  # cell (0,0) fully, cell (0,1) half
    vis = positions(sample_region_masks(p, inputs, [s]).visual[0])
    assert positions(region_masks(p, inputs, [s.images], box).target[0]) == vis[:2]
    assert positions(region_masks(p, inputs, [s.images], box, min_overlap=0.5).target[0]) == vis[:2]
    assert positions(region_masks(p, inputs, [s.images], box, min_overlap=0.6).target[0]) == vis[:1]


def test_llava_center_crop_drops_boxes_outside_the_crop(proc):
    p = proc("llava")  # 150x100 -> shortest edge 32 -> 48x32 -> center crop 32x32: x in [25, 125)
    s = sample([synthetic_image(0, (150, 100))])
    inputs = encode(p, [s])
    rects = image_token_rects(p, (150, 100), outputs=inputs)
    assert rects[:, 0].min().item() == pytest.approx(25.0) and rects[:, 2].max().item() == pytest.approx(125.0)
    assert not region_masks(p, inputs, [s.images], [[Box(0, 0, 0, 25, 100)]]).target.any()
    assert not region_masks(p, inputs, [s.images], [[Box(0, 125, 0, 150, 100)]]).target.any()
    hit = region_masks(p, inputs, [s.images], [[Box(0, 0, 0, 26, 100)]]).target[0]
    vis = positions(sample_region_masks(p, inputs, [s]).visual[0])
    assert positions(hit) == vis[0::4]  # the left column of the 4x4 grid


# --------------------------------------------------------------------------- pixels: the strong check
def unnormalize(pv, ip):
    mean = torch.tensor(ip.image_mean, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(ip.image_std, dtype=torch.float64).view(3, 1, 1)
    return pv.double() * std + mean


def patch_ramp(frame, patch):
    """(3, H, W) unnormalised frame -> (gh * gw, 2) mean (red, green) per vision patch, row-major."""
    blocks = frame[:2].unfold(1, patch, patch).unfold(2, patch, patch)  # (2, gh, gw, p, p)
    return blocks.mean((-1, -2)).permute(1, 2, 0).reshape(-1, 2).contiguous()


def qwen2_token_means(mdl, ip, pv, grid_thw, channels):
    """Qwen2-VL / 2.5-VL: per image (or video) of ``grid_thw``, the (n_tokens, channels) mean of the first
    ``channels`` colour channels each LM token sees: patch rows ``(3, tp, p, p)`` of ``pv`` averaged, then
    the model's own merger (norm and MLP removed: it concatenates ``merge_size**2`` consecutive rows)."""
    merger = copy.deepcopy(mdl.model.visual.merger)
    merger.ln_q, merger.mlp = nn.Identity(), nn.Identity()
    C = merger.hidden_size // ip.merge_size**2
    mean = torch.tensor(ip.image_mean, dtype=torch.float64).view(1, 3, 1, 1, 1)
    std = torch.tensor(ip.image_std, dtype=torch.float64).view(1, 3, 1, 1, 1)
    out, start = [], 0
    for t, gh, gw in grid_thw.tolist():
        rows = pv[start:start + t * gh * gw].view(-1, 3, ip.temporal_patch_size, ip.patch_size, ip.patch_size)
        start += t * gh * gw
        x = torch.zeros(len(rows), C, dtype=torch.float64)
        x[:, :channels] = (rows.double() * std + mean)[:, :channels].mean((2, 3, 4))
        out.append(merger.double()(x).view(-1, ip.merge_size**2, C)[..., :channels].mean(1))
    return out


def qwen3_token_means(mdl, ip, pv, grid_thw, channels):
    """Qwen3-VL: as :func:`qwen2_token_means`, through the model's own patch embedding (its Conv3d set to
    average each input channel over its ``(tp, p, p)`` kernel) and its merger without norm and MLP."""
    embed = copy.deepcopy(mdl.model.visual.patch_embed).double()
    with torch.no_grad():
        embed.proj.weight.zero_()
        embed.proj.bias.zero_()
        for ch in range(3):
            embed.proj.weight[ch, ch] = 1.0 / embed.proj.weight[ch, ch].numel()
    merger = copy.deepcopy(mdl.model.visual.merger).double()
    merger.norm = merger.linear_fc1 = merger.act_fn = merger.linear_fc2 = nn.Identity()
    C, m2 = embed.embed_dim, mdl.config.vision_config.spatial_merge_size**2
    mean = torch.tensor(ip.image_mean[:channels], dtype=torch.float64)
    std = torch.tensor(ip.image_std[:channels], dtype=torch.float64)
    out, start = [], 0
    for t, gh, gw in grid_thw.tolist():
        with torch.no_grad():
            x = embed(pv[start:start + t * gh * gw].double())  # (n_patches, C): channel means, normalised
        start += t * gh * gw
        x[:, :channels] = x[:, :channels] * std + mean
        out.append(merger(x).view(-1, m2, C)[..., :channels].mean(1))
    return out


def glm_ramp_tower(mdl, ip):
    """A copy of GLM-4.1V's vision tower whose forward only groups: patch rows -> their (red, green, blue)
    mean (unnormalised with ``ip``'s mean / std), padded to the tower width; blocks, norms, merger the
    identity; the downsample conv an average over each ``merge_size x merge_size`` block."""
    vis = copy.deepcopy(mdl.model.visual).double()
    width = mdl.config.vision_config.hidden_size
    chans = 3 * ip.temporal_patch_size * ip.patch_size**2

    class Ramp(nn.Module):
        def forward(self, x):
            x = x.view(-1, 3, chans // 3)
            mean = torch.tensor(ip.image_mean, dtype=torch.float64).view(1, 3, 1)
            std = torch.tensor(ip.image_std, dtype=torch.float64).view(1, 3, 1)
            out = torch.zeros(len(x), width, dtype=torch.float64)
            out[:, :3] = (x.double() * std + mean).mean(-1)
            return out

    class Keep(nn.Module):
        def forward(self, x, *args, **kwargs):
            return x

    vis.patch_embed, vis.post_conv_layernorm, vis.post_layernorm, vis.merger = Ramp(), Keep(), Keep(), Keep()
    vis.embeddings = Keep()
    vis.blocks = nn.ModuleList([Keep() for _ in vis.blocks])
    with torch.no_grad():
        vis.downsample.weight.zero_()
        vis.downsample.bias.zero_()
        for c in range(3):
            vis.downsample.weight[c, c] = 1.0 / ip.merge_size**2
    return vis


def model_token_ramps(family, mdl, p, inputs):
    """Per row, the (n_visual, 2) ramp values each visual token sees, in LM order, via the model's own code."""
    ip, ids = p.image_processor, inputs["input_ids"]
    counts = (ids == region_rule(family_of(family)).image_token(p)).sum(1).tolist()
    pv, out = inputs["pixel_values"], []
    vcfg = mdl.config.vision_config
    patch = vcfg.patch_size[0] if isinstance(vcfg.patch_size, (list, tuple)) else vcfg.patch_size
    if family in ("llava", "paligemma"):
        for b in range(len(ids)):  # one image per row; CLIP / SigLIP patches row-major (LLaVA: CLS dropped)
            out.append(patch_ramp(unnormalize(pv[b], ip), patch))
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        out = qwen2_token_means(mdl, ip, pv, inputs["image_grid_thw"], 2)
    elif family in ("qwen3_vl", "qwen3_vl_moe"):
        out = qwen3_token_means(mdl, ip, pv, inputs["image_grid_thw"], 2)
    elif family in ("idefics3", "smolvlm"):
        scale = mdl.model.connector.scale_factor
        for b in range(len(ids)):
            toks = []
            for f in range(pv.shape[1]):
                if not inputs["pixel_attention_mask"][b, f].any():
                    continue  # padding frame, dropped by the model
                ramp = patch_ramp(unnormalize(pv[b, f], ip), patch)[None]
                shuffled = mdl.model.connector.pixel_shuffle(ramp, scale)  # (1, n, 2 * s^2)
                toks.append(shuffled[0].view(shuffled.shape[1], scale**2, 2).mean(1))
            out.append(torch.cat(toks))
    elif family in ("internvl", "internvl3_5"):
        start = 0
        for b in range(len(ids)):
            k = counts[b] // p.image_seq_length
            toks = []
            for f in range(start, start + k):
                ramp = patch_ramp(unnormalize(pv[f], ip), patch)
                side = int(round(len(ramp) ** 0.5))
                sh = mdl.model.pixel_shuffle(ramp.view(1, side, side, 2), mdl.config.downsample_ratio)
                toks.append(sh.reshape(-1, 4, 2).mean(1))
            start += k
            out.append(torch.cat(toks))
    elif family == "gemma3":
        proj = copy.deepcopy(mdl.model.multi_modal_projector).double()
        proj.mm_soft_emb_norm = nn.Identity()
        with torch.no_grad():
            proj.mm_input_projection_weight.copy_(torch.eye(*proj.mm_input_projection_weight.shape))
        start = 0
        for b in range(len(ids)):
            k = counts[b] // p.image_seq_length
            toks = []
            for f in range(start, start + k):
                ramp = patch_ramp(unnormalize(pv[f], ip), patch)
                x = torch.zeros(1, len(ramp), vcfg.hidden_size, dtype=torch.float64)
                x[0, :, :2] = ramp
                toks.append(proj(x)[0, :, :2])
            start += k
            out.append(torch.cat(toks))
    elif family in ("glm4v", "glm4v_moe"):
        # the vision tower's own forward (patchify layout -> view / permute -> downsample conv -> merger),
        # with everything that is not grouping made the identity and the conv an average over each block
        vis = glm_ramp_tower(mdl, ip)
        with torch.no_grad():
            merged = vis(pv.double(), grid_thw=inputs["image_grid_thw"]).pooler_output[:, :2]
        chunks = list(torch.split(merged, (inputs["image_grid_thw"].prod(-1) // ip.merge_size**2).tolist()))
        for b in range(len(ids)):  # each row takes its images' tokens, in processor order
            row = []
            while sum(map(len, row)) < counts[b]:
                row.append(chunks.pop(0))
            out.append(torch.cat(row))
    elif family in ANYRES:
        # every frame's patch ramps, packed by the model's own pack_image_features (tile grid layout,
        # unpad_image, OneVision's downsampling); a NaN image_newline marks where the model puts newlines.
        # As in the model, the images' tokens fill the batch's image positions in order.
        import sys

        modeling = sys.modules[type(mdl).__module__]
        cfg, nl = mdl.config, torch.full((2,), float("nan"), dtype=torch.float64)
        per_sample = inputs.get("batch_num_images")
        tiled = ([True] * len(pv) if per_sample is None or family not in MULTI_IMAGE_LAYOUT
                 else [int(n) == 1 for n in per_sample for _ in range(int(n))])  # get_image_features' need_patching
        toks = []
        for i, size in enumerate(inputs["image_sizes"]):
            n = modeling.image_size_to_num_patches(size, cfg.image_grid_pinpoints, vcfg.image_size) if tiled[i] else 1
            feat = torch.stack([patch_ramp(unnormalize(f, ip), patch) for f in pv[i, :n]])
            if family == "llava_onevision":
                packed, _ = mdl.model.pack_image_features([feat], size[None], image_newline=nl,
                                                          vision_aspect_ratio=p.vision_aspect_ratio)
            else:
                packed, _ = mdl.model.pack_image_features([feat], size[None], cfg.vision_feature_select_strategy,
                                                          image_newline=nl)
            toks.append(packed[0])
        out = list(torch.cat(toks).split(counts))
    elif family == "idefics2":
        # Perceiver latents: a latent sees the mean ramp of the vision patches its cross-attention may read,
        # as the model's own code decides (dropped padding frames, whole-patch mask, perceiver mask), read off
        # the first perceiver layer's eager attention weights (> 0 = readable); the last n_latents keys are
        # the latents themselves.
        enc = copy.deepcopy(mdl.model)
        enc.set_attn_implementation({"perceiver_config": "eager"})
        weights = []
        hook = enc.connector.perceiver_resampler.layers[0].self_attn.register_forward_hook(
            lambda mod, args, o: weights.append(o[1]))
        with torch.no_grad():
            enc.get_image_features(pv, inputs["pixel_attention_mask"])
        hook.remove()
        n_lat = mdl.config.perceiver_config.resampler_n_latents
        readable = (weights[0][:, 0, :, :-n_lat] > 0).double()  # (real frames, latents, patches)
        real = [(b, f) for b in range(len(ids)) for f in range(pv.shape[1])
                if inputs["pixel_attention_mask"][b, f].any()]
        assert len(real) == len(readable)
        toks = [[] for _ in ids]
        for (b, f), r in zip(real, readable):
            ramp = patch_ramp(unnormalize(pv[b, f], ip), patch)
            toks[b].append((r @ ramp) / r.sum(1, keepdim=True))
        out = [torch.cat(t) for t in toks]
    for b, t in enumerate(out):
        assert len(t) == counts[b], (family, b, len(t), counts[b])
    return out


PIXEL_CASES = [(fam, None, {}) for fam in VLM_FAMILIES] + [
    ("idefics3", "split", {}),
    ("llava", "pad", {}),
    ("gemma3", None, dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=16, pan_and_scan_max_num_crops=3,
                          pan_and_scan_min_ratio_to_activate=1.2)),
    ("llava_onevision", "max1", {}),
]
#: Extra ramp-image sizes (w, h) per family, after the shared wide / tall / very wide three.
RAMP_SIZES = {
    # square (OneVision: 6x6 grid downsampled to 5x5), small (one-tile canvas, upscaled), very tall, and two
    # whose unpadded grid keeps token columns partly over the canvas padding
    "llava_next": [(150, 150), (20, 14), (60, 200), (66, 73), (73, 154)],
    "llava_onevision": [(150, 150), (20, 14), (60, 200), (66, 73), (73, 154)],
}


def clipped_ramp(r, w, h, fill):
    """The mean ramp a patch over ``r`` sees when the part of it outside the ``w x h`` image is ``fill``."""
    c = torch.stack([r[:, 0].clamp(0, w), r[:, 1].clamp(0, h), r[:, 2].clamp(0, w), r[:, 3].clamp(0, h)], 1)
    frac = ((c[:, 2] - c[:, 0]).clamp(min=0) * (c[:, 3] - c[:, 1]).clamp(min=0)
            / ((r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])))[:, None]
    centre = torch.stack([(c[:, 0] + c[:, 2]) / (2 * w), (c[:, 1] + c[:, 3]) / (2 * h)], 1)
    return frac * centre + (1 - frac) * fill


def anyres_checked(r, ref, w, h):
    """Anyres rows: the newline tokens must sit exactly where the model's packing put its newline (NaN in
    ``ref``); tokens whose patch lies partly on the black canvas padding (kept by the token-unit unpadding)
    see the ramp times the part of the patch inside the image. Returns the tokens wholly inside the image."""
    newline = torch.isnan(ref).any(1)
    assert newline.any() and torch.equal(torch.isnan(r).any(1), newline)
    r, ref = r[~newline], ref[~newline]
    tol = 1e-6
    inside = (r[:, 0] >= -tol) & (r[:, 1] >= -tol) & (r[:, 2] <= w + tol) & (r[:, 3] <= h + tol)
    border = ~inside
    extent = torch.stack([(r[:, 2] - r[:, 0]) / w, (r[:, 3] - r[:, 1]) / h], dim=1)
    seen = clipped_ramp(r[border], w, h, torch.zeros(2, dtype=torch.float64))
    assert ((ref[border] - seen).abs() <= 0.1 * extent[border] + 0.02).all()
    return r[inside], ref[inside]


@pytest.mark.parametrize("family,variant,images_kwargs", PIXEL_CASES)
def test_tokens_see_their_pixels(proc, model, family, variant, images_kwargs):
    p = variant_processor(proc, family, variant)
    sizes = [(150, 100), (90, 130), (224, 70)] + RAMP_SIZES.get(family, [])
    samples = [sample([ramp_image(*wh)], "q" * (i + 1)) for i, wh in enumerate(sizes)]
    inputs = encode_kw(p, samples, **images_kwargs)
    ref = model_token_ramps(family, model(family), p, inputs)
    tr = token_rects(p, inputs, [s.images for s in samples], images_kwargs=images_kwargs)
    image_ids = inputs["input_ids"] == region_rule(family_of(family)).image_token(p)
    if images_kwargs.get("do_pan_and_scan"):  # the crops really happened for the wide/tall images
        assert image_ids[2].sum() > p.image_seq_length
    for b, (w, h) in enumerate(sizes):
        r = tr.rects[b, image_ids[b]]
        if family in ANYRES:
            r, ref[b] = anyres_checked(r, ref[b], w, h)
        assert not torch.isnan(r).any()
        if variant == "pad":  # tokens over the square padding see the fill colour (image_mean), not the ramp
            inside = (r[:, 0] >= -1e-9) & (r[:, 1] >= -1e-9) & (r[:, 2] <= w + 1e-9) & (r[:, 3] <= h + 1e-9)
            outside = (r[:, 2] <= 1e-9) | (r[:, 3] <= 1e-9) | (r[:, 0] >= w - 1e-9) | (r[:, 1] >= h - 1e-9)
            assert (~inside).any() and (inside.any() or b == 2)
            fill = torch.tensor(p.image_processor.image_mean[:2], dtype=torch.float64)
            assert torch.allclose(ref[b][outside], fill.expand(int(outside.sum()), 2), atol=0.01)
            if b == 2:  # 224x70: whole token rows lie in the padding; even a whole-image box skips them
                assert outside.any()
                m = region_masks(p, inputs, [s.images for s in samples], [[], [], [Box(0, 0, 0, w, h)]])
                assert int(m.target[2].sum()) == int((~outside).sum())
            r, ref[b] = r[inside], ref[b][inside]
            if not len(r):
                continue
        centre = torch.stack([(r[:, 0] + r[:, 2]) / (2 * w), (r[:, 1] + r[:, 3]) / (2 * h)], dim=1)
        extent = torch.stack([(r[:, 2] - r[:, 0]) / w, (r[:, 3] - r[:, 1]) / h], dim=1)
        err = (ref[b] - centre).abs()
        # the ramp seen by the token is its patch centre, to a small fraction of the patch
        assert (err <= 0.1 * extent + 0.01).all(), (family, b, err.max(0).values, extent.min(0).values)
        # ...and no other token's patch centre is clearly closer (order check; near-ties: overlapping views)
        d = torch.cdist(ref[b], centre)
        own = d.diagonal()
        assert (own <= d.min(1).values + 0.005).all()


# --------------------------------------------------------------------------- batches and multiple images
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_multi_image_boxes_map_to_their_own_image_only(proc, family):
    p = proc(family)
    im0, im1 = synthetic_image(0, (150, 100)), synthetic_image(1, (90, 130))
    box1 = Box(1, 45, 65, 90, 130)  # bottom-right quarter of image 1
    two = sample([im0, im1], boxes=[box1])
    inputs = encode(p, [two])
    m = sample_region_masks(p, inputs, [two])
    vis = positions(m.visual[0])
    # independent split of the visual tokens: image 0's count, from the processor on image 0 alone
    # (or, where a multi-image prompt changes the layout, on image 0 twice)
    twice = family in MULTI_IMAGE_LAYOUT
    n0 = int(encode(p, [sample([im0] * (1 + twice))])["input_ids"].eq(region_rule(family_of(family)).image_token(p)).sum())
    n0 //= 1 + twice
    first, second = vis[:n0], vis[n0:]
    assert len(first) > 0 and len(second) > 0
    tgt = positions(m.target[0])
    assert tgt and set(tgt) <= set(second)
    # same selection (by order within the image) as for image 1 alone with the same box
    one = sample([im1] * (1 + twice), boxes=[Box(int(twice), 45, 65, 90, 130)])
    inputs1 = encode(p, [one])
    m1 = sample_region_masks(p, inputs1, [one])
    sel1 = m1.target[0][m1.visual[0]]
    sel1 = sel1[len(sel1) // 2:] if twice else sel1
    assert torch.equal(m.target[0, second], sel1)
    assert 0 < int(sel1.sum()) < len(second)
    # boxes on both images: union of the two
    both = sample([im0, im1], boxes=[Box(0, 0, 0, 75, 50), box1])
    mb = sample_region_masks(p, inputs, [both])
    assert set(positions(mb.target[0])) > set(tgt)
    assert set(positions(mb.target[0])) - set(tgt) <= set(first)


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_batch_matches_single_samples(proc, family, padding_side):
    p = proc(family)
    samples = [
        sample([synthetic_image(0, (150, 100))], "Short?", boxes=[Box(0, 10, 10, 60, 40)]),
        sample([synthetic_image(2, (90, 130))], "A much longer question about the picture, with many words?",
               boxes=[Box(0, 50, 80, 90, 130)]),
    ]
    batch = encode(p, samples, padding_side=padding_side)
    m = sample_region_masks(p, batch, samples)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] != lengths[1]
    for b, s in enumerate(samples):
        single = sample_region_masks(p, encode(p, [s]), [s])
        real = batch["attention_mask"][b].bool()
        assert torch.equal(m.target[b][real], single.target[0])
        assert torch.equal(m.visual[b][real], single.visual[0])
        assert not (m.target[b] & ~real).any()
        assert 0 < int(single.target.sum()) < int(single.visual.sum())


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_grid_needle_boxes_are_a_strict_subset(proc, family):
    p = proc(family)
    samples = generate("grid_needle", 4, grid=4, image_size=448)
    inputs = encode(p, samples)
    m = sample_region_masks(p, inputs, samples)
    assert not (m.target & ~m.visual).any()
    for b in range(len(samples)):
        assert 0 < int(m.target[b].sum()) < int(m.visual[b].sum())


# --------------------------------------------------------------------------- token counts vs the processor
@pytest.mark.parametrize("family,attrs", [
    ("idefics3", dict(do_image_splitting=True, size={"longest_edge": 192})),
    # a longest edge that is not a multiple of the tile: Idefics3's get_number_of_image_patches
    # disagrees with its own preprocessing here; the mapping must follow the preprocessing
    ("idefics3", dict(do_image_splitting=True, size={"longest_edge": 160})),
    ("internvl", {}),
    ("qwen2_vl", {}),
    ("llava", {}),
    ("gemma3", {}),
    ("glm4v", {}),
    ("llava_next", {}),
    ("llava_onevision", {}),
    # up to 3x3 tiles (OneVision: 9x9 grids downsampled) and a one-tile canvas
    ("llava_next", dict(image_grid_pinpoints=[[24, 24], [24, 72], [72, 24], [48, 48], [48, 72], [72, 72]])),
    ("llava_onevision", dict(image_grid_pinpoints=[[24, 24], [24, 72], [72, 24], [48, 48], [48, 72], [72, 72]])),
    ("smolvlm", {}),
    ("idefics2", dict(do_image_splitting=False)),  # with splitting, Idefics2's processor fails on 1x1 images
])
def test_token_counts_follow_the_processor_for_many_sizes(proc, family, attrs):
    p = proc(family, **attrs) if attrs else proc(family)
    sizes = [(1, 1), (17, 300), (300, 17), (64, 64), (65, 63), (128, 96), (200, 150), (333, 111), (96, 128),
             (400, 300), (129, 257)]
    samples = [sample([Image.new("RGB", wh)]) for wh in sizes]
    inputs = encode(p, samples)
    tr = token_rects(p, inputs, [s.images for s in samples])  # raises on any count mismatch
    assert torch.equal(tr.image >= 0, inputs["input_ids"] == region_rule(family_of(family)).image_token(p))
    if family == "qwen2_vl":  # without image_grid_thw the mapping recomputes smart_resize
        for i, wh in enumerate(sizes):
            n = len(image_token_rects(p, wh))
            t, gh, gw = inputs["image_grid_thw"][i].tolist()
            assert n == t * gh * gw // p.image_processor.merge_size**2


def test_all_registered_rules_are_documented():
    rules = [f.region for f in registered_families().values() if f.region is not None]
    assert len(rules) >= len({family_of(f) for f in VLM_FAMILIES})
    for rule in rules:
        assert rule.summary and rule.token_rects.__doc__


def test_smolvlm_uses_the_idefics3_layout(proc):
    """The real tiny SmolVLM (SmolVLMProcessor + SmolVLMImageProcessor, splitting on) under the smolvlm rule,
    which is Idefics3's: 3x3 / 3x2 tiles + global image, box -> its tiles + the global image."""
    p = proc("smolvlm")
    assert type(p).__name__ == "SmolVLMProcessor" and type(p.image_processor).__name__ == "SmolVLMImageProcessor"
    assert region_rule("smolvlm") is region_rule("idefics3")
    samples = generate("grid_needle", 2, grid=4, image_size=448) + [sample([synthetic_image(0, (150, 100))])]
    inputs = encode(p, samples)
    m = sample_region_masks(p, inputs, samples)
    assert m.visual[0].sum() == 10 * p.image_seq_len  # 3x3 tiles + global
    assert m.visual[2].sum() == 7 * p.image_seq_len  # 3x2 tiles + global
    assert torch.equal(m.target[2], m.visual[2])
    for b in range(2):
        assert 0 < int(m.target[b].sum()) < int(m.visual[b].sum())
