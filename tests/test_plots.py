"""Plots (heatmap, attention overlay, CLI) and the capture's kept attention rows.

Oracle for ``RamCapture(keep=...)``: eager attention with ``output_attentions=True`` on the tiny
models; the kept rows must match it to 1e-5 and, summed over the target tokens and averaged over
the rows, give the RAM the capture reports. The overlay's drawing helpers are checked on a
synthetic layout with known per-token weights.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from conftest import ALL_FAMILIES, visual_or_stand_in
from PIL import Image

from core_eval.adapters import adapter_for
from core_eval.probes import generate
from core_eval.prompting import encode_teacher_forced, key_rows
from core_eval.scoring.capture import RamCapture
from core_eval.scoring.plots import (
    DPI,
    add_plot_parser,
    attention_overlay,
    compose_images,
    heatmap_figsize,
    overlay_figsize,
    overlay_rgb,
    ram_heatmap,
    run_plot,
    token_heat,
    top_heads,
)
from core_eval.spec import spec_from_scores


def _answer_rows(amask):
    rows = [(m.nonzero().flatten() - 1) for m in amask]
    R = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r.new_full((R - len(r),), -1)]) for r in rows])


def _assert_png(path, size=None):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        if size is not None:
            assert im.size == size
        arr = np.asarray(im.convert("RGB"))
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20  # not blank / a single colour
    return arr


def _spec(shape, name="tiny", seed=0, frac=0.1):
    rng = np.random.default_rng(seed)
    ram = rng.random((shape.num_layers, shape.num_heads))
    return spec_from_scores({"ram": ram, "lift": ram * 3}, {"name": name},
                            {"name": "ram-v1", "probes": "grid_needle", "n_used": 8, "query_rows": "answer"},
                            shape=shape, frac=frac)


def _cli(argv):
    p = argparse.ArgumentParser(prog="core-eval")
    add_plot_parser(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    return args.fn(args)


# ------------------------------------------------------------------------------ kept rows


@pytest.fixture(scope="module")
def models(tiny_sdpa_eager):
    return tiny_sdpa_eager


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_kept_rows_match_eager_attentions(models, family):
    _, model, eager, proc = models(family)
    samples = generate("grid_needle", 2, seed=5, grid=3, image_size=96)
    samples[1].answer = samples[1].answer + " " + samples[1].answer  # different numbers of rows
    inputs, amask, _ = encode_teacher_forced(proc, samples)
    inputs = dict(inputs)
    ids = inputs["input_ids"]
    visual = visual_or_stand_in(model, ids)
    g = torch.Generator().manual_seed(0)
    region = visual & (torch.rand(visual.shape, generator=g) < 0.5)
    rows = _answer_rows(amask)
    L, H = adapter_for(model).shape.num_layers, adapter_for(model).shape.num_heads
    keep = {0: [H - 1, 0], L - 1: [1]}
    with torch.no_grad():
        plain = model(**inputs).logits
        cap = RamCapture(model)
        cap.tracker._visual_mask_fn = lambda x: visual
        with cap:
            cap.reset(region, rows, keep=keep)
            out = model(**inputs).logits
        ref = eager(**inputs, output_attentions=True).attentions
    assert torch.equal(out, plain)  # keeping rows changes nothing
    res, kept = cap.result(), cap.kept
    assert sorted(kept) == sorted(keep)
    for layer, heads in keep.items():
        K = kept[layer]
        assert K.shape == (2, len(heads), rows.shape[1], ids.shape[1]) and K.dtype == torch.float32
        for b in range(2):
            valid = rows[b] >= 0
            rr = rows[b][valid]
            for i, h in enumerate(heads):
                want = ref[layer][b, h, rr].float()
                torch.testing.assert_close(K[b, i, valid], want, atol=1e-5, rtol=0)
                assert (K[b, i, ~valid] == 0).all()  # unused row slots
                ram = (K[b, i, valid].double() * region[b]).sum(-1).mean()
                torch.testing.assert_close(ram.float(), res["ram"][b, layer, h], atol=1e-5, rtol=0)


def test_kept_decode_steps_match_eager(models):
    _, model, eager, proc = models("llava")
    from core_eval.prompting import encode

    samples = generate("grid_needle", 2, seed=6, grid=3, image_size=96)
    prompt = dict(encode(proc, samples))
    ids = prompt["input_ids"]
    T0, m = ids.shape[1], 4
    region = adapter_for(model).visual_mask(ids)
    with torch.no_grad(), RamCapture(model) as cap:
        cap.reset(region, torch.full((2, 1), T0 - 1), capture_decode=True, keep={1: [2]})
        seq = model.generate(**prompt, max_new_tokens=m, min_new_tokens=m, do_sample=False)
        full = dict(prompt, input_ids=seq[:, :-1],
                    attention_mask=torch.cat([prompt["attention_mask"], torch.ones(2, m - 1, dtype=torch.long)], 1))
        ref = eager(**full, output_attentions=True).attentions[1]
    steps = cap.kept_steps[1]
    assert len(steps) == m - 1
    torch.testing.assert_close(cap.kept[1][:, 0, 0], ref[:, 2, T0 - 1, :T0].float(), atol=1e-5, rtol=0)
    for s, K in enumerate(steps):
        assert K.shape == (2, 1, 1, T0 + s + 1)
        torch.testing.assert_close(K[:, 0, 0], ref[:, 2, T0 + s, : T0 + s + 1].float(), atol=1e-5, rtol=0)


def test_keep_rejects_heads_outside_the_model(models):
    _, model, _, _ = models("llava")
    cap = RamCapture(model)
    with pytest.raises(ValueError, match="outside"):
        cap.reset(torch.zeros(1, 4, dtype=torch.bool), None, keep={99: [0]})


# ------------------------------------------------------------------------------ drawing helpers


def test_token_heat_puts_the_most_heat_on_the_heaviest_rect():
    # a 4 x 4 grid of 16 px patches over a 64 x 64 image; token 6 (row 1, col 2) is the heaviest
    rects = np.array([[c * 16, r * 16, (c + 1) * 16, (r + 1) * 16] for r in range(4) for c in range(4)], float)
    rects = np.concatenate([[[np.nan] * 4], rects])  # a token without a patch (CLS) is skipped
    w = np.concatenate([[0.5], np.full(16, 0.01)])
    w[1 + 6] = 0.3
    w[1 + 9] = 0.1
    heat = token_heat((64, 64), rects, w)
    inside = heat[16:32, 32:48]
    outside = heat.copy()
    outside[16:32, 32:48] = -1
    assert inside.min() > outside.max()
    assert np.isclose(heat.sum(), w[1:].sum())  # density: the mass is spread over the pixels
    # rendered on black, grey and white images: the target pixels carry the strongest heat colour
    for v in (0, 128, 255):
        rgb = overlay_rgb(np.full((64, 64, 3), v, np.uint8), heat).astype(float)
        red = rgb[..., 0] - rgb[..., 1:].mean(-1)
        rest = red.copy()
        rest[16:32, 32:48] = -np.inf
        assert red[16:32, 32:48].min() > rest.max()
        assert red[32:48, 16:32].min() > red[48:, :16].max()  # the second heaviest beats the light ones


def test_token_heat_offsets_and_clipping():
    # two 20 x 10 images side by side (gap 4): one token per image, the second outside its image
    rects = np.array([[0, 0, 10, 10], [15, 0, 30, 10]], float)
    heat = token_heat((44, 10), rects, [1.0, 1.0], image=[0, 1], offsets=[(0, 0), (24, 0)],
                      image_sizes=[(20, 10), (20, 10)])
    assert np.allclose(heat[:, :10], 1 / 100) and heat[:, 10:24].sum() == 0
    assert np.allclose(heat[:, 39:44], 1 / 50) and heat[:, 24:39].sum() == 0  # clipped to [15, 20)


# ------------------------------------------------------------------------------ files


def test_heatmap_png_and_cli(tmp_path):
    from core_eval.adapters.base import ModelShape

    spec = _spec(ModelShape(6, 8, 4, 16), name="/models/some/tiny-model", frac=0.1)
    path = ram_heatmap(spec, tmp_path / "sub" / "heat.png")
    w, h = heatmap_figsize(6, 8)
    arr = _assert_png(path, (round(w * DPI), round(h * DPI)))
    assert (arr[..., 0] > 200).any() and not list(tmp_path.glob("sub/.*tmp*"))  # red outlines, no temp file
    spec_path = spec.write(tmp_path / "spec.json")
    out = tmp_path / "cli.png"
    assert _cli(["plot", "heatmap", str(spec_path), "-o", str(out), "--score", "lift"]) == 0
    _assert_png(out, (round(w * DPI), round(h * DPI)))
    with pytest.raises(Exception, match="nope"):
        ram_heatmap(spec, tmp_path / "x.png", score="nope")


@pytest.mark.parametrize("rows", ["answer", "last", "key"])
def test_attention_overlay_png(models, tmp_path, rows):
    d, model, eager, proc = models("llava")
    shape = adapter_for(model).shape
    spec = _spec(shape, name=str(d))
    sample = generate("grid_needle", 1, seed=2, grid=3, image_size=96)[0]
    heads = top_heads(spec, 4)
    ov = attention_overlay(model, proc, sample, heads, tmp_path / "ov.png", rows=rows, spec=spec)
    w, h = overlay_figsize(4, compose_images(sample.images)[0].size)
    _assert_png(ov.path, (round(w * DPI), round(h * DPI)))
    assert w * DPI > 600 and h * DPI > 400
    assert ov.heads == heads and ov.weights.shape[0] == 4
    # the per-sample RAM in the titles = the weights drawn, summed over the target tokens
    np.testing.assert_allclose((ov.weights * ov.extra["region"]).sum(1), ov.ram, atol=1e-5)
    # and = what eager attention gives for those rows
    inputs, amask, starts = encode_teacher_forced(proc, [sample])
    with torch.no_grad():
        att = eager(**dict(inputs), output_attentions=True).attentions
    r = {"answer": amask[0].nonzero().flatten() - 1, "last": starts - 1,
         "key": key_rows(proc, inputs["input_ids"], starts, [sample])[0]}[rows]
    for (l, h), w in zip(heads, ov.weights):
        np.testing.assert_allclose(w, att[l][0, h, r].double().mean(0).numpy(), atol=1e-5)


def test_overlay_cli(models, tmp_path):
    d, model, _, _ = models("llava")
    spec_path = _spec(adapter_for(model).shape, name=str(d)).write(tmp_path / "spec.json")
    out = tmp_path / "ov.png"
    assert _cli(["plot", "overlay", "--model", str(d), "--spec", str(spec_path), "--probes", "grid_needle",
                 "--knobs", '{"grid": 3, "image_size": 96}', "--index", "1", "--k", "2", "-o", str(out)]) == 0
    _assert_png(out)
    out2 = tmp_path / "ov2.png"
    assert _cli(["plot", "overlay", "--model", str(d), "--heads", "0:1,2:3", "--probes", "multi_image_needle",
                 "--knobs", '{"n_images": 2, "image_size": 64}', "--rows", "last", "-o", str(out2)]) == 0
    _assert_png(out2)
    with pytest.raises(ValueError, match="--spec"):
        _cli(["plot", "overlay", "--model", str(d), "-o", str(out)])
