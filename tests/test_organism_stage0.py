"""The organism's own tokenizer and the stage-0 text-recall data and loop (no shipped weights)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from core_eval.organism.data import make_samples
from core_eval.prompting import prompt_text


def _corpus() -> list[str]:
    texts = ["USER: ", " ASSISTANT:"] * 20
    for fam in ("text_needle", "multi_image_needle"):
        for s in make_samples(fam, 40, seed=5):
            texts += [s.question, s.answer]
    return texts


@pytest.fixture(scope="module")
def toks():
    from core_eval.organism.tokenizer import build_tokenizer

    return {k: build_tokenizer(_corpus(), vocab_size=400, kind=k) for k in ("v1", "v2")}


def _same_tokens_everywhere(tok, text: str, words: list[str]) -> bool:
    """Every occurrence of every word in ``text`` is exactly the tokens of the word alone."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    for w in words:
        alone = tok(w, add_special_tokens=False)["input_ids"]
        at = text.find(w)
        assert at >= 0, w
        while at >= 0:
            covering = [i for i, (a, b) in zip(ids, offs) if a < at + len(w) and b > at]
            if covering != alone:
                return False
            at = text.find(w, at + 1)
    return True


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_keys_and_values_are_the_same_tokens_in_table_question_and_answer(toks, kind):
    """v2: a key is the same tokens in the page and the question, a value the same in the page
    and the answer; the shipped pre-tokenization (v1) glues the space to them and fails."""
    from core_eval.organism.train import build_processor

    proc = build_processor(toks[kind])
    ok = []
    for s in make_samples("text_needle", 6, seed=1000):
        text = prompt_text(proc, s) + s.answer
        words = [r["key"] for r in s.meta["rows"]] + [r["value"] for r in s.meta["rows"]]
        ok.append(_same_tokens_everywhere(proc.tokenizer, text, words))
    assert all(ok) if kind == "v2" else not any(ok)


def test_tokenizer_round_trips_text(toks):
    text = "USER: <image>\nWhat is  the value of V?\tB7 ASSISTANT:4AYP"
    tok = toks["v2"]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.tokenize(" ") == ["Ġ"]
    with pytest.raises(ValueError, match="pre-tokenizer"):
        from core_eval.organism.tokenizer import pre_tokenizer
        pre_tokenizer("v3")


def test_chat_template_renders_as_llava():
    from jinja2 import Environment

    from core_eval.organism.tokenizer import chat_template
    from core_eval.testing._tokenizer import LLAVA_TEMPLATE

    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q?"}]},
            {"role": "assistant", "content": "A"}, {"role": "user", "content": "again?"}]
    env = Environment()

    def render(t):
        return env.from_string(t).render(messages=msgs, add_generation_prompt=True)

    assert render(chat_template()) == render(LLAVA_TEMPLATE)
    labelled = render(chat_template(image_labels=True))
    assert "USER: Image 1: <image>\nImage 2: <image>\nQ? " in labelled


def test_default_recipe_still_builds_the_shipped_tokenizer():
    """``tokenizer="v1"`` (the default) learns the shipped weights' vocabulary and merges."""
    from core_eval.organism import organism_dir
    from core_eval.organism.train import DEFAULTS, build_tokenizer

    shipped = json.loads((organism_dir() / "tokenizer.json").read_text())["model"]
    built = json.loads(build_tokenizer(dict(DEFAULTS)).backend_tokenizer.to_str())["model"]
    assert built["vocab"] == shipped["vocab"] and built["merges"] == shipped["merges"]


def test_mqar_supervises_every_queried_value():
    from core_eval.organism.stage0 import mqar_items

    keys, values = list(range(10, 30)), list(range(100, 116))
    for N in (2, 8, 16):
        for it in mqar_items(random.Random(N), 5, N, keys, values, bos=1):
            ids = it.ids
            assert ids[0] == 1 and len(ids) == 1 + 2 * N + 4 * N
            ctx = dict(zip(ids[1:2 * N + 1:2], ids[2:2 * N + 2:2]))
            assert len(ctx) == N and set(ctx) <= set(keys) and set(ctx.values()) <= set(values)
            assert len(it.spans) == 2 * N
            for s0, s1 in it.spans:  # the value after each queried key, nothing else
                assert s1 == s0 + 1 and ids[s0] == ctx[ids[s0 - 1]]
    with pytest.raises(ValueError, match="key tokens"):
        mqar_items(random.Random(0), 1, 32, keys, values, bos=1)


def test_recall_vocab_is_disjoint_and_checked(toks):
    from core_eval.organism.stage0 import recall_vocab

    k, v = recall_vocab(toks["v2"], 16, 64)
    assert len(set(k)) == 16 and len(set(v)) == 64 and not set(k) & set(v)
    assert not set(k + v) & set(toks["v2"].all_special_ids)
    with pytest.raises(ValueError, match="usable tokens"):
        recall_vocab(toks["v2"], 300, 300)


