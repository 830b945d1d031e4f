"""Video region -> token mapping (``RegionRule.video_rects``), checked against each video family's own code.

The oracle (``test_video_tokens_see_their_frames_and_pixels``) paints a coordinate ramp into every frame
(red = x / W, green = y / H) and a per-frame marker (blue = 1 on frame ``m`` only, one processor run per
``m``), takes the processor's own ``pixel_values_videos`` (InternVL: its frames in ``pixel_values``) and
groups them into LM tokens with the *model's own* patch embedding / merger / pooling / pixel shuffle. A
token's blue value in run ``m`` is the share of frame ``m`` in what it sees, so the frames a token covers
(two per temporal patch in Qwen and GLM, the last frame twice when the processor pads an odd count) and
its pixels are read off the model, not re-derived; the mapping must claim exactly them.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from core_eval.adapters import adapter_for, registered_families
from core_eval.adapters.regions import (
    RegionMappingError, batch_video_rects, region_masks, sample_region_masks, token_rects, video_rule,
    video_token_rects,
)
from core_eval.probes import Box, ProbeSample, Video
from core_eval.prompting import encode
from core_eval.testing import VLM_FAMILIES, synthetic_image
from core_eval.testing.tiny_models import recipes
from test_regions import glm_ramp_tower, qwen2_token_means, qwen3_token_means

#: The tiny families whose rule maps videos (every family whose processor takes video).
VIDEO_FAMILIES = tuple(f for f in VLM_FAMILIES if recipes()[f][0].region.video_rects is not None)
QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
GLM = ("glm4v", "glm4v_moe")


def ramp_frame(w, h, marker: float) -> Image.Image:
    """Red = (x + .5) / W, green = (y + .5) / H, blue = ``marker`` (0 or 1), scaled to 0..255."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = np.round(255 * (np.arange(w) + 0.5) / w)[None, :]
    img[..., 1] = np.round(255 * (np.arange(h) + 0.5) / h)[:, None]
    img[..., 2] = round(255 * marker)
    return Image.fromarray(img)


def video_sample(video, question="What happens?", boxes=(), images=()):
    return ProbeSample(id="v", images=list(images), videos=[video], question=question, answer="x", boxes=list(boxes))


def marked_video(n, size, m, fps=2.0):
    return Video([ramp_frame(*size, 1.0 if k == m else 0.0) for k in range(n)], fps=fps)


def positions(mask_row):
    return mask_row.nonzero().flatten().tolist()


# --------------------------------------------------------------------------- the model's own grouping
def unnormalize(x, vp, dim):
    shape = [1] * x.dim()
    shape[dim] = 3
    mean = torch.tensor(vp.image_mean, dtype=torch.float64).view(shape)
    std = torch.tensor(vp.image_std, dtype=torch.float64).view(shape)
    return x.double() * std + mean


def patch_means(frame, patch):
    """(3, H, W) unnormalised frame -> (gh * gw, 3) mean (red, green, blue) per vision patch, row-major."""
    blocks = frame.unfold(1, patch, patch).unfold(2, patch, patch)  # (3, gh, gw, p, p)
    return blocks.mean((-1, -2)).permute(1, 2, 0).reshape(-1, 3).contiguous()


