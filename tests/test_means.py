"""Head means for ``mean`` ablation: ``compute_head_means`` and the ``<spec>.means.safetensors`` flow.

Oracle: the ``o_proj`` inputs captured with plain forward pre-hooks on modules found by name
(not through core_eval's adapters), averaged per head over the real (non-padding) tokens.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import ALL_FAMILIES
from safetensors import safe_open

import core_eval.means
from core_eval import load
from core_eval.adapters import shape_from_config
from core_eval.loading import load_config
from core_eval.means import compute_head_means
from core_eval.probes import generate, probe_set_hash
from core_eval.prompting import iter_batches
from core_eval.spec import spec_from_scores
from core_eval.testing import example_inputs

# vision towers name theirs otherwise; Idefics2's perceiver resampler does not
LM_O_PROJ = re.compile(r"(?<!perceiver_resampler\.)layers\.(\d+)\.self_attn\.o_proj$")


def lm_o_projs(model) -> dict[int, torch.nn.Module]:
    found = [(int(m.group(1)), mod) for name, mod in model.named_modules() if (m := LM_O_PROJ.search(name))]
    assert sorted(l for l, _ in found) == list(range(model.config.get_text_config().num_hidden_layers))
    return dict(found)


@torch.no_grad()
def oracle_means(model, batches, *, use_mask=True) -> torch.Tensor:
    """Per-head mean of every LM layer's o_proj input over the (real) tokens of ``batches``."""
    cfg = model.config.get_text_config()
    H = cfg.num_attention_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    rows: dict[int, list[torch.Tensor]] = {}
    seen = {}
    hooks = [mod.register_forward_pre_hook(lambda m, a, l=l: seen.__setitem__(l, a[0].detach().double()))
             for l, mod in lm_o_projs(model).items()]
    try:
        for batch in batches:
            model(**batch)
            keep = batch["attention_mask"].bool() if use_mask else torch.ones_like(batch["input_ids"], dtype=bool)
            for l, x in seen.items():
                rows.setdefault(l, []).append(x[keep])  # (real tokens, H * D)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([torch.cat(rows[l]).mean(0).view(H, D) for l in sorted(rows)]).float()


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_compute_head_means_matches_plain_hooks(tiny_loaded, tiny_dir, family):
    model, proc, _ = tiny_loaded(family)
    d = tiny_dir(family)
    batches = [dict(example_inputs(d, batch=3, processor=proc)),  # left padding
               dict(example_inputs(d, batch=2, padding_side="right", prompt="Name a colour.", processor=proc))]
    assert all((b["attention_mask"] == 0).any() for b in batches)  # padding is really there to skip
    got = compute_head_means(model, batches, progress=False)
    want = oracle_means(model, batches)
    assert got.shape == want.shape == (model.config.get_text_config().num_hidden_layers, 4, 16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the mask matters: averaging padding positions too gives something else
    assert not torch.allclose(got, oracle_means(model, batches, use_mask=False), atol=1e-3)


def write_spec(model_dir, path):
    shape = shape_from_config(load_config(model_dir))
    ram = np.random.default_rng(3).random((shape.num_layers, shape.num_heads))
    return spec_from_scores({"ram": ram}, {"name": "tiny"}, {"name": "ram-v1"}, shape=shape, frac=0.25).write(path)


@pytest.mark.parametrize("family", ["llava", "llama"])
def test_mean_ablation_computes_means_beside_the_spec_then_reuses_them(tmp_path, tiny_dir, tiny_loaded,
                                                                       monkeypatch, family):
    d = tiny_dir(family)
    plain, proc, inputs = tiny_loaded(family)
    spec = write_spec(d, tmp_path / "heads.json")
    means_file = tmp_path / "heads.means.safetensors"
    n = 4
    assert not means_file.exists()

    first = load(d, spec=spec, ablation="mean", means_n=n)
    assert means_file.is_file()
    samples = generate("grid_needle", n, seed=0)
    want = oracle_means(plain, list(iter_batches(proc, samples, batch_size=4)))
    with safe_open(str(means_file), framework="pt") as f:
        stored, meta = f.get_tensor("head_means"), f.metadata()
    torch.testing.assert_close(stored, want, atol=1e-5, rtol=0)
    assert meta == {"probes": "grid_needle", "n": str(n), "probe_hash": probe_set_hash(samples),
                    "model": str(d)}
    assert first.summary["means"] == {"probes": "grid_needle", "n": n, "probe_hash": meta["probe_hash"],
                                      "model": str(d), "path": str(means_file)}

    # the ablated heads' o_proj inputs are exactly the stored means, at every position
    heads = first.summary["heads"]
    assert len(heads) == 3
    D = stored.shape[-1]
    seen = {}
    mods = lm_o_projs(first.model)
    hooks = [mods[l].register_forward_pre_hook(lambda m, a, l=l: seen.__setitem__(l, a[0])) for l in mods]
    with torch.no_grad():
        ablated = first.model(**inputs).logits
    for h in hooks:
        h.remove()
    for layer, head in heads:
        got = seen[layer][..., head * D:(head + 1) * D]
        torch.testing.assert_close(got, stored[layer, head].expand_as(got), atol=0, rtol=0)
    with torch.no_grad():
        assert not torch.allclose(ablated, plain(**inputs).logits, atol=1e-4)

    # a second load reads the file: no recomputation, the file untouched, the same model
    stat, data = means_file.stat(), means_file.read_bytes()

    def no_recompute(*a, **k):
        raise AssertionError("head means were recomputed although the means file exists")

    monkeypatch.setattr(core_eval.means, "compute_head_means", no_recompute)
    second = load(d, spec=spec, ablation="mean", means_n=n)
    assert means_file.stat().st_mtime_ns == stat.st_mtime_ns and means_file.read_bytes() == data
    assert second.summary["means"] == {**meta, "path": str(means_file)}
    assert second.summary["heads"] == heads
    with torch.no_grad():
        torch.testing.assert_close(second.model(**inputs).logits, ablated, atol=0, rtol=0)

    # other probe settings do not reuse those means: they are recomputed (and the file replaced)
    monkeypatch.undo()
    third = load(d, spec=spec, ablation="mean", means_n=n + 1)
    assert third.summary["means"]["n"] == n + 1
    with safe_open(str(means_file), framework="pt") as f:
        assert f.metadata()["n"] == str(n + 1)