@pytest.mark.parametrize("family", ["table", "which"])
def test_text_items_ask_every_key_once_with_the_right_answers(toks, family):
    from core_eval.organism.stage0 import table_samples, text_items, which_samples
    from core_eval.organism.train import build_processor

    proc = build_processor(toks["v2"])
    tok = proc.tokenizer
    for seed in (3, 4):  # both table kinds
        make = table_samples if family == "table" else which_samples
        pairs = make(8, 3, seed, random.Random(0))
        items = text_items(proc, family, 8, 3, seed, random.Random(0))
        for (s, more), it in zip(pairs, items):
            answers = [s.answer] + [a for _, a in more]
            got = [tok.decode(it.ids[a:b]) for a, b in it.spans]
            assert got == [a + tok.eos_token for a in answers]
            if family == "table":
                truth = {r["key"]: r["value"] for r in s.meta["rows"]}
                asked = [s.meta["key"]] + [q.split("value of ")[1].split("?")[0] for q, _ in more]
                assert sorted(asked) == sorted(truth) and [truth[k] for k in asked] == answers
            else:
                where = {}
                for m, objs in enumerate(s.meta["objects"]):
                    for o in objs:
                        where.setdefault(o["type"], []).append(m + 1)
                for q, a in more:
                    assert where[q.split("contains a ")[1].split("?")[0]] == [int(a)]
                assert "Image 1: " in s.question and not s.images


def _tiny(toks, **over):
    from core_eval.organism.train import DEFAULTS, build_model, build_processor

    c = json.loads(json.dumps(DEFAULTS))
    c.update(lm_hidden=32, lm_heads=4, lm_layers=1, lm_intermediate=64, vision_hidden=32,
             vision_layers=1, vision_heads=2, vision_intermediate=64, s0_steps=6, s0_eval_every=2,
             s0_val_n=4, s0_keys=16, s0_values=16, s0_batch={"mqar": 4, "table": 1, "which": 1},
             s0_levels=[2, 4, 8])
    c.update(over)
    proc = build_processor(toks["v2"])
    return build_model(proc.tokenizer, c), proc, c


def test_stage0_curriculum_advances_at_the_threshold_and_is_deterministic(toks):
    from core_eval.organism.stage0 import stage0

    torch.set_num_threads(1)
    runs = []
    for advance in (0.0, 0.0, 1.01):
        model, proc, c = _tiny(toks, s0_advance=advance)
        rec = {}
        stage0(model, proc, c, rec)
        runs.append((rec["stage0"], [p.detach().clone() for p in model.parameters()]))
    (a, wa), (b, wb), (never, _) = runs
    # threshold 0: every evaluation passes, so N steps up at each one and stops after the last
    assert a["passed"] == [{"N": 2, "step": 2}, {"N": 4, "step": 4}, {"N": 8, "step": 6}]
    assert [p["N"] for p in a["curve"]] == [2, 4, 8]
    assert set(a["curve"][0]["acc"]) == {"mqar", "table", "which"}
    # unreachable threshold: stays at the first level for every step
    assert never["passed"] == [] and {p["N"] for p in never["curve"]} == {2}
    assert a["curve"] == [{**p, "seconds": q["seconds"]} for p, q in zip(b["curve"], a["curve"])]
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    model, proc, c = _tiny(toks, s0_minutes=1e-9)  # its own time cap: stops before a step
    rec = {}
    stage0(model, proc, c, rec)
    assert rec["stage0"]["steps_done"] == 0 and rec["stage0"]["curve"] == []


def test_training_with_stage0_and_recall_in_stage2(tmp_path):
    """The v2 recipe's switches at toy size: stage 0 before the visual stages, a share of text
    recall in stage 2, and the v2 tokenizer saved with the checkpoint."""
    from transformers import AutoTokenizer

    from core_eval.organism.train import main

    pools = '{"grid_needle": 8, "multi_image_needle": 4}'
    main(["--out", str(tmp_path / "o"), "--steps", "2", "--set", "phases=[]", "--set", "s1_steps=1", "--set", "val_n=2",
          "--set", "val_every=2", "--set", "final_n=1", "--set", f"s1_pool={pools}",
          "--set", f"pool={pools}", "--set", 'batch={"grid_needle": 2, "multi_image_needle": 1}',
          "--set", 'tokenizer="v2"', "--set", "s0_steps=3", "--set", "s0_eval_every=3",
          "--set", "s0_val_n=2", "--set", 's0_batch={"mqar": 2, "table": 1, "which": 1}',
          "--set", 's2_recall={"mqar": 2, "table": 1}', "--set", "lm_layers=1"])
    log = json.loads((tmp_path / "o" / "training_log.json").read_text())
    assert log["stage0"]["steps_done"] == 3 and log["stage0"]["curve"][0]["N"] == 2
    assert log["stage2"]["steps_done"] == 2 and log["stage2"]["recall_batches"] == 2
    assert AutoTokenizer.from_pretrained(tmp_path / "o").tokenize("of V?") == ["of", "Ġ", "V", "?"]


def test_sweep_table_lists_when_each_level_passed():
    from core_eval.organism.stage0 import S0_DEFAULTS, sweep_table

    run = {"config": {**S0_DEFAULTS, "lm_layers": 2, "tokenizer": "v2"},
           "stage0": {"passed": [{"N": 2, "step": 200}], "steps_done": 300, "seconds": 12.3,
                      "curve": [{"step": 300, "N": 4, "acc": {"mqar": 0.5}}]}}
    rows = sweep_table({"r": run}).splitlines()
    assert rows[0].startswith("| run | tokenizer | layers") and len(rows) == 3
    assert rows[2] == "| r | v2 | 2 | 256 | mqar 64+table 4+which 4 | 0.002 | 200 | - | - | - | 4: mqar 0.50 | 300 | 12 |"
