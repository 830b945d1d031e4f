"""Bad input fails before any weights are read, with a message that names the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from core_eval import load
from core_eval.adapters import ModelShape, UnsupportedArchitectureError, shape_from_config
from core_eval.loading import LoadError, load_config
from core_eval.masks import VariantError
from core_eval.spec import HeadSpecError, spec_from_scores


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to load weights fails the test."""

    def boom(*a, **k):
        raise AssertionError("weights were loaded before the bad input was rejected")

    for cls in (transformers.AutoModelForImageTextToText, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", boom)


def write_spec(path, shape: ModelShape, **kw):
    rng = np.random.default_rng(0)
    ram = rng.random((shape.num_layers, shape.num_heads))
    spec = spec_from_scores({"ram": ram}, {"name": "tiny"}, {"name": "ram-v1"}, shape=shape, **kw)
    return spec.write(path)


@pytest.fixture
def llava(tiny_dir):
    d = tiny_dir("llava")
    return d, shape_from_config(load_config(d))


def test_wrong_model_shape_names_both_shapes(tmp_path, llava, no_weights):
    d, shape = llava
    other = ModelShape(shape.num_layers + 5, shape.num_heads * 2, shape.num_kv_heads, shape.head_dim)
    p = write_spec(tmp_path / "s.json", other)
    with pytest.raises((LoadError, HeadSpecError)) as e:
        load(d, spec=p, heads="top")
    msg = str(e.value)
    assert str(shape.num_layers + 5) in msg and str(shape.num_layers) in msg
    assert str(shape.num_heads * 2) in msg


def _spec_dict(tmp_path, shape):
    return json.loads(write_spec(tmp_path / "ok.json", shape).read_text())


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: d["selection"].update(rule="manual", heads=[[99, 0]]), "layer 99"),
        (lambda d: d["selection"].update(rule="manual", heads=[[0, 17]]), "head 17"),
        (lambda d: d["scores"]["ram"][0].__setitem__(0, float("nan")), "NaN"),
        (lambda d: d.__setitem__("schema", "core-head-spec/v9"), "core-head-spec/v9"),
    ],
    ids=["layer-out-of-range", "head-out-of-range", "nan-score", "unknown-schema"],
)
def test_bad_spec_contents(tmp_path, llava, no_weights, mutate, needle):
    d, shape = llava
    data = _spec_dict(tmp_path, shape)
    mutate(data)
    data["selection"].pop("by_layer", None)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))  # json writes NaN literally
    with pytest.raises((HeadSpecError, LoadError)) as e:
        load(d, spec=p, heads="spec")
    assert needle.lower() in str(e.value).lower()


@pytest.mark.parametrize("text,needle", [("", "empty"), ("{\"schema\": ", "json")], ids=["empty", "malformed"])
def test_empty_or_malformed_file(tmp_path, llava, no_weights, text, needle):
    d, _ = llava
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(HeadSpecError) as e:
        load(d, spec=p, heads="top")
    assert needle in str(e.value).lower() and "bad.json" in str(e.value)


def test_missing_spec_file(tmp_path, llava, no_weights):
    with pytest.raises(LoadError, match="does not exist"):
        load(llava[0], spec=tmp_path / "nope.json", heads="top")


def test_explicit_head_out_of_range(llava, no_weights):
    with pytest.raises(HeadSpecError, match="layer 7 is out of range"):
        load(llava[0], heads=[(7, 0)])


def test_rule_without_spec(llava, no_weights):
    with pytest.raises(LoadError, match="needs a head spec"):
        load(llava[0], heads="top")


def test_unknown_variant_lists_the_available_ones(llava, no_weights):
    with pytest.raises(VariantError) as e:
        load(llava[0], heads=[(0, 0)], ablation="zeroo")
    assert "zeroo" in str(e.value) and "visual_knockout" in str(e.value) and "pkg.module:ClassName" in str(e.value)


def test_bad_variant_option(llava, no_weights):
    with pytest.raises(VariantError, match="unknown option"):
        load(llava[0], heads=[(0, 0)], ablation="zero", variant_options={"strength": 2})


def test_missing_checkpoint(tmp_path, no_weights):
    with pytest.raises(LoadError, match="cannot read a transformers config"):
        load(tmp_path / "no-such-model")


def test_unknown_architecture_lists_supported_families(tmp_path, no_weights):
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError) as e:
        load(tmp_path)
    msg = str(e.value)
    assert "bert" in msg and "llava" in msg and "qwen2_vl" in msg and "register_family" in msg


def test_mllama_is_refused_with_the_reason():
    from core_eval.adapters import family_for_config

    cfg = transformers.MllamaConfig()
    with pytest.raises(UnsupportedArchitectureError, match="cross-attention"):
        family_for_config(cfg)
