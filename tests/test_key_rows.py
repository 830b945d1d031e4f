"""RAM at the question's key tokens (``query_rows="key"``): the rows are the key's own tokens in
every family's prompt, the masses there equal the eager ``output_attentions`` reference, and a
probe without a key is refused before the model loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ALL_FAMILIES, visual_or_stand_in
from test_ram_capture import assert_rows_match_reference, random_region, reference_mass

from core_eval.adapters import adapter_for
from core_eval.probes import ProbeDataError, ProbeSample, generate, write_jsonl
from core_eval.probes.families import question_key
from core_eval.prompting import encode_teacher_forced, key_rows
from core_eval.scoring.ram import ScoreConfig, score


def _samples():
    return [*generate("grid_needle", 1, seed=3, grid=3, image_size=96),
            *generate("multi_image_needle", 1, seed=3, n_images=2, objects_per_image=2, image_size=96),
            *generate("count_control", 1, seed=3, count_by="shape", image_size=96),
            *generate("text_lookup", 1, seed=3, n_rows=4, image_size=128, font_scale=1)]


def test_question_keys_of_the_builtin_families():
    samples = _samples()
    keys = [question_key(s) for s in samples]
    assert keys[0].startswith("row ") and ", column " in keys[0]
    assert keys[1] == " ".join(samples[1].meta["target"])
    assert keys[2].endswith("s") and keys[2] in samples[2].question  # "circles", the plural the question asks
    assert keys[3] == samples[3].meta["key"]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_key_rows_are_the_key_tokens(tiny_sdpa_eager, family):
    _, _, _, proc = tiny_sdpa_eager(family)
    samples = _samples()
    inputs, amask, starts = encode_teacher_forced(proc, samples)
    rows = key_rows(proc, inputs["input_ids"], starts, samples)
    tok = getattr(proc, "tokenizer", proc)
    for b, s in enumerate(samples):
        r = rows[b][rows[b] >= 0]
        assert r.numel() and bool((r < starts[b]).all()) and torch.equal(r, torch.arange(int(r[0]), int(r[-1]) + 1))
        assert tok.decode(inputs["input_ids"][b, r]).strip() == question_key(s)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_key_row_masses_match_eager_reference(tiny_sdpa_eager, family):
    _, model, eager, proc = tiny_sdpa_eager(family)
    samples = _samples()[:2]
    inputs, amask, starts = encode_teacher_forced(proc, samples)
    inputs = dict(inputs)
    ids = inputs["input_ids"]
    rows = key_rows(proc, ids, starts, samples)
    assert_rows_match_reference(model, eager, inputs, rows, random_region(visual_or_stand_in(model, ids), seed=4))


def test_score_with_key_rows_matches_eager_reference(tiny_sdpa_eager, tmp_path):
    from core_eval.adapters.regions import sample_region_masks

    d, model, eager, proc = tiny_sdpa_eager("llava")
    samples = generate("multi_image_needle", 3, seed=5, n_images=2, objects_per_image=2, image_size=96)
    spec = score(str(d), tmp_path / "spec.json",
                 ScoreConfig(probes="multi_image_needle", n=3, seed=5, batch_size=3, bootstrap=0,
                             knobs={"n_images": 2, "objects_per_image": 2, "image_size": 96}, query_rows="key"),
                 progress=False)
    assert spec.scorer["query_rows"] == "key"
    inputs, _, starts = encode_teacher_forced(proc, samples)
    rows = key_rows(proc, inputs["input_ids"], starts, samples)
    masks = sample_region_masks(proc, inputs, samples, family=adapter_for(model))
    with torch.no_grad():
        ref = eager(**dict(inputs), output_attentions=True)
    want, _ = reference_mass(ref.attentions, rows, masks.target, masks.visual)
    np.testing.assert_allclose(np.asarray(spec.scores["ram"]), want.mean(0).numpy(), atol=1e-5)


def test_probe_without_key_is_refused_before_the_model_loads(tmp_path):
    from core_eval.probes.video import video_needle

    s = video_needle(1, seed=0)[0]
    with pytest.raises(ProbeDataError, match="query_key"):
        question_key(s)
    s.meta["query_key"] = "not in the question"
    with pytest.raises(ProbeDataError, match="does not occur in the question"):
        question_key(s)
    probes = tmp_path / "p.jsonl"
    grid = generate("grid_needle", 1, seed=0)[0]
    custom = ProbeSample(id="custom-0", images=grid.images, question="What is shown?", answer="a shape",
                         boxes=grid.boxes)
    write_jsonl([grid, custom], probes)
    with pytest.raises(ProbeDataError, match="names no key"):  # no model at this path: refused first
        score(str(tmp_path / "no_model"), tmp_path / "spec.json",
              ScoreConfig(probes=str(probes), n=2, query_rows="key"), progress=False)


def test_meta_query_key_overrides():
    s = generate("grid_needle", 1, seed=0)[0]
    s.meta["query_key"] = "the grid"
    assert question_key(s) == "the grid"
