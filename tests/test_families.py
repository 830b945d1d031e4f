"""The family modules: declarations checked against the models' own behaviour, requirements checked
before weights, and the ``core-eval families`` listing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ALL_FAMILIES, VLM_FAMILIES
from test_model_mask import full_layer_mask

import core_eval
from core_eval.adapters import (
    MASK_KINDS,
    UnsupportedArchitectureError,
    adapter_for,
    family_source,
    registered_families,
)

BIN = Path(sys.executable).parent


def observed_mask_kind(model, inputs) -> str:
    """What the model's own full-attention-layer mask is, from the mask it passes to attention."""
    T = inputs["input_ids"].shape[1]
    allowed = full_layer_mask(model, inputs)
    future = allowed & torch.ones(T, T, dtype=torch.bool).triu(1)  # (B, T, T): key after query
    if not future.any():
        return "causal"
    visual = adapter_for(model).visual_mask(inputs["input_ids"])
    both_visual = visual[:, :, None] & visual[:, None, :]
    return "bidirectional_image" if not (future & ~both_visual).any() else "prefix_lm"


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_declared_mask_kind_is_the_models_own(tiny_loaded, family):
    model, _, inputs = tiny_loaded(family)
    declared = adapter_for(model).family.attention_mask
    assert declared in MASK_KINDS
    assert observed_mask_kind(model, inputs) == declared


def test_every_builtin_family_module_is_complete():
    fams = registered_families()
    for name, f in fams.items():
        assert f.notes, name
        if f.vision is not None:
            assert f.region is not None and f.region.token_rects.__doc__, f"{name}: no documented region rule"
        for req in f.requires:
            assert req.split(".", 1)[0] in ("config", "processor")
    tiny = {r.name for f in fams.values() for r in f.tiny}
    assert set(ALL_FAMILIES) <= tiny


def _weightless(tiny_dir, tmp_path, family):
    dst = tmp_path / f"{family}-weightless"
    shutil.copytree(tiny_dir(family), dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


def test_a_missing_processor_field_fails_before_weights(tiny_dir, tmp_path):
    d = _weightless(tiny_dir, tmp_path, "llava")  # no weights: reaching from_pretrained would fail differently
    cfg_path = d / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("patch_size")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError,
                       match=r"family 'llava' needs processor\.patch_size, which this checkpoint"):
        core_eval.load(d, heads="none")


def test_a_missing_config_field_fails_before_weights(tiny_dir, tmp_path):
    from core_eval.adapters import Family, resolve_family

    d = _weightless(tiny_dir, tmp_path, "llava")
    base = registered_families()["llava"]
    strict = Family(**{**base.__dict__, "name": "llava_strict", "requires": ("config.no_such_field",)})
    with pytest.raises(UnsupportedArchitectureError, match=r"family 'llava_strict' needs config\.no_such_field"):
        core_eval.plan(d, family=strict)
    assert resolve_family("llava") is base  # the built-in entry for model_type llava is untouched


def test_a_family_for_another_model_type_is_refused(tiny_dir):
    with pytest.raises(UnsupportedArchitectureError,
                       match=r"family 'qwen2_vl' covers model_type qwen2_vl, but this checkpoint is "
                             r"LlavaForConditionalGeneration \(model_type='llava'\)"):
        core_eval.plan(tiny_dir("llava"), family="qwen2_vl")
    with pytest.raises(UnsupportedArchitectureError, match="cannot import 'NOPE' from module 'core_eval.adapters'"):
        core_eval.plan(tiny_dir("llava"), family="core_eval.adapters:NOPE")


def test_families_cli_lists_each_family_with_what_is_tested():
    out = subprocess.run([str(BIN / "core-eval"), "families", "-v"], capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip() and not line.startswith("tested")}
    for name, f in registered_families().items():
        if family_source(f) != "built-in":
            continue  # registered by another test in this process
        assert name in lines, name
        assert f.attention_mask in lines[name]
        for r in f.tiny:
            if r.name in ALL_FAMILIES:
                assert f"matrix: " in lines[name] and r.name in lines[name]
    assert "bidirectional_image" in lines["gemma3"]
    assert "region masks vs the model's own patch grouping" in out
