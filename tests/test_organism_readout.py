"""Read-out items of the organism's training (core_eval/organism/readout.py): the pairs follow the
probe's own layout, the item is the real prompt up to its last image, every answer is a target."""

from __future__ import annotations

import json
import random

import pytest

from core_eval.organism.readout import READOUT_FAMILIES, encode_readout, readout_pairs

FAMS = READOUT_FAMILIES


@pytest.fixture(scope="module")
def processor():
    from core_eval.organism.train import DEFAULTS, build_processor, build_tokenizer

    c = {**DEFAULTS, "tokenizer": "v2", "image_labels": True,
         "pool": {"grid_needle": 1, "text_table": 1}}
    return build_processor(build_tokenizer(c))


def _samples(fam, n=4):
    from core_eval.organism.data import make_samples

    return make_samples(fam, n, seed=11, style="lm_eval")


@pytest.mark.parametrize("fam", FAMS)
def test_pairs_follow_the_probe_layout(fam):
    """Each pair is checked against the sample's own metadata, independently of how it was built."""
    for s in _samples(fam):
        pairs = readout_pairs(s)
        assert pairs and len({q for q, _ in pairs}) == len(pairs)
        m = s.meta
        for q, a in pairs:
            if fam == "text_table":
                assert {r["key"]: r["value"] for r in m["rows"]}[q] == a
            elif fam == "multi_image_needle":  # the object is in image a and in no other
                holds = [k + 1 for k, objs in enumerate(m["objects"]) if any(o["type"] == q for o in objs)]
                assert holds == [int(a)]
            elif fam == "grid_needle":
                r, c = (int(x) for x in q.split())
                assert m["cells"][(r - 1) * m["knobs"]["grid"] + (c - 1)] == a
            else:
                assert sum(o["type"].startswith(q + " ") for o in m["objects"]) == int(a)
        if fam == "count_control":  # every object is counted once
            assert sum(int(a) for _, a in pairs) == len(m["objects"])
        if fam == "multi_image_needle":  # the needle is one of them, with the probe's answer
            assert (" ".join(m["target"]), s.answer) in pairs


@pytest.mark.parametrize("fam", FAMS)
def test_item_is_the_prompt_up_to_its_last_image_then_query_answer_pairs(processor, fam):
    from core_eval.organism.train import N_VIS, encode_item

    tok = processor.tokenizer
    img = tok.convert_tokens_to_ids("<image>")
    for s in _samples(fam, 2):
        it = encode_readout(processor, s, list(range(len(s.images))), random.Random(0), 6)
        full = encode_item(processor, s, [])
        cut = max(i for i, t in enumerate(full.ids) if t == img) + 2  # the last image and its newline
        assert it.ids[:cut] == full.ids[:cut] and it.ids.count(img) == N_VIS * len(s.images)
        assert len(it.spans) == 6 and it.feats == list(range(len(s.images)))
        pairs = dict(readout_pairs(s))
        prev = cut
        for a, b in it.spans:  # query tokens, then its answer's: nothing else between the pairs
            q = tok.decode(it.ids[prev:a])
            assert pairs[q] == tok.decode(it.ids[a:b])
            prev = b
        assert prev == len(it.ids)


def test_check_config_refuses_before_any_work():
    from core_eval.organism.train import DEFAULTS, check_config

    with pytest.raises(ValueError, match="readout:text_needle.*unknown.*readout:text_table"):
        check_config({**DEFAULTS, "pool": {"readout:text_needle": 4}, "batch": {}})
    with pytest.raises(ValueError, match=r"\['readout:grid_needle'\] have no pool entry"):
        check_config({**DEFAULTS, "phases": [], "batch": {"grid_needle": 2, "readout:grid_needle": 2}})
    check_config({**DEFAULTS, "pool": {"grid_needle": 4, "readout:grid_needle": 4}, "phases": [],
                  "batch": {"grid_needle": 2, "readout:grid_needle": 2}})


def test_training_with_readout_items(tmp_path):
    """Read-out families in pool and batch at toy size: trained on, validated, logged."""
    from core_eval.organism.train import main

    pools = '{"text_table": 12, "readout:text_table": 12, "readout:multi_image_needle": 6}'
    phases = '[{"steps": 1, "batch": {"readout:text_table": 2}}, {"steps": 1, "batch": {"text_table": 2}}]'
    main(["--out", str(tmp_path / "o"), "--steps", "3", "--set", f"phases={phases}", "--set", "s1_steps=2", "--set", "val_n=3",
          "--set", "val_every=2", "--set", "final_n=1", "--set", "tokenizer=\"v2\"",
          "--set", 's1_pool={"text_table": 8}', "--set", f"pool={pools}", "--set", "readout_asks=5",
          "--set", 'batch={"text_table": 2, "readout:text_table": 2, "readout:multi_image_needle": 1}'])
    log = json.loads((tmp_path / "o" / "training_log.json").read_text())
    assert log["stage2"]["steps_done"] == 3
    assert {"readout:text_table", "readout:multi_image_needle"} <= set(log["stage2"]["val"][-1])
    fresh = log["stage1"]["fresh_patch_acc_by_family"]["text_table"]  # glyph targets on fresh tables
    assert set(fresh) == {"key", "value"} and all(0 <= v <= 1 for v in fresh.values())


