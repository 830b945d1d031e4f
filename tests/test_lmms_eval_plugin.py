"""`lmms-eval --model core` through the real console script, its probe tasks and its output reader.

The runs use a tiny random Qwen2.5-VL (``base=qwen2_5_vl``, lmms-eval's own class) on the CPU:
``device_map=cpu`` because lmms-eval's Qwen classes move inputs to ``"cuda"`` when
``device_map="auto"``.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core_eval.adapters import shape_from_config
from core_eval.loading import load_config
from core_eval.spec import spec_from_scores

pytestmark = pytest.mark.subprocess  # runs harness CLIs in subprocesses (README: -m 'not subprocess')

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
TASKS = ("core_grid_needle", "core_video_needle")
LIMIT = 3


def env(tmp: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "CORE_EVAL_CACHE": str(tmp / "cache"), "HF_DATASETS_CACHE": str(tmp / "hfds")}


def run(tmp: Path, *args, check=True):
    cmd = [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(tmp), cwd=tmp, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    return proc


def lmms_eval(tmp: Path, model: str, model_args: str, out: Path, tasks=TASKS, check=True):
    folder = run(tmp, BIN / "core-eval", "tasks-path", "--harness", "lmms-eval").stdout.strip()
    return run(tmp, BIN / "lmms-eval", "--model", model, "--model_args", model_args, "--tasks", ",".join(tasks),
               "--include_path", folder, "--limit", LIMIT, "--device", "cpu", "--batch_size", 1, "--log_samples",
               "--output_path", out, check=check)


def results(out: Path) -> dict:
    (path,) = glob.glob(str(out / "*" / "*_results.json"))
    return json.loads(Path(path).read_text())


def responses(out: Path, task: str) -> dict[int, str]:
    (path,) = glob.glob(str(out / "*" / f"*_samples_{task}.jsonl"))
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return {r["doc_id"]: r["filtered_resps"] for r in rows}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir):
    """Three lmms-eval runs of one tiny Qwen2.5-VL on an image and a video probe task: the unwrapped
    lmms-eval model, ``core`` with ``heads=none``, and ``core`` with half the heads zeroed."""
    tmp = tmp_path_factory.mktemp("lmms")
    d = tiny_dir("qwen2_5_vl")
    shape = shape_from_config(load_config(d))
    ram = np.random.default_rng(3).random((shape.num_layers, shape.num_heads))
    spec = spec_from_scores({"ram": ram}, {"name": str(d)}, {"name": "ram-v1", "note": "random test scores"},
                            shape=shape, frac=0.5).write(tmp / "spec.json")
    out = {name: tmp / name for name in ("plain", "none", "top")}
    lmms_eval(tmp, "qwen2_5_vl", f"pretrained={d},device_map=cpu", out["plain"])
    lmms_eval(tmp, "core", f"pretrained={d},device_map=cpu,base=qwen2_5_vl,heads=none", out["none"])
    lmms_eval(tmp, "core", f"pretrained={d},device_map=cpu,head_spec={spec},heads=top,frac=0.5,ablation=zero",
              out["top"])
    out["lm_eval"] = tmp / "lm_eval"  # the unmodified model in lm-eval, on the same probe samples
    run(tmp, BIN / "lm_eval", "--model", "hf-multimodal", "--model_args", f"pretrained={d}", "--tasks", TASKS[0],
        "--include_path", run(tmp, BIN / "core-eval", "tasks-path").stdout.strip(), "--limit", LIMIT,
        "--batch_size", 1, "--apply_chat_template", "--log_samples", "--output_path", out["lm_eval"])
    return {"tmp": tmp, "model": d, "spec": spec, **out}


def test_heads_none_gives_exactly_the_unwrapped_lmms_eval_model(runs):
    for task in TASKS:
        plain, none = responses(runs["plain"], task), responses(runs["none"], task)
        assert len(plain) == LIMIT and plain == none, task
    assert results(runs["none"])["results"] == results(runs["plain"])["results"]


def test_an_ablated_run_differs_on_images_and_on_video(runs):
    for task in TASKS:
        assert responses(runs["top"], task) != responses(runs["none"], task), task


def test_the_intervention_is_recorded_in_the_results_json(runs):
    none, top = results(runs["none"])["config"]["core_eval"], results(runs["top"])["config"]["core_eval"]
    assert none["selection"]["rule"] == "none" and none["n_heads"] == 0
    assert top["selection"]["rule"] == "top" and top["variant"]["name"] == "zero"
    shape = top["shape"]
    assert top["n_heads"] == round(0.5 * shape["num_layers"] * shape["num_heads"]) > 0
    assert top["harness"] == "lmms-eval" and top["base"]["name"] == "qwen2_5_vl"  # picked from the config
    assert top["spec"]["path"] == str(runs["spec"]) and top["model"]["name_or_path"] == str(runs["model"])
    assert "core_eval" not in results(runs["plain"])["config"]
    # run folders named after the intervention, as core_hf and core-vlmeval name theirs
    (folder,) = [p.name for p in runs["none"].iterdir()]
    assert folder.endswith("__baseline")
    (folder,) = [p.name for p in runs["top"].iterdir()]
    assert f"__zero-top{top['n_heads']}-s0-" in folder


def test_bad_model_args_fail_before_weights_with_the_valid_list(runs):
    tmp, d = runs["tmp"], runs["model"]
    proc = lmms_eval(tmp, "core", f"pretrained={d},device_map=cpu,heads=top,frac=0.1,windw=8", tmp / "bad",
                     tasks=TASKS[:1], check=False)
    # lmms-eval 0.7.3's CLI catches every exception (unless --verbosity DEBUG), prints it and exits 0
    err = proc.stdout + proc.stderr
    assert "Error during evaluation" in err and "unknown model_args ['windw']" in err
    for valid in ("head_spec", "window", "ablation", "base", "max_pixels", "device_map"):
        assert valid in err, valid
    assert "Loading weights" not in err and not (tmp / "bad").exists()


@pytest.mark.parametrize("args,message", [
    ("base=nosuch", "base='nosuch' is not one of"),
    ("heads=top", "head_spec"),
    ("heads=0:99", "out of range"),
    ("ablation=nosuch,heads=0:1", "nosuch"),
    ("k=2.5,heads=top", "k=2.5 is not a valid int"),
])
def test_each_bad_argument_is_refused_before_weights(tiny_dir, monkeypatch, args, message):
    from core_eval.integrations import lmms_eval as plugin
    from core_eval.options import ModelArgsError

    loads = []
    monkeypatch.setattr(plugin, "_wrapped", lambda base: loads.append(base))
    from lmms_eval.utils import simple_parse_args_string

    kwargs = simple_parse_args_string(args)  # lmms-eval's own parsing: "2.5" arrives as a float
    with pytest.raises((ModelArgsError, ValueError)) as err:
        plugin.CoreLMMS(pretrained=str(tiny_dir("qwen2_5_vl")), device_map="cpu", **kwargs)
    assert message in str(err.value) and not loads


def test_the_core_model_is_found_through_the_entry_point():
    code = ("from lmms_eval.models import get_model\n"
            "print(get_model('core').__name__, get_model('qwen2_5_vl').__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split()[-2:] == ["CoreLMMS", "Qwen2_5_VL"]


# ----------------------------------------------------------------------------- tasks

def test_lmms_tasks_have_the_lm_eval_tasks_samples_prompts_and_metrics(tmp_path, monkeypatch):
    import yaml

    from core_eval.integrations import lmms_eval_tasks as lt
    from core_eval.probes.tasks import probe_tasks

    monkeypatch.setenv("CORE_EVAL_CACHE", str(tmp_path))
    lm = lt.lm_eval_utils()
    names = set(probe_tasks())
    folder = lt.write_tasks()
    written = {p.stem for p in folder.glob("*.yaml")}
    assert names | set(lt.VIDEO_TASKS) <= written
    for name in ("core_grid_needle", "core_multi_image_needle", "core_doc_needle", "core_count_control"):
        mine = lt.docs(name).select(range(3))
        theirs = lm.probe_dataset(**lt._read_yaml(lt.tasks_dir() / f"{name}.yaml")["dataset_kwargs"])["test"]
        for doc, ref in zip(mine, theirs):
            assert doc["id"] == ref["id"] and doc["answer"] == ref["answer"]
            assert "<image>" in lm.doc_to_text(ref)
            assert lt.doc_to_text(doc) == lm.doc_to_text(ref).replace("<image>", "")
            assert len(lt.doc_to_visual(doc)) == ref["n_images"]
            assert lt.process_results(doc, [ref["answer"]]) == lm.process_results(ref, [ref["answer"]])
        cfg = yaml.safe_load((folder / f"{name}.yaml").read_text().split("process_docs:")[0])
        assert cfg["generation_kwargs"]["max_new_tokens"] == 16 and cfg["metric_list"][0]["metric"] == "exact_match"
    # the group of the lm-eval catalog is there, with the same members
    group = yaml.safe_load((folder / "core_probes.yaml").read_text())
    assert group["task"] == yaml.safe_load((lt.tasks_dir() / "core_probes.yaml").read_text())["task"]
    assert lt.write_tasks() == folder  # written once


def test_video_docs_are_mp4_files_of_the_probe_frames(tmp_path, monkeypatch):
    import decord

    from core_eval.integrations import lmms_eval_tasks as lt
    from core_eval.probes import load_probe

    monkeypatch.setenv("CORE_EVAL_CACHE", str(tmp_path))
    monkeypatch.setitem(lt.VIDEO_TASKS, "core_video_needle", ("video_needle", 2, 1000, {}))
    docs = lt.docs("core_video_needle")
    ref = load_probe("video_needle", n=2, seed=1000)
    assert docs["id"] == [s.id for s in ref]
    (path,) = lt.doc_to_visual(docs[0])
    frames = decord.VideoReader(path)
    v = ref[0].videos[0]
    assert len(frames) == len(v.frames) and frames[0].shape[:2] == (v.size[1], v.size[0])
    # lossy codec: the frames read back are close to the drawn ones
    err = np.abs(frames[0].asnumpy().astype(float) - np.asarray(v.frames[0].convert("RGB"), dtype=float)).mean()
    assert err < 12, err


def test_tasks_path_lmms_eval_writes_the_folder_where_asked(tmp_path):
    proc = run(tmp_path, BIN / "core-eval", "tasks-path", "--harness", "lmms-eval", "--dir", tmp_path / "t")
    assert Path(proc.stdout.strip()) == tmp_path / "t" and (tmp_path / "t" / "core_grid_needle.yaml").is_file()
    bad = run(tmp_path, BIN / "core-eval", "tasks-path", "--dir", tmp_path / "u", check=False)
    assert bad.returncode != 0 and "--harness lmms-eval" in bad.stderr


# ----------------------------------------------------------------------------- report

def test_the_reporter_reads_lmms_eval_folders(runs):
    from core_eval.report.readers import load_runs

    by_dir = {}
    for r in load_runs([runs["plain"], runs["none"], runs["top"]]):
        by_dir[Path(r.path).parent.parent.name] = r
    assert set(by_dir) == {"plain", "none", "top"}
    top, plain = by_dir["top"], by_dir["plain"]
    assert top.source == "lmms_eval" and top.intervention.summary["selection"]["rule"] == "top"
    assert plain.intervention.summary is None and plain.model == str(runs["model"])
    assert set(top.tasks) == set(TASKS) and set(top.tasks_with_samples) == set(TASKS)
    em = top.samples[(top.samples.task == "core_grid_needle") & (top.samples.metric == "exact_match")]
    assert len(em) == LIMIT and em.doc_id.tolist() == ["0", "1", "2"]
    assert set(top.metrics.metric) == {"exact_match", "relaxed_match"}  # no *_stderr_clt rows


# ----------------------------------------------------------------------------- every base

@pytest.mark.parametrize("family,base", [("qwen2_5_vl", "qwen2_5_vl"), ("qwen3_vl", "qwen3_vl"),
                                         ("llava", "llava_hf"), ("llava_onevision", "llava_onevision"),
                                         ("idefics3", "auto")])
def test_each_base_carries_the_intervention_core_eval_load_applies(tiny_dir, family, base):
    """The base class loads the weights; the model it runs then gives core_eval.load's logits."""
    import torch

    import core_eval
    from core_eval.integrations.lmms_eval import CoreLMMS
    from core_eval.testing import example_inputs

    d = tiny_dir(family)
    lm = CoreLMMS(pretrained=str(d), base=base, device="cpu", device_map="cpu", heads="0:1;1:0", ablation="zero") \
        if base != "auto" else CoreLMMS(pretrained=str(d), base=base, device="cpu", heads="0:1;1:0", ablation="zero")
    assert lm.core_summary["n_heads"] == 2 and lm.core_summary["base"]["name"] == base
    ref = core_eval.load(d, heads="0:1;1:0", ablation="zero", dtype=lm._model.dtype)
    plain = core_eval.load(d, heads="none", dtype=lm._model.dtype)
    inputs = example_inputs(d, batch=1, processor=ref.processor)
    with torch.no_grad():
        mine, theirs, none = (m(**inputs).logits.float() for m in (lm._model, ref.model, plain.model))
    assert torch.equal(mine, theirs) and not torch.equal(mine, none)