def model_video_ramps(family, mdl, p, inputs) -> list[torch.Tensor]:
    """Per video of the batch (processor order), the (n_tokens, 3) (red, green, blue) each of its LM video
    tokens sees, via the model's own code; NaN rows where the model puts a no-patch token (newline).
    ``family``: a tiny model's name (its family says which code groups the patches)."""
    family = recipes()[family][0].name
    vp = p.video_processor
    vcfg = mdl.config.vision_config
    patch = vcfg.patch_size[0] if isinstance(vcfg.patch_size, (list, tuple)) else vcfg.patch_size
    out = []
    if family in ("qwen2_vl", "qwen2_5_vl"):
        out = qwen2_token_means(mdl, vp, inputs["pixel_values_videos"], inputs["video_grid_thw"], 3)
    elif family in ("qwen3_vl", "qwen3_vl_moe"):
        out = qwen3_token_means(mdl, vp, inputs["pixel_values_videos"], inputs["video_grid_thw"], 3)
    elif family in GLM:
        # the model's own get_video_features (per temporal patch a (1, h, w) image through its vision tower),
        # on a tower whose non-grouping parts are the identity and whose downsample conv averages each block
        vis = glm_ramp_tower(mdl, vp)
        original = mdl.model.visual
        mdl.model.visual = vis
        try:
            with torch.no_grad():
                feats = mdl.model.get_video_features(inputs["pixel_values_videos"],
                                                     video_grid_thw=inputs["video_grid_thw"]).pooler_output
        finally:
            mdl.model.visual = original
        out = [f[:, :3] for f in feats]
    elif family == "llava_onevision":
        # per frame the SigLIP patch grid, then the model's own apply_pooling; one newline ends each video
        for video in inputs["pixel_values_videos"]:
            feat = torch.stack([patch_means(unnormalize(f, vp, 0), patch) for f in video])
            pooled = mdl.model.apply_pooling(feat)
            out.append(torch.cat([pooled.reshape(-1, 3), torch.full((1, 3), float("nan"), dtype=torch.float64)]))
    elif family == "internvl":
        # the frames are tiles in pixel_values (a video-only batch: all of them), each through the model's
        # pixel shuffle; split per video by split_per_video
        frames = []
        for f in inputs["pixel_values"]:
            side = f.shape[-1] // patch
            ramp = patch_means(unnormalize(f, vp, 0), patch).view(1, side, side, 3)
            frames.append(mdl.model.pixel_shuffle(ramp, mdl.config.downsample_ratio).reshape(-1, 4, 3).mean(1))
        out.append(torch.cat(frames))
    else:
        raise AssertionError(family)
    return out


def split_per_video(family, p, inputs, samples, ramps):
    """InternVL's pixel_values carry no per-video split: cut its frames by each video's frame count."""
    if recipes()[family][0].name != "internvl":
        return ramps
    flat = ramps[0]
    per = p.image_seq_length
    out, start = [], 0
    for s in samples:
        for v in s.videos:
            out.append(flat[start:start + per * len(v.frames)])
            start += per * len(v.frames)
    assert start == len(flat)
    return out


# --------------------------------------------------------------------------- the oracle check
ORACLE_CASES = [(f, sizes, n) for f in VIDEO_FAMILIES
                for sizes, n in ((((112, 84), (90, 130)), 8), (((150, 100),), 7), (((84, 112),), 5))]


@pytest.mark.parametrize("family,sizes,n_frames", ORACLE_CASES)
def test_video_tokens_see_their_frames_and_pixels(tiny_loaded, family, sizes, n_frames):
    mdl, p, _ = tiny_loaded(family)
    weights, ramp0, vt, vis = None, None, None, None
    for m in range(n_frames):  # one run per marked frame
        samples = [video_sample(marked_video(n_frames, wh, m), "q" * (i + 1)) for i, wh in enumerate(sizes)]
        inputs = encode(p, samples)
        per_video = split_per_video(family, p, inputs, samples, model_video_ramps(family, mdl, p, inputs))
        if vt is None:
            vt = batch_video_rects(p, inputs, [s.videos for s in samples])
            vis = [vt.video[b] >= 0 for b in range(len(samples))]
            assert [int(v.sum()) for v in vis] == [len(r) for r in per_video]
            weights = [torch.zeros(len(r), n_frames, dtype=torch.float64) for r in per_video]
            ramp0 = per_video
        for b, r in enumerate(per_video):
            weights[b][:, m] = r[:, 2]
    for b, (w, h) in enumerate(sizes):
        rects, frames = vt.rects[b][vis[b]], vt.frames[b][vis[b]]
        nopatch = torch.isnan(ramp0[b]).any(1)
        assert torch.equal(torch.isnan(rects).any(1), nopatch) and torch.equal(torch.isnan(frames).any(1), nopatch)
        if family == "llava_onevision":  # exactly one newline, at the end of the video
            assert positions(nopatch) == [len(nopatch) - 1]
        rects, frames, W, ramp = rects[~nopatch], frames[~nopatch], weights[b][~nopatch], ramp0[b][~nopatch]
        # frames: the share of frame k in the token is 1 / (f1 - f0) on its claimed range, 0 elsewhere
        k = torch.arange(n_frames, dtype=torch.float64)[None, :]
        inside = (frames[:, :1] <= k) & (k < frames[:, 1:])
        want = inside / (frames[:, 1:] - frames[:, :1])
        assert (W - want).abs().max() < 0.02, (family, b, (W - want).abs().max())
        assert W.sum(1).sub(1).abs().max() < 0.02  # every token sees real frames only
        # pixels: the ramp the token sees is the centre of its claimed rectangle
        centre = torch.stack([(rects[:, 0] + rects[:, 2]) / (2 * w), (rects[:, 1] + rects[:, 3]) / (2 * h)], 1)
        extent = torch.stack([(rects[:, 2] - rects[:, 0]) / w, (rects[:, 3] - rects[:, 1]) / h], 1)
        err = (ramp[:, :2] - centre).abs()
        assert (err <= 0.1 * extent + 0.01).all(), (family, b, err.max(0).values)
        for f0 in frames[:, 0].unique():  # and, within a frame group, no other token's centre is closer
            g = frames[:, 0] == f0
            d = torch.cdist(ramp[g, :2], centre[g])
            assert (d.diagonal() <= d.min(1).values + 0.005).all()
    if recipes()[family][0].name in QWEN + GLM and n_frames % 2:  # the odd frame count was padded by the processor, not by us
        assert inputs["video_grid_thw"][0, 0].item() == (n_frames + 1) // 2


