"""``core-eval export``: ablated checkpoints for engines that cannot be patched, and head-set writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import core_eval
from core_eval.cli import main as cli
from core_eval.export import PROVENANCE_FILE, export_ablated
from core_eval.loading import LoadError
from core_eval.testing import example_inputs, load_tiny

HEADS = [(0, 1), (1, 0), (1, 3), (2, 2)]


def tensors(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "llama"])  # MHA, GQA with q/k/v biases, text
def test_zero_export_equals_the_zero_intervention_and_edits_nothing_else(tiny_dir, tmp_path, family):
    src = tiny_dir(family)
    out = export_ablated(src, tmp_path / "exported", heads=HEADS, ablation="zero")
    plain, proc = load_tiny(out)  # a plain from_pretrained of the exported folder
    ref = core_eval.load(src, heads=HEADS, ablation="zero")
    inputs = example_inputs(src, batch=2, processor=ref.processor)
    torch.testing.assert_close(logits(plain, inputs), logits(ref.model, inputs), atol=1e-6, rtol=0)
    before, after = tensors(src), tensors(out)
    assert before.keys() == after.keys()
    D = ref.adapter.shape.head_dim

    def o_proj_key(layer):  # the checkpoint's own key (saved names may differ from module paths)
        (key,) = [k for k in before if k.endswith(f"layers.{layer}.self_attn.o_proj.weight") and "vision" not in k]
        return key

    edited = {o_proj_key(l) for l, _ in HEADS}
    for key in before:
        if key not in edited:
            assert torch.equal(before[key], after[key]), key  # byte-identical
    for l in {l for l, _ in HEADS}:
        key = o_proj_key(l)
        cols = torch.zeros(before[key].shape[1], dtype=torch.bool)
        for h in (h for ll, h in HEADS if ll == l):
            cols[h * D:(h + 1) * D] = True
        assert torch.equal(after[key][:, cols], torch.zeros_like(after[key][:, cols]))
        assert torch.equal(after[key][:, ~cols], before[key][:, ~cols])
    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert record["mode"] == "zero" and record["heads"] == [list(h) for h in HEADS]
    assert record["family"] == ref.adapter.family.name
    assert (out / "config.json").read_text() == (src / "config.json").read_text()


@pytest.fixture
def biased_llama(tiny_dir, tmp_path):
    """A tiny Llama whose attention has biases (o_proj included), saved like a checkpoint."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    src = tiny_dir("llama")
    config = AutoConfig.from_pretrained(src)
    config.attention_bias = True
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.bias.normal_(0, 0.02)
    d = tmp_path / "llama-bias"
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(src).save_pretrained(d)
    return d


def test_mean_export_folds_the_means_into_the_bias(biased_llama, tmp_path):
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config
    from core_eval.means import save_head_means

    s = shape_from_config(load_config(biased_llama))
    means_path = save_head_means(tmp_path / "m.means.safetensors", torch.randn(s.num_layers, s.num_heads, s.head_dim))
    out = export_ablated(biased_llama, tmp_path / "exported", heads=HEADS, ablation="mean", means=means_path)
    plain, _ = load_tiny(out)
    ref = core_eval.load(biased_llama, heads=HEADS, ablation="mean", means=means_path)
    inputs = example_inputs(biased_llama, batch=2, processor=ref.processor)
    torch.testing.assert_close(logits(plain, inputs), logits(ref.model, inputs), atol=1e-6, rtol=0)
    assert not torch.allclose(logits(plain, inputs), logits(load_tiny(biased_llama)[0], inputs))


def test_exports_that_cannot_be_exact_are_refused_before_weights(tiny_dir, tmp_path):
    src = tiny_dir("llava")
    with pytest.raises(LoadError, match="o_proj has no bias"):
        export_ablated(src, tmp_path / "a", heads=HEADS, ablation="mean", means=_means_file(src, tmp_path))
    with pytest.raises(LoadError, match="ablation='uniform' cannot be exported: it changes the attention itself"):
        export_ablated(src, tmp_path / "b", heads=HEADS, ablation="uniform")
    with pytest.raises(LoadError, match="the head set is empty"):
        export_ablated(src, tmp_path / "c", heads="none")
    (tmp_path / "taken").mkdir()
    with pytest.raises(LoadError, match="exists; pass --overwrite"):
        export_ablated(src, tmp_path / "taken", heads=HEADS)
    with pytest.raises(LoadError, match="is the source checkpoint"):
        export_ablated(src, src, heads=HEADS, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.means.safetensors", "taken"]  # nothing half-written


def _means_file(src, tmp_path):
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config
    from core_eval.means import save_head_means

    s = shape_from_config(load_config(src))
    return save_head_means(tmp_path / "m.means.safetensors", torch.zeros(s.num_layers, s.num_heads, s.head_dim))


def test_export_cli_from_a_spec(tiny_dir, tmp_path, capsys):
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config
    from core_eval.spec import spec_from_scores

    src = tiny_dir("qwen2_vl")
    s = shape_from_config(load_config(src))
    ram = torch.rand(s.num_layers, s.num_heads, generator=torch.Generator().manual_seed(3)).numpy()
    spec_path = spec_from_scores({"ram": ram}, {"name": "tiny"}, {"name": "test"}, shape=s).write(tmp_path / "s.json")
    assert cli(["export", "--model", str(src), "--spec", str(spec_path), "--heads", "top", "--k", "2",
                "--out", str(tmp_path / "x")]) == 0
    record = json.loads((tmp_path / "x" / PROVENANCE_FILE).read_text())
    top2 = sorted(((l, h) for l in range(s.num_layers) for h in range(s.num_heads)), key=lambda lh: -ram[lh])[:2]
    assert sorted(map(tuple, record["heads"])) == sorted(top2)
    assert record["spec"]["hash"] and "wrote" in capsys.readouterr().out


def test_writers_round_trip_through_the_readers(tmp_path):
    from core_eval.adapters import ModelShape
    from core_eval.spec import load_head_spec, spec_from_scores

    shape = ModelShape(3, 4, 2, 16)
    ram = torch.rand(3, 4, generator=torch.Generator().manual_seed(1)).numpy()
    spec = spec_from_scores({"ram": ram}, {"name": "m"}, {"name": "test"}, rule="top", frac=None, k=3, shape=shape)
    assert cli(["convert", str(spec.write(tmp_path / "s.json")), "--to", "duo", "--out", str(tmp_path / "d.tsv")]) == 0
    duo = load_head_spec(tmp_path / "d.tsv", shape=shape)
    want_kv = {tuple(h) for h in spec.kv_heads()}
    assert {(l, h // shape.groups) for l, h in duo.heads} == want_kv  # DuoAttention's gate >= 0.5 = full
    assert cli(["convert", str(tmp_path / "s.json"), "--to", "retrieval-head", "--out", str(tmp_path / "r.json")]) == 0
    rh = load_head_spec(tmp_path / "r.json", shape=shape)
    assert torch.allclose(torch.tensor(rh.score("retrieval_score")), torch.tensor(ram, dtype=torch.float64))
    assert sorted(rh.with_selection("top", k=3).heads) == sorted(spec.heads)
