"""Variants defined outside core_eval: by registered name, dotted path and entry point.

Oracle for the effect: ``o_proj`` weight surgery (a head's output scaled by f == its weight
columns scaled by f)."""

from __future__ import annotations

import copy
import textwrap

import pytest
import torch

from core_eval import load
from core_eval.adapters import adapter_for
from core_eval.masks import Variant, available_variants, get_variant, register_variant
from core_eval.testing import example_inputs


@register_variant
class ScaleHeads(Variant):
    """Multiplies the named heads' outputs by ``factor`` (defined in the test module)."""

    name = "test_scale"
    description = "scale head outputs"
    options = {"factor": (float, 0.0, "multiplier")}

    def apply(self, patcher, heads):
        for layer, idx in heads.items():
            def fn(x, idx=idx):
                scale = torch.ones(x.shape[2], 1, dtype=x.dtype)
                scale[idx] = self.config["factor"]
                return x * scale
            patcher.o_proj_input(layer, fn)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def scaled_copy(model, heads, factor):
    """Oracle: a copy whose ``o_proj`` weight columns of ``heads`` are multiplied by ``factor``."""
    m = copy.deepcopy(model)
    ad = adapter_for(m)
    D = ad.shape.head_dim
    with torch.no_grad():
        for layer, h in heads:
            ad.o_proj(layer).weight[:, h * D:(h + 1) * D] *= factor
    return m


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])  # MHA and GQA
def test_variant_from_test_module_found_by_name_and_applied(tiny_dir, tiny_loaded, family):
    d = tiny_dir(family)
    plain, proc, _ = tiny_loaded(family)
    x = example_inputs(d, processor=proc)
    heads = [(1, 0), (2, 2)]
    ours = load(d, heads=heads, ablation="test_scale")  # factor 0 == zero ablation
    zero = load(d, heads=heads, ablation="zero")
    assert ours.summary["variant"]["name"] == "test_scale"
    torch.testing.assert_close(logits(ours.model, x), logits(zero.model, x), atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(ours.model, x), logits(scaled_copy(plain, heads, 0.0), x), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(ours.model, x), logits(plain, x), atol=1e-4)
    half = load(d, heads=heads, ablation="test_scale", variant_options={"factor": 0.5})
    assert half.summary["variant"]["options"] == {"factor": 0.5}
    torch.testing.assert_close(logits(half.model, x), logits(scaled_copy(plain, heads, 0.5), x), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(half.model, x), logits(zero.model, x), atol=1e-4)


def test_variant_by_dotted_path(tiny_dir, tiny_loaded):
    cls = get_variant(f"{__name__}:ScaleHeads")
    assert cls is ScaleHeads
    plain, proc, _ = tiny_loaded("qwen2_vl")
    x = example_inputs(tiny_dir("qwen2_vl"), processor=proc)
    heads = [(0, 1), (2, 3)]
    loaded = load(tiny_dir("qwen2_vl"), heads=heads, ablation=f"{__name__}:ScaleHeads",
                  variant_options={"factor": 2.0})
    assert loaded.summary["variant"]["name"] == "test_scale"
    torch.testing.assert_close(logits(loaded.model, x), logits(scaled_copy(plain, heads, 2.0), x), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(loaded.model, x), logits(plain, x), atol=1e-4)


def test_variant_by_entry_point(tmp_path, monkeypatch, tiny_dir, tiny_loaded):
    pkg = tmp_path / "ext_variants_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from core_eval.masks import Variant

        class Negate(Variant):
            name = "negate_from_ep"
            def apply(self, patcher, heads):
                for layer, idx in heads.items():
                    patcher.o_proj_input(layer, lambda x, idx=idx: x.index_copy(2, idx, -x.index_select(2, idx)))
    '''))
    dist = tmp_path / "ext_variants_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ext-variants-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[core_eval.variants]\nnegate_from_ep = ext_variants_pkg:Negate\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "negate_from_ep" in available_variants()
    heads = [(1, 1), (2, 0)]
    loaded = load(tiny_dir("llama"), heads=heads, ablation="negate_from_ep")
    assert loaded.summary["variant"]["name"] == "negate_from_ep"
    assert type(loaded.intervention.variant).__module__ == "ext_variants_pkg"
    plain, tok, _ = tiny_loaded("llama")
    x = example_inputs(tiny_dir("llama"), processor=tok)
    torch.testing.assert_close(logits(loaded.model, x), logits(scaled_copy(plain, heads, -1.0), x), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(loaded.model, x), logits(plain, x), atol=1e-4)


def test_register_rejects_non_variants_and_name_clashes():
    with pytest.raises(TypeError):
        register_variant(object)
    from core_eval.masks import VariantError

    class Clash(Variant):
        name = "zero"

    with pytest.raises(VariantError, match="already registered"):
        register_variant(Clash)