# --------------------------------------------------------------------------- boxes on frames
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_a_box_on_one_frame_cell_maps_to_exactly_its_token(tiny_loaded, family):
    """A 2 px box at the centre of each video token's cell, on the first frame it covers, hits that token
    only; a whole-frame box on frame k hits exactly the tokens whose frame range holds k."""
    _, p, _ = tiny_loaded(family)
    video = Video([synthetic_image(k, (112, 84)) for k in range(5)], fps=1.0)
    s = video_sample(video)
    inputs = encode(p, [s])
    vt = batch_video_rects(p, inputs, [[video]])
    ok = (vt.video[0] >= 0) & ~torch.isnan(vt.rects[0]).any(1)
    for t in positions(ok):
        x0, y0, x1, y1 = vt.rects[0, t].tolist()
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = Box(0, cx - 1, cy - 1, cx + 1, cy + 1, frame=int(vt.frames[0, t, 0]))
        m = region_masks(p, inputs, [[]], [[box]], videos=[[video]])
        assert positions(m.target[0]) == [t], (family, t)
    for k in range(5):
        m = region_masks(p, inputs, [[]], [[Box(0, 0, 0, 112, 84, frame=k)]], videos=[[video]])
        f = vt.frames[0]
        assert torch.equal(m.target[0], ok & (f[:, 0] <= k) & (k < f[:, 1]))


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_whole_video_and_visual_mask(tiny_loaded, family):
    """No boxes = every frame: all video tokens with a patch are targets; the region's visual mask, the
    model adapter's (what RAM and visual_knockout use) and the video-token positions agree."""
    mdl, p, _ = tiny_loaded(family)
    video = Video([synthetic_image(k, (112, 84)) for k in range(6)], fps=3.0)
    samples = [video_sample(video), video_sample(Video(video.frames, fps=3.0), "A longer question than that?")]
    inputs = encode(p, samples)
    m = sample_region_masks(p, inputs, samples)
    vt = batch_video_rects(p, inputs, [s.videos for s in samples])
    is_video = vt.video >= 0
    assert is_video.sum() > 0
    assert torch.equal(m.visual, is_video)
    assert torch.equal(adapter_for(mdl).visual_mask(inputs["input_ids"]), is_video)
    assert torch.equal(m.target, is_video & ~torch.isnan(vt.rects).any(-1))
    # padded batch rows equal the single samples
    for b, s in enumerate(samples):
        single = sample_region_masks(p, encode(p, [s]), [s])
        real = inputs["attention_mask"][b].bool()
        assert torch.equal(m.target[b][real], single.target[0])


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_token_rects_of_one_video_match_the_batch(tiny_loaded, family):
    _, p, _ = tiny_loaded(family)
    video = Video([synthetic_image(k, (90, 130)) for k in range(4)], fps=1.0)
    inputs = encode(p, [video_sample(video)])
    vt = batch_video_rects(p, inputs, [[video]])
    one = video_token_rects(p, video, outputs=inputs)
    sel = vt.video[0] >= 0
    torch.testing.assert_close(torch.cat([vt.frames[0][sel], vt.rects[0][sel]], 1), one, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(video_token_rects(p, (4, 90, 130), outputs=inputs), one, equal_nan=True, rtol=0, atol=0)


# --------------------------------------------------------------------------- images and videos together
MIXED = [f for f in VIDEO_FAMILIES if recipes()[f][0].region.videos_with_images]


@pytest.mark.parametrize("family", MIXED)
def test_image_and_video_boxes_map_to_their_own_media(tiny_loaded, family):
    """One prompt with an image then a video: an image box hits image tokens only, a frame box video tokens
    only, and each selection equals the one of the image / the video alone."""
    mdl, p, _ = tiny_loaded(family)
    image = synthetic_image(0, (112, 84))
    video = Video([synthetic_image(k + 1, (112, 84)) for k in range(4)], fps=1.0)
    ibox, vbox = Box(0, 0, 0, 40, 30), Box(0, 60, 40, 112, 84, frame=2)
    both = video_sample(video, boxes=[ibox, vbox], images=[image])
    inputs = encode(p, [both])
    with torch.no_grad():
        mdl(**inputs)  # the model takes this prompt
    tr = token_rects(p, inputs, [[image]], videos=[[video]])
    vt = batch_video_rects(p, inputs, [[video]], images=[[image]])
    assert not ((tr.image[0] >= 0) & (vt.video[0] >= 0)).any()
    m_img = sample_region_masks(p, inputs, [video_sample(video, boxes=[ibox], images=[image])])
    m_vid = sample_region_masks(p, inputs, [video_sample(video, boxes=[vbox], images=[image])])
    assert positions(m_img.target[0]) and set(positions(m_img.target[0])) <= set(positions(tr.image[0] >= 0))
    assert positions(m_vid.target[0]) and set(positions(m_vid.target[0])) <= set(positions(vt.video[0] >= 0))
    assert torch.equal(sample_region_masks(p, inputs, [both]).target, m_img.target | m_vid.target)
    alone = video_sample(video, boxes=[vbox])
    a_in = encode(p, [alone])
    a_m = sample_region_masks(p, a_in, [alone])
    a_sel = a_m.target[0][batch_video_rects(p, a_in, [[video]]).video[0] >= 0]
    assert torch.equal(m_vid.target[0][vt.video[0] >= 0], a_sel)


@pytest.mark.parametrize("family", [f for f in VIDEO_FAMILIES if f not in MIXED])
def test_families_that_cannot_mix_images_and_videos_refuse(tiny_loaded, family):
    """GLM-4.1V fills every image-token position with video features: its own forward breaks on a mixed
    prompt, and the mapping refuses it with the reason."""
    mdl, p, _ = tiny_loaded(family)
    image = synthetic_image(0, (112, 84))
    video = Video([synthetic_image(k + 1, (112, 84)) for k in range(4)], fps=1.0)
    both = video_sample(video, images=[image])
    inputs = encode(p, [both])
    with pytest.raises(ValueError, match="features and image tokens do not match"), torch.no_grad():
        mdl(**inputs)
    with pytest.raises(RegionMappingError, match="holds images and videos together"):
        sample_region_masks(p, inputs, [both])


# --------------------------------------------------------------------------- errors
def test_families_without_a_video_rule_say_so(tiny_loaded):
    _, p, _ = tiny_loaded("llava")
    assert registered_families()["llava"].region.video_rects is None
    with pytest.raises(RegionMappingError, match="'llava' has no video-to-token mapping.*Families with one: .*qwen2_vl"):
        video_rule("llava")
    s = video_sample(Video([synthetic_image(0)], fps=1.0))
    with pytest.raises(ValueError, match="has a video, but this LlavaProcessor .*llava.* has no video processor"):
        encode(p, [s])


def test_resampled_frames_are_detected(tiny_loaded):
    """The mapping counts the frames it was given; a processor that resampled them is caught."""
    _, p, _ = tiny_loaded("qwen2_vl")
    video = Video([synthetic_image(k) for k in range(8)], fps=1.0)
    inputs = encode(p, [video_sample(video)])
    short = Video(video.frames[:4], fps=1.0)
    with pytest.raises(RegionMappingError, match="4 frames, i.e. 2 temporal patches of 2, but video_grid_thw says t=4"):
        batch_video_rects(p, inputs, [[short]])
    with pytest.raises(RegionMappingError, match="needs the processor's video_grid_thw"):
        video_token_rects(p, video)
    with pytest.raises(RegionMappingError, match="box frame 9 out of range \\(video 0 has 8 frames\\)"):
        region_masks(p, inputs, [[]], [[Box(0, 0, 0, 5, 5, frame=9)]], videos=[[video]])
    with pytest.raises(RegionMappingError, match="box video index 1 out of range"):
        region_masks(p, inputs, [[]], [[Box(1, 0, 0, 5, 5, frame=0)]], videos=[[video]])


def test_every_video_family_documents_its_rule():
    for f in VIDEO_FAMILIES:
        rule = recipes()[f][0].region
        assert rule.video_rects.__doc__ and "video" in rule.summary
    assert set(VIDEO_FAMILIES) >= {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "internvl", "glm4v"}
