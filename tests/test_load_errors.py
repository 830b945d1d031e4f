"""Bad input fails before any weights are read, with a message that names the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers
from conftest import ALL_FAMILIES

from core_eval import load
from core_eval.adapters import ModelShape, UnsupportedArchitectureError, shape_from_config
from core_eval.loading import LoadError, load_config
from core_eval.masks import VariantError
from core_eval.spec import HeadSpecError, spec_from_scores
from core_eval.spec.legacy import DUO_FILENAME


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


@pytest.fixture(params=ALL_FAMILIES)
def model(request, tiny_dir):
    """Every tiny family: (checkpoint dir, its shape). Bad specs fail before weights, so this is cheap."""
    d = tiny_dir(request.param)
    return d, shape_from_config(load_config(d))


def shape_text(shape: ModelShape) -> str:
    return f"num_layers={shape.num_layers}, num_heads={shape.num_heads}"


def test_wrong_model_shape_names_both_shapes(tmp_path, model, no_weights):
    d, shape = model
    other = ModelShape(shape.num_layers + 5, shape.num_heads * 2, shape.num_kv_heads, shape.head_dim)
    p = write_spec(tmp_path / "s.json", other)
    with pytest.raises((LoadError, HeadSpecError)) as e:
        load(d, spec=p, heads="top")
    msg = str(e.value)
    assert shape_text(other) in msg and shape_text(shape) in msg and "Fix:" in msg


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
def test_bad_spec_contents(tmp_path, model, no_weights, mutate, needle):
    d, shape = model
    data = _spec_dict(tmp_path, shape)
    mutate(data)
    data["selection"].pop("by_layer", None)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))  # json writes NaN literally
    with pytest.raises((HeadSpecError, LoadError)) as e:
        load(d, spec=p, heads="spec")
    assert needle.lower() in str(e.value).lower()


@pytest.mark.parametrize("text,needle", [("", "empty"), ("{\"schema\": ", "json")], ids=["empty", "malformed"])
def test_empty_or_malformed_file(tmp_path, model, no_weights, text, needle):
    d, _ = model
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(HeadSpecError) as e:
        load(d, spec=p, heads="top")
    assert needle in str(e.value).lower() and "bad.json" in str(e.value)


# Legacy formats (DESIGN §5): Retrieval Head {"L-H": [scores]} JSON and DuoAttention's TSV.
def _rh(shape, *, bad_value=None, extra_key=None):
    obj = {f"{layer}-{h}": [0.1 * h, 0.2] for layer in range(shape.num_layers) for h in range(shape.num_heads)}
    if bad_value is not None:
        obj["0-1"] = bad_value
    if extra_key is not None:
        obj[extra_key] = [0.5]
    return json.dumps(obj)


def _tsv(rows: int, cols: int, cell="0.5"):
    return "\n".join("\t".join([cell] * cols) for _ in range(rows)) + "\n"


LEGACY_CASES = {
    # name: (file name, text(shape), words the message must hold(shape))
    "rh-non-numeric-score": ("rh.json", lambda s: _rh(s, bad_value=[0.3, "high"]),
                             lambda s: ["'0-1'", "not a list of numbers"]),
    "rh-truncated-json": ("rh.json", lambda s: _rh(s)[:-20], lambda s: ["malformed json"]),
    "rh-layer-out-of-range": ("rh.json", lambda s: _rh(s, extra_key=f"{s.num_layers}-0"),
                              lambda s: [f"'{s.num_layers}-0' is out of range", shape_text(s)]),
    "rh-head-out-of-range": ("rh.json", lambda s: _rh(s, extra_key=f"0-{s.num_heads + 3}"),
                             lambda s: [f"'0-{s.num_heads + 3}' is out of range", shape_text(s)]),
    "duo-non-numeric": (DUO_FILENAME, lambda s: _tsv(s.num_layers, s.num_kv_heads).replace("0.5", "full", 1),
                        lambda s: ["line 1, column 1", "'full' is not a number"]),
    "duo-ragged-rows": (DUO_FILENAME, lambda s: _tsv(s.num_layers, s.num_kv_heads) + "0.5\n",
                        lambda s: [f"line {s.num_layers + 1} has 1 values"]),
    "duo-wrong-layer-count": (DUO_FILENAME, lambda s: _tsv(s.num_layers + 2, s.num_kv_heads),
                              lambda s: [f"{s.num_layers + 2} rows", shape_text(s), f"expected {s.num_layers} rows"]),
    "duo-wrong-head-count": (DUO_FILENAME, lambda s: _tsv(s.num_layers, s.num_heads + 1),
                             lambda s: [f"{s.num_heads + 1} columns", shape_text(s), f"{s.num_kv_heads} (KV heads)"]),
}


@pytest.mark.parametrize("case", list(LEGACY_CASES))
def test_bad_legacy_file(tmp_path, model, no_weights, case):
    d, shape = model
    name, text, needles = LEGACY_CASES[case]
    p = tmp_path / name
    p.write_text(text(shape))
    with pytest.raises(HeadSpecError) as e:
        load(d, spec=p, heads="spec")
    msg = str(e.value)
    assert str(p) in msg and "Fix:" in msg
    for needle in needles(shape):
        assert needle.lower() in msg.lower(), (needle, msg)


@pytest.mark.parametrize("fmt", ["rh", "duo"])
def test_good_legacy_file_gets_past_the_checks(tmp_path, llava, no_weights, fmt):
    """Control for the test above: a well-formed legacy file of the right shape is accepted,
    so loading reaches the weights (which ``no_weights`` forbids)."""
    d, shape = llava
    p = tmp_path / ("rh.json" if fmt == "rh" else DUO_FILENAME)
    p.write_text(_rh(shape) if fmt == "rh" else _tsv(shape.num_layers, shape.num_kv_heads, "0.7"))
    with pytest.raises(AssertionError, match="weights were loaded"):
        load(d, spec=p, heads="spec")


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
    assert "bert" in msg and "llava" in msg and "qwen2_vl" in msg and "family=pkg.module:obj" in msg


def test_mllama_is_refused_with_the_reason():
    from core_eval.adapters import family_for_config

    cfg = transformers.MllamaConfig()
    with pytest.raises(UnsupportedArchitectureError, match="cross-attention"):
        family_for_config(cfg)
