"""Variants defined outside core_eval: by registered name, dotted path and entry point."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from core_eval import load
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


def logits(loaded, family_dir):
    inputs = example_inputs(family_dir, processor=loaded.processor)
    with torch.no_grad():
        return loaded.model(**inputs).logits


def test_variant_from_test_module_found_by_name_and_applied(tiny_dir):
    d = tiny_dir("llava")
    heads = [(1, 0), (2, 2)]
    ours = load(d, heads=heads, ablation="test_scale")  # factor 0 == zero ablation
    zero = load(d, heads=heads, ablation="zero")
    base = load(d, heads="none")
    assert ours.summary["variant"]["name"] == "test_scale"
    torch.testing.assert_close(logits(ours, d), logits(zero, d), atol=1e-6, rtol=0)
    assert not torch.allclose(logits(ours, d), logits(base, d))
    half = load(d, heads=heads, ablation="test_scale", variant_options={"factor": 0.5})
    assert half.summary["variant"]["options"] == {"factor": 0.5}
    assert not torch.allclose(logits(half, d), logits(zero, d))


def test_variant_by_dotted_path(tiny_dir):
    cls = get_variant(f"{__name__}:ScaleHeads")
    assert cls is ScaleHeads
    loaded = load(tiny_dir("qwen2_vl"), heads=[(0, 1)], ablation=f"{__name__}:ScaleHeads")
    assert loaded.summary["variant"]["name"] == "test_scale"


def test_variant_by_entry_point(tmp_path, monkeypatch, tiny_dir):
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
    loaded = load(tiny_dir("llama"), heads=[(1, 1)], ablation="negate_from_ep")
    assert loaded.summary["variant"]["name"] == "negate_from_ep"
    assert type(loaded.intervention.variant).__module__ == "ext_variants_pkg"


def test_register_rejects_non_variants_and_name_clashes():
    with pytest.raises(TypeError):
        register_variant(object)
    from core_eval.masks import VariantError

    class Clash(Variant):
        name = "zero"

    with pytest.raises(VariantError, match="already registered"):
        register_variant(Clash)