def test_the_auto_base_answers_image_and_video_requests(tmp_path, monkeypatch, tiny_dir):
    """``base=auto`` (core_eval's generic class): generation through the chat template, and a
    loglikelihood equal to the teacher-forced log-probability of the continuation."""
    from types import SimpleNamespace

    import torch

    from core_eval.integrations import lmms_eval_tasks as lt
    from core_eval.integrations.lmms_eval import CoreLMMS
    from core_eval.integrations.lmms_eval_auto import _Request
    from core_eval.prompting import encode_teacher_forced

    monkeypatch.setenv("CORE_EVAL_CACHE", str(tmp_path))
    monkeypatch.setitem(lt.VIDEO_TASKS, "core_video_needle", ("video_needle", 2, 1000, {}))
    lm = CoreLMMS(pretrained=str(tiny_dir("qwen2_5_vl")), base="auto", device="cpu", dtype="float32", heads="none")
    for task in ("core_grid_needle", "core_video_needle"):
        ds = lt.docs(task).select(range(2))
        lm.task_dict = {task: {"test": ds}}
        gen = lm.generate_until([SimpleNamespace(args=(lt.doc_to_text(ds[i]), {"until": ["\n\n"], "max_new_tokens": 4},
                                                       lt.doc_to_visual, i, task, "test")) for i in range(2)])
        assert len(gen) == 2 and all(isinstance(g, str) for g in gen)
        (ll, _), = lm.loglikelihood([SimpleNamespace(args=(lt.doc_to_text(ds[0]), " red", lt.doc_to_visual, 0, task,
                                                           "test"))])
        req = lm._request(lt.doc_to_text(ds[0]), lt.doc_to_visual(ds[0]))
        inputs, answer_mask, _ = encode_teacher_forced(lm.processor, [_Request(req.question, req.images, req.videos,
                                                                                " red")])
        with torch.no_grad():
            logp = torch.log_softmax(lm._model(**inputs).logits[0].float(), -1)
        pos = answer_mask[0].nonzero().flatten()
        ref = float(logp[pos - 1, inputs["input_ids"][0, pos]].sum())
        assert ll == pytest.approx(ref, abs=1e-4) and ll < 0
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([])


def test_the_report_joins_an_lm_eval_and_an_lmms_eval_run_of_the_same_probes(runs):
    """The lmms-eval ablated run has no lmms-eval baseline here: it pairs with lm-eval's run of the
    unmodified model on the same probe samples (doc ids), with a note saying so."""
    from core_eval.report import build_report

    rep = build_report([runs["lm_eval"], runs["top"]], n_boot=200)
    rows = rep.comparison[(rep.comparison.metric == "exact_match") & (rep.comparison.task == TASKS[0])]
    (row,) = rows.itertuples()
    assert (row.harness, row.n, row.rule) == ("lmms_eval", LIMIT, "top")
    lm = json.loads(next((runs["lm_eval"]).glob("*/samples_*.jsonl")).read_text().splitlines()[0])
    assert lm["doc"]["id"].startswith("grid_needle-s1000-")  # lm-eval's doc 0 is the probe the lmms task's doc 0 is
    assert rep.notes.message.str.contains("baseline from another harness").any()