def test_multi_image_variants_draw_from_the_configured_ranges():
    """Small scenes for the multi-image curriculum; the v1 recipe's ranges draw exactly what it drew
    (one randint), so its random stream is unchanged."""
    from core_eval.organism.train import V1_RECIPE, knob_variant

    rng, ref = random.Random(5), random.Random(5)
    for _ in range(20):
        k = knob_variant("multi_image_needle", rng, V1_RECIPE["mi_variant"])
        assert k["objects_per_image"] == 4 and k["n_images"] == ref.randint(2, 3)
    assert rng.random() == ref.random()
    ranges = {"n_images": [2, 4], "objects_per_image": [1, 4]}
    seen = {(k["n_images"], k["objects_per_image"])
            for k in (knob_variant("multi_image_needle", rng, ranges) for _ in range(400))}
    assert seen == {(n, o) for n in (2, 3, 4) for o in (1, 2, 3, 4)}


def test_phases_change_the_mixture_in_turn():
    from core_eval.organism.train import DEFAULTS, Mixture, check_config

    a, b = {"text_table": 4, "readout:text_table": 4}, {"grid_needle": 6}
    c = {**DEFAULTS, "pool": {"grid_needle": 8, "text_table": 8, "readout:text_table": 8},
         "phases": [{"steps": 2, "batch": a}, {"steps": 3, "batch": b}]}
    check_config(c)
    at = Mixture(c)
    assert [at(s) for s in range(7)] == [a, a, b, b, b, b, b]  # the last phase lasts to the end
    assert at.ends == [{"phase": 0, "ended_at_step": 2, "why": "steps"}]
    assert Mixture({**c, "phases": []})(0) == c["batch"]
    with pytest.raises(ValueError, match=r"phases\[1\] families \['count_control'\] have no pool entry"):
        check_config({**c, "phases": [{"steps": 2, "batch": a}, {"steps": 1, "batch": {"count_control": 2}}]})
    with pytest.raises(ValueError, match=r"phases\[0\] must be"):
        check_config({**c, "phases": [{"steps": 0, "batch": a}]})
    with pytest.raises(ValueError, match=r"phases\[0\] must be"):
        check_config({**c, "phases": [{"step": 2, "batch": a}]})
    with pytest.raises(ValueError, match=r"phases\[0\] must be"):
        check_config({**c, "phases": [{"steps": 2, "batch": a, "untill": {"text_table": 0.9}}]})
    with pytest.raises(ValueError, match=r"phases\[0\] until families \['count_control'\] have no pool"):
        check_config({**c, "phases": [{"steps": 2, "batch": a, "until": {"count_control": 0.9}}]})


def test_a_phase_ends_when_its_held_out_accuracy_is_reached():
    """``until``: the phase ends at the first validation where every named family has reached its
    accuracy (here after step 3 of a phase allowed 100), not at a fixed step; the steps cap still holds."""
    from core_eval.organism.train import DEFAULTS, Mixture

    a, b, d = {"text_table": 4}, {"grid_needle": 6}, {"grid_needle": 2, "text_table": 2}
    c = {**DEFAULTS, "phases": [{"steps": 100, "batch": a, "until": {"text_table": 0.9, "grid_needle": 0.2}},
                                {"steps": 2, "batch": b, "until": {"grid_needle": 0.9}}, {"steps": 1, "batch": d}]}
    at = Mixture(c)
    got = [at(0), at(1)]
    at.observe(2, {"text_table": 0.95, "grid_needle": 0.1})   # grid below its bar: the phase goes on
    got += [at(2)]
    at.observe(3, {"text_table": 0.9, "grid_needle": 0.2})
    got += [at(3), at(4)]
    at.observe(5, {"text_table": 0.9, "grid_needle": 0.5})   # below: phase 1 then ends on its steps cap
    got += [at(s) for s in range(5, 8)]
    assert got == [a, a, a, b, b, d, d, d]
    assert [(e["phase"], e["ended_at_step"]) for e in at.ends] == [(0, 3), (1, 5)]
    assert "until" in at.ends[0]["why"] and at.ends[1]["why"] == "steps"
    at.observe(8, {"text_table": 1.0, "grid_needle": 1.0})   # the last phase never ends
    assert at(9) == d and len(at.ends) == 2


