"""lm-eval task configs in ``task_configs/``: YAML parsing, probe datasets, and real ``lm_eval``
runs (console script, subprocess) on tiny random models.

The models are random, so scores are ~0: the runs assert on structure (metrics present, sample
counts, logged docs with boxes, one image placeholder per image in the prompts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess  # runs harness CLIs in subprocesses (README: -m 'not subprocess')

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "task_configs"

VISUAL_TASKS = {  # task -> (family, n_images)
    "core_grid_needle": ("grid_needle", 1),
    "core_multi_image_needle": ("multi_image_needle", 4),
    "core_text_lookup": ("text_lookup", 1),
    "core_count_control": ("count_control", 1),
    "core_grid_needle_8x8": ("grid_needle", 1),
    "core_grid_needle_confusable": ("grid_needle", 1),
    "core_multi_image_needle_8img": ("multi_image_needle", 8),
    "core_multi_image_needle_right_of": ("multi_image_needle", 3),
    "core_text_lookup_24rows": ("text_lookup", 1),
    "core_count_control_dense": ("count_control", 1),
    "core_text_lookup_table": ("text_lookup", 1),
}
STANDALONE = ["core_text_lookup_table"]  # visual tasks in no group
TEXT_TASKS = {"core_text_needle": "generate_until", "core_text_needle_mc": "multiple_choice",
              "core_text_needle_48rows": "generate_until"}
GROUPS = {
    "core_probes": ["core_grid_needle", "core_multi_image_needle", "core_text_lookup",
                    "core_count_control"],
    "core_probes_hard": ["core_grid_needle_8x8", "core_grid_needle_confusable",
                         "core_multi_image_needle_8img", "core_multi_image_needle_right_of",
                         "core_text_lookup_24rows", "core_count_control_dense"],
}


def _boxes_ok(boxes, sizes):
    for b in boxes:
        assert 0 <= b["image"] < len(sizes), b
        w, h = sizes[b["image"]]
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (b, (w, h))


# ----------------------------------------------------------------------------- in-process (fast)

@pytest.mark.parametrize("family,knobs", [
    ("grid_needle", {"grid": 4, "image_size": 448}),
    ("multi_image_needle", {"n_images": 3, "variant": "right_of"}),
    ("text_lookup", {"n_rows": 12}),
    ("count_control", {"n_distractors": 6}),
])
def test_probe_dataset_deterministic_boxes_in_bounds(tu, family, knobs):
    kw = dict(probe_family=family, probe_n=4, probe_seed=1000, probe_knobs=knobs)
    a = tu.probe_dataset(**kw)["test"]
    b = tu.probe_dataset(**kw, pretrained="/some/model", version=1.0)["test"]  # model args ignored
    assert a.num_rows == 4
    assert {"id", "question", "answer", "aliases", "images", "image", "boxes", "family", "meta",
            "n_images"} <= set(a.column_names)
    for da, db in zip(a, b):
        assert {k: da[k] for k in ("id", "question", "answer", "boxes", "meta")} == \
               {k: db[k] for k in ("id", "question", "answer", "boxes", "meta")}
        assert [im.tobytes() for im in da["images"]] == [im.tobytes() for im in db["images"]]
        assert da["family"] == family and da["n_images"] == len(da["images"])
        assert da["image"].tobytes() == da["images"][0].tobytes()
        boxes = json.loads(da["boxes"])
        assert boxes, "every synthetic probe here has a target box"
        _boxes_ok(boxes, [im.size for im in da["images"]])
        assert json.loads(da["meta"])["knobs"].items() >= knobs.items()
    # a different seed gives different probes
    c = tu.probe_dataset(**{**kw, "probe_seed": 1001})["test"]
    assert c["id"] != a["id"]


def test_overrides_from_metadata(tu):
    base = dict(probe_family="grid_needle", probe_n=100, probe_seed=1000,
                probe_knobs={"grid": 4, "image_size": 448})
    r = tu.resolve_probe_args(**base, pretrained="x", seed=7)  # a model arg named seed: ignored
    assert r == {"family": "grid_needle", "n": 100, "seed": 1000,
                 "knobs": {"grid": 4, "image_size": 448}}
    r = tu.resolve_probe_args(**base, core_probe_n=5, core_probe_seed="3",
                              core_probe_knobs={"image_size": 336, "n_rows": 20,
                                                "grid_needle": {"grid": 6},
                                                "count_control": {"max_count": 9}})
    assert r == {"family": "grid_needle", "n": 5, "seed": 3,
                 "knobs": {"grid": 6, "image_size": 336}}  # n_rows: a text_lookup knob
    r = tu.resolve_probe_args(**base, core_probe_knobs={"grid_needle": {"grid": 5}, "grid": 8})
    assert r["knobs"]["grid"] == 5  # the family-specific entry wins whatever the order
    r = tu.resolve_probe_args(**base, core_probe_knobs='{"confusable": true}')
    assert r["knobs"]["confusable"] is True
    with pytest.raises(ValueError, match="neither a probe family nor a knob"):
        tu.resolve_probe_args(**base, core_probe_knobs={"gridd": 5})
    with pytest.raises(ValueError, match="probe_family"):
        tu.resolve_probe_args(probe_family="nope")


def test_text_needle_dataset(tu):
    ds = tu.text_needle_dataset(probe_n=5, probe_seed=1000, probe_knobs={"n_rows": 8})["test"]
    assert "images" not in ds.column_names and "image" not in ds.column_names
    vis = tu.probe_dataset(probe_family="text_lookup", probe_n=5, probe_seed=1000,
                           probe_knobs={"n_rows": 8})["test"]
    for d, v in zip(ds, vis):
        assert d["id"] == v["id"] and d["boxes"] == v["boxes"] and d["answer"] == v["answer"]
        s, e = d["text_span"]
        assert d["context"][s:e] == d["answer"]
        assert d["choices"][d["label"]] == d["answer"] and len(set(d["choices"])) == 8
        lines = d["context"].splitlines()
        assert lines[0] == tu.TEXT_PAGE_TITLE and len(lines) == 9
        key = json.loads(d["meta"])["key"]
        assert f"{key}: {d['answer']}" in lines and key in d["question"]
        _boxes_ok(json.loads(d["boxes"]), [v["image"].size])


def test_prompt_and_metrics(tu):
    doc = {"n_images": 3, "question": "Which image contains a red circle?"}
    p = tu.doc_to_text(doc)
    assert p.startswith("<image><image><image>Which image") and p.count("<image>") == 3
    assert p.endswith(tu.ANSWER_INSTRUCTION)
    doc = {"answer": "3", "aliases": ["three"]}
    assert tu.process_results(doc, [" Three\nbecause ..."]) == {"exact_match": 1.0, "relaxed_match": 1.0}
    assert tu.process_results(doc, ["There are 3."]) == {"exact_match": 0.0, "relaxed_match": 1.0}
    assert tu.process_results(doc, [""]) == {"exact_match": 0.0, "relaxed_match": 0.0}


def test_yamls_parse_and_build():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False,
                     metadata={"core_probe_n": 3})
    assert set(VISUAL_TASKS) | set(TEXT_TASKS) <= set(tm.all_subtasks)
    assert set(GROUPS) <= set(tm.all_groups)
    loaded = tm.load(list(GROUPS) + list(TEXT_TASKS) + STANDALONE)
    assert set(loaded["tasks"]) == set(VISUAL_TASKS) | set(TEXT_TASKS)
    assert {g: sorted(c) for g, c in loaded["group_map"].items()} == \
           {g: sorted(c) for g, c in GROUPS.items()}
    for name, task in loaded["tasks"].items():
        cfg = task.config
        kw = cfg.dataset_kwargs
        assert kw["probe_n"] == 100 and kw["probe_seed"] == 1000, name  # YAML defaults
        docs = list(task.test_docs())
        assert len(docs) == 3, name  # core_probe_n from metadata
        assert cfg.test_split == "test" and task.config.num_fewshot in (None, 0)
        for doc in docs:
            assert isinstance(json.loads(doc["boxes"]), list)
            text = task.doc_to_text(doc)
            if name in VISUAL_TASKS:
                family, n_images = VISUAL_TASKS[name]
                assert cfg.output_type == "generate_until" and task.MULTIMODAL
                assert doc["family"] == family and doc["n_images"] == n_images
                images = task.doc_to_image(doc)
                assert len(images) == n_images == text.count("<image>"), name
                assert all(hasattr(im, "size") for im in images), name  # flat list of images
                assert text.endswith(doc["question"] + "\n" + "Answer the question using a "
                                     "single word or phrase.")
                assert task.doc_to_target(doc) == doc["answer"]
                gk = cfg.generation_kwargs
                assert gk["do_sample"] is False and gk["max_gen_toks"] <= 32 and gk["until"]
            else:
                assert cfg.output_type == TEXT_TASKS[name] and "<image>" not in text
                assert text.startswith("RECORD SHEET\n") and text.endswith("\nAnswer:")
                assert doc["context"] in text and doc["question"] in text
                if cfg.output_type == "multiple_choice":
                    assert task.doc_to_choice(doc) == doc["choices"]
                    assert task.doc_to_target(doc) == doc["label"]
                else:
                    assert task.doc_to_target(doc) == doc["answer"]


# ----------------------------------------------------------------------------- real lm_eval runs

def _lm_eval_exe() -> Path:
    exe = Path(sys.executable).parent / ("lm_eval.exe" if os.name == "nt" else "lm_eval")
    assert exe.exists(), f"lm_eval console script not found next to {sys.executable}: install lm-eval (.ci/setup)"
    return exe


def run_lm_eval(tmp_path: Path, model: str, pretrained: Path, tasks: str, limit: int,
                *extra: str) -> tuple[dict, dict[str, list[dict]]]:
    out = tmp_path / "out"
    cmd = [str(_lm_eval_exe()), "--model", model, "--model_args", f"pretrained={pretrained}",
           "--tasks", tasks, "--include_path", str(TASK_DIR), "--limit", str(limit),
           "--batch_size", "2", "--log_samples", "--output_path", str(out), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"lm_eval failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    results = list(out.rglob("results_*.json"))
    assert len(results) == 1, results
    res = json.loads(results[0].read_text())
    samples = {}
    for f in out.rglob("samples_*.jsonl"):
        task = f.name[len("samples_"):].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return res, samples


def check_generation_task(res, samples, task, limit, image_token=None):
    r = res["results"][task]
    assert {"exact_match,none", "relaxed_match,none"} <= set(r), r
    assert 0.0 <= r["exact_match,none"] <= r["relaxed_match,none"] <= 1.0
    assert res["n-samples"][task]["effective"] == limit
    assert res["higher_is_better"][task] == {"exact_match": True, "relaxed_match": True}
    assert len(samples[task]) == limit
    assert sorted(s["doc_id"] for s in samples[task]) == list(range(limit))
    for s in samples[task]:
        doc = s["doc"]
        boxes = json.loads(doc["boxes"])
        assert boxes and all(0 <= b["image"] < doc.get("n_images", 1) for b in boxes)
        assert set(s["metrics"]) == {"exact_match", "relaxed_match"}
        assert s["target"] == doc["answer"]
        if image_token is not None:  # one image placeholder per image survives templating
            prompt = s["arguments"]["gen_args_0"]["arg_0"]
            assert prompt.count(image_token) == doc["n_images"], prompt
            assert len(s["arguments"]["gen_args_0"]["arg_2"]["visual"]) == doc["n_images"]


def test_lm_eval_llava_grid_needle(tmp_path, tiny_dir):
    res, samples = run_lm_eval(tmp_path, "hf-multimodal", tiny_dir("llava"), "core_grid_needle", 4,
                               "--apply_chat_template")
    check_generation_task(res, samples, "core_grid_needle", 4, image_token="<image>")
    assert res["n-samples"]["core_grid_needle"]["original"] == 100
    cfg = res["configs"]["core_grid_needle"]
    assert cfg["dataset_kwargs"]["probe_family"] == "grid_needle"
    assert cfg["generation_kwargs"]["do_sample"] is False


def test_lm_eval_qwen2_vl_multi_image(tmp_path, tiny_dir):
    res, samples = run_lm_eval(tmp_path, "hf-multimodal", tiny_dir("qwen2_vl"),
                               "core_multi_image_needle", 4, "--apply_chat_template")
    check_generation_task(res, samples, "core_multi_image_needle", 4,
                          image_token="<|vision_start|><|image_pad|><|vision_end|>")
    assert all(s["doc"]["n_images"] == 4 for s in samples["core_multi_image_needle"])


def test_lm_eval_group_core_probes(tmp_path, tiny_dir):
    # --metadata also exercises the run-time override (20 probes generated instead of 100)
    res, samples = run_lm_eval(tmp_path, "hf-multimodal", tiny_dir("qwen2_vl"), "core_probes", 2,
                               "--apply_chat_template", "--metadata", '{"core_probe_n": 20}')
    for task in GROUPS["core_probes"]:
        check_generation_task(res, samples, task, 2,
                              image_token="<|vision_start|><|image_pad|><|vision_end|>")
        assert res["n-samples"][task]["original"] == 20
    g = res["groups"]["core_probes"]
    assert {"exact_match,none", "relaxed_match,none"} <= set(g), g
    assert sorted(res["group_subtasks"]["core_probes"]) == sorted(GROUPS["core_probes"])


def test_lm_eval_text_needle_hf(tmp_path, tiny_dir):
    res, samples = run_lm_eval(tmp_path, "hf", tiny_dir("llama"),
                               "core_text_needle,core_text_needle_mc", 3)
    check_generation_task(res, samples, "core_text_needle", 3)
    r = res["results"]["core_text_needle_mc"]
    assert {"acc,none", "acc_norm,none"} <= set(r), r
    assert res["n-samples"]["core_text_needle_mc"]["effective"] == 3
    assert len(samples["core_text_needle_mc"]) == 3
    for s in samples["core_text_needle_mc"] + samples["core_text_needle"]:
        doc = s["doc"]
        assert json.loads(doc["boxes"]) and "images" not in doc
        start, end = doc["text_span"]
        assert doc["context"][start:end] == doc["answer"]
        prompt = s["arguments"]["gen_args_0"]["arg_0"]
        assert doc["context"] in prompt and "<image>" not in prompt
    for s in samples["core_text_needle_mc"]:  # one loglikelihood request per candidate value
        choices = s["doc"]["choices"]
        assert len(s["arguments"]) == len(choices) == 8
        assert [a["arg_1"] for a in s["arguments"].values()] == [" " + c for c in choices]
        assert str(s["target"]) == str(s["doc"]["label"])  # logged as a string
