"""Low precision: hybrid sparse attention (both prefill backends) and every ablation mode in bfloat16
and float16 on the CPU stay within the dense low-precision model's own error against float32; and an
attention-changing variant on a model asked to run flash_attention_2 is refused with the reason."""

from __future__ import annotations

import copy

import pytest
import torch
from test_sparse import FULL, SINK, WINDOW, oracle_logits

from core_eval.intervene import apply_intervention
from core_eval.masks import VariantError

LOW = [torch.bfloat16, torch.float16]


def lowp(model, dtype):
    return copy.deepcopy(model).to(dtype)  # the session's float32 model stays untouched


def err(a, b, m):
    return (a.float()[m] - b.float()[m]).abs().max().item()


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_sparse_in_low_precision_is_within_the_dense_error(tiny_loaded, family, dtype):
    model, proc, inputs = tiny_loaded(family)
    m = inputs["attention_mask"].bool()
    low_inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    low = lowp(model, dtype)
    with torch.no_grad():
        dense32, dense_low = model(**inputs).logits, low(**low_inputs).logits
    bound = err(dense_low, dense32, m)  # the dense low-precision path's own error
    for backend in ("blocks", "flex"):
        iv = apply_intervention(low, FULL, "streaming", sink=SINK, window=WINDOW, backend=backend, flex_compile=False)
        try:
            with torch.no_grad():
                got = low(**low_inputs).logits
            full_kv = iv.variant.full_kv
        finally:
            iv.remove()
        want = oracle_logits(model, inputs, full_kv, "streaming", inputs["input_ids"])  # float32 oracle
        assert err(got, want, m) <= 2 * bound, (backend, err(got, want, m), bound)


@pytest.mark.parametrize("mode", ["zero", "mean", "uniform", "visual_knockout"])
def test_ablation_modes_in_bfloat16(tiny_loaded, mode):
    model, proc, inputs = tiny_loaded("llava")
    m = inputs["attention_mask"].bool()
    low = lowp(model, torch.bfloat16)
    low_inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    opts = {"means": torch.randn(*_shape(model))} if mode == "mean" else {}
    outs = []
    for mdl, x in ((model, inputs), (low, low_inputs)):
        with torch.no_grad():
            dense = mdl(**x).logits
        iv = apply_intervention(mdl, FULL, mode, **opts)
        try:
            with torch.no_grad():
                outs.append((dense, mdl(**x).logits))
        finally:
            iv.remove()
    (d32, a32), (dlo, alo) = outs
    assert err(a32, d32, m) > 1e-3  # the ablation bites
    assert err(alo, a32, m) <= 2 * err(dlo, d32, m) + 1e-6


def _shape(model):
    from core_eval.adapters import adapter_for

    s = adapter_for(model).shape
    return s.num_layers, s.num_heads, s.head_dim


@pytest.mark.parametrize("mode", ["uniform", "streaming"])
def test_flash_attention_2_is_refused_for_attention_changing_variants(tiny_loaded, monkeypatch, mode):
    """The core_eval attention function (SDPA / FlexAttention) would silently replace the flash
    kernels the user asked for; zero and mean work on any backend (o_proj hook) and still run."""
    from core_eval.masks.base import Patcher

    model, proc, inputs = tiny_loaded("llava")
    with torch.no_grad():
        before = model(**inputs).logits
    monkeypatch.setattr(Patcher, "backend", property(lambda self: "flash_attention_2"))
    with pytest.raises(VariantError, match="flash_attention_2.*attn_implementation=\"sdpa\""):
        apply_intervention(model, FULL, mode)
    monkeypatch.undo()
    with torch.no_grad():  # the failed install left nothing behind
        assert torch.equal(model(**inputs).logits, before)