def test_training_restores_the_callers_torch_state(tmp_path):
    """train() sets deterministic algorithms and its thread count; a caller (a test process, a
    notebook) gets its own back, so later work does not run under them."""
    import torch

    from core_eval.organism.train import main

    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(False)  # whatever an earlier test left
    main(["--out", str(tmp_path / "o"), "--steps", "1", "--threads", str(threads + 1), "--set", "phases=[]", "--set", "s1_steps=1",
          "--set", "val_n=2", "--set", "final_n=1", "--set", 's1_pool={"grid_needle": 4}',
          "--set", 'pool={"grid_needle": 4}', "--set", 'batch={"grid_needle": 2}'])
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads


def test_labelled_pools_draw_their_own_knobs():
    """``"<family>@<label>"`` pool entries (a multi-image scene-size curriculum): each is built with
    ``knobs["<family>@<label>"]`` over the task's knobs, read-outs of it too; the plain entry keeps
    the task's 4 images."""
    from core_eval.organism import TASK_KNOBS
    from core_eval.organism.train import DEFAULTS, build_model, build_pool, build_processor, build_tokenizer

    c = {**DEFAULTS, "pool": {"multi_image_needle": 1}}
    tok = build_tokenizer(c)
    proc = build_processor(tok)
    model = build_model(tok, c)
    knobs = {"multi_image_needle@2x1": {"n_images": 2, "objects_per_image": 1}}
    sizes = {"multi_image_needle": 3, "multi_image_needle@2x1": 5, "readout:multi_image_needle@2x1": 4}
    pool = build_pool(model, proc, sizes, 100, varied_frac={}, rng_seed=1, knobs=knobs,
                      turns={"multi_image_needle": 1})
    image_id = proc.tokenizer.convert_tokens_to_ids(proc.image_token)
    n_images = {k: {len(v[0].feats) for v in items} for k, items in pool.items.items()}
    assert n_images == {"multi_image_needle": {TASK_KNOBS["multi_image_needle"]["n_images"]},
                        "multi_image_needle@2x1": {2}, "readout:multi_image_needle@2x1": {2}}
    for k, items in pool.items.items():
        for variants in items:
            for it in variants:
                assert it.ids.count(image_id) == 16 * len(it.feats)
    # the labelled chat items answer "1" or "2" (which of two images), with the family's turns
    answers = {proc.tokenizer.decode(it.ids[s:e - 1]) for v in pool.items["multi_image_needle@2x1"]
               for it in v for s, e in it.spans[:1]}
    assert answers <= {"1", "2"} and answers
    assert any(len(it.spans) == 2 for v in pool.items["multi_image_needle@2x1"] for it in v)  # turns


def test_check_config_refuses_labelled_pools_without_their_knobs():
    from core_eval.organism.train import DEFAULTS, check_config

    # the shipped curriculum's labelled pools and phases replaced by one labelled pool of our own
    pool = {**{k: v for k, v in DEFAULTS["pool"].items() if "@" not in k}, "multi_image_needle@3x1": 8}
    c = {**DEFAULTS, "pool": pool, "knobs": {}, "phases": []}
    with pytest.raises(ValueError, match=r"'multi_image_needle@3x1' is a labelled pool, but knobs has no"):
        check_config(c)
    with pytest.raises(ValueError, match=r"knobs\['multi_image_needle@3x1'\].*which_image' needs n_images >= 2"):
        check_config({**c, "knobs": {"multi_image_needle@3x1": {"n_images": 1}}})
    with pytest.raises(ValueError, match=r"knobs entries \['grid_needle@big'\] name no pool"):
        check_config({**DEFAULTS, "knobs": {**DEFAULTS["knobs"], "grid_needle@big": {"grid": 5}}})
    with pytest.raises(ValueError, match=r"until families \['multi_image_needle@2x2'\] have no pool entry"):
        check_config({**c, "knobs": {"multi_image_needle@3x1": {"n_images": 3}},
                      "phases": [{"steps": 2, "batch": {"multi_image_needle@3x1": 2},
                                  "until": {"multi_image_needle@2x2": 0.8}}]})
    check_config(DEFAULTS)   # the shipped recipe passes
    check_config({**DEFAULTS, "pool": {**{k: v for k, v in pool.items() if "@" not in k},
                                       "multi_image_needle@2x1": 8, "readout:multi_image_needle@2x1": 8},
                  "knobs": {"multi_image_needle@2x1": {"n_images": 2, "objects_per_image": 1}},
                  "phases": [{"steps": 2, "batch": {"readout:multi_image_needle@2x1": 2},
                              "until": {"multi_image_needle@2x1": 0.8}}]})
