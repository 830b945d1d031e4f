"""Dataset sources end to end: ``core-eval score --probes hf:...`` on a tiny model (and its resume),
and the RefCOCO / grounding / document lm-eval tasks (task catalog, dataset hooks, a real
``lm_eval`` run on a tiny model).

Oracles: the scored spec's probe hash equals ``probe_set_hash`` of the reader's own samples; a
resumed run equals an uninterrupted one; the lm-eval docs equal the reader's samples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import probe_data_fixtures as F
from core_eval.cli import main as cli_main
from core_eval.probes import ProbeArgumentError, load_probe, probe_set_hash
from core_eval.probes.tasks import probe_tasks, resolve_probes, source_tasks
from core_eval.scoring.ram import ScoreConfig, score
from core_eval.spec import load_head_spec
from test_task_configs import TASK_DIR, check_generation_task, run_lm_eval


def _rows(n):
    return [(f"q{i}", (48 + 4 * (i % 3), 40), [2.0 + i % 5, 3.0, 20.0, 16.0], [f"object number {i}"])
            for i in range(n)]


def test_score_hf_source_end_to_end(tiny_dir, tmp_path, capsys):
    root = F.write_lmms_lab(tmp_path / "RefCOCOg", rows=_rows(6))
    out = tmp_path / "spec.json"
    rc = cli_main(["score", "--model", str(tiny_dir("llava")), "--probes", f"hf:{root}:val", "--n", "4",
                   "--batch-size", "2", "--out", str(out), "--knobs", '{"template": "rec"}'])
    res = capsys.readouterr()
    assert rc == 0, res.err[-3000:]
    spec = load_head_spec(out)
    sc = spec.scorer
    assert sc["probes"] == f"hf:{root}:val" and sc["knobs"] == {"template": "rec"}
    assert sc["probe_hash"] == probe_set_hash(load_probe(f"hf:{root}:val", n=4, template="rec"))
    assert sc["n_samples"] == 4 and sc["n_used"] == 4  # every box maps to visual tokens
    ram = np.asarray(spec.scores["ram"])
    assert ram.shape == (3, 4) and np.isfinite(ram).all() and (ram > 0).all()
    assert (np.asarray(spec.scores["visual_mass"]) >= ram - 1e-6).all()  # the box is part of the image


class _Killed(Exception):
    pass


def test_score_hf_source_resumes_and_refuses_changed_data(tiny_dir, tmp_path, monkeypatch):
    import core_eval.scoring.ram as R

    model = str(tiny_dir("llava"))
    root = F.write_lmms_lab(tmp_path / "d", rows=_rows(6))
    cfg = ScoreConfig(probes=f"hf:{root}:val", n=6, batch_size=2)
    save = R._atomic_save

    def save_then_die(obj, path):
        save(obj, path)
        if len(list(path.parent.glob("batch_*.pt"))) == 1:
            raise _Killed

    monkeypatch.setattr(R, "_atomic_save", save_then_die)
    with pytest.raises(_Killed):
        score(model, tmp_path / "spec.json", cfg, progress=False)
    monkeypatch.setattr(R, "_atomic_save", save)
    resumed = score(model, tmp_path / "spec.json", cfg, progress=False)
    fresh = score(model, tmp_path / "fresh.json", cfg, progress=False)
    np.testing.assert_allclose(np.asarray(resumed.scores["ram"]), np.asarray(fresh.scores["ram"]), atol=1e-6)
    assert resumed.scorer["probe_hash"] == fresh.scorer["probe_hash"]

    # a partial run, then the dataset changes (one box): the partial run is refused, not mixed in
    monkeypatch.setattr(R, "_atomic_save", save_then_die)
    with pytest.raises(_Killed):
        score(model, tmp_path / "spec2.json", cfg, progress=False)
    monkeypatch.setattr(R, "_atomic_save", save)
    rows = _rows(6)
    rows[5] = (rows[5][0], rows[5][1], [0.0, 0.0, 10.0, 10.0], rows[5][3])
    F.write_lmms_lab(root, rows=rows)
    with pytest.raises(ValueError, match="partial run with different settings, model, probes"):
        score(model, tmp_path / "spec2.json", cfg, progress=False)


def test_task_catalog_knows_the_dataset_tasks():
    src = source_tasks()
    assert set(src) == {"core_refcoco", "core_refcocoplus", "core_refcocog"}
    assert not set(src) & set(probe_tasks())
    assert {"core_doc_needle", "core_doc_needle_page", "core_doc_needle_12p"} <= set(probe_tasks())
    # scoring reads the val split, the task evaluates on test: heads are not chosen on evaluated rows
    family, knobs, task = resolve_probes("core_refcocog")
    assert family == "hf:lmms-lab/RefCOCOg:val" and task.source == "hf:lmms-lab/RefCOCOg:test"
    assert knobs == {"template": "rec"}
    with pytest.raises(ProbeArgumentError, match="reads its data from --metadata core_probe_source"):
        resolve_probes("core_grounding")


def test_source_dataset_hook(tu, tmp_path):
    root = F.write_lmms_lab(tmp_path / "RefCOCOg", splits=("test",))
    with pytest.raises(ValueError, match="core_probe_source"):
        tu.source_dataset(probe_source=None, pretrained="ignored")
    dd = tu.source_dataset(probe_source="hf:lmms-lab/RefCOCOg:test", probe_options={"template": "rec"},
                           core_probe_source=f"hf:{root}:test", core_probe_n=2, pretrained="ignored")
    ds = dd["test"]
    want = load_probe(f"hf:{root}:test", n=2, template="rec")
    assert ds["id"] == [s.id for s in want] and ds["answer"] == [s.answer for s in want]
    assert [json.loads(b) for b in ds["boxes"]] == [[b.to_dict() for b in s.boxes] for s in want]
    # REC metrics: IoU of the generated relative box with the gold one
    doc = ds[0]
    assert tu.rec_results(doc, [doc["answer"]])["iou"] == pytest.approx(1.0)
    x0, y0, x1, y1 = json.loads(doc["answer"])
    half = f"[{x0}, {y0}, {(x0 + x1) / 2}, {y1}]"
    r = tu.rec_results(doc, [half])
    assert r["iou"] == pytest.approx(0.5, abs=1e-9) and r["acc_iou50"] == 1.0 and r["exact_match"] == 0.0
    assert tu.rec_results(doc, ["no box here"]) == {"exact_match": 0.0, "relaxed_match": 0.0, "iou": 0.0,
                                                    "acc_iou50": 0.0}


def test_lm_eval_grounding_and_document_tasks(tmp_path, tiny_dir):
    """``lm_eval`` on a tiny Qwen2-VL: ``core_grounding`` reading a local RefCOCO parquet and
    ``core_refcocog`` pointed at it, plus the generated multi-page documents."""
    root = F.write_lmms_lab(tmp_path / "RefCOCOg", rows=_rows(4), splits=("test",))
    meta = json.dumps({"core_probe_source": f"hf:{root}:test", "core_probe_n": 4})
    tasks = "core_grounding,core_refcocog,core_doc_needle"
    res, samples = run_lm_eval(tmp_path, "hf-multimodal", tiny_dir("qwen2_vl"), tasks, 2,
                               "--apply_chat_template", "--metadata", meta)
    token = "<|vision_start|><|image_pad|><|vision_end|>"
    for task in ("core_grounding", "core_doc_needle"):
        check_generation_task(res, samples, task, 2, image_token=token)
    rec = res["results"]["core_refcocog"]
    assert {"exact_match,none", "relaxed_match,none", "iou,none", "acc_iou50,none"} <= set(rec)
    assert 0.0 <= rec["acc_iou50,none"] <= 1.0 and 0.0 <= rec["iou,none"] <= 1.0
    assert res["n-samples"]["core_refcocog"] == {"original": 4, "effective": 2}
    for s in samples["core_refcocog"]:
        assert set(s["metrics"]) == {"exact_match", "relaxed_match", "iou", "acc_iou50"}
        prompt = s["arguments"]["gen_args_0"]["arg_0"]
        assert prompt.count(token) == 1 and "single word" not in prompt  # the REC prompt states its format
    want = load_probe(f"hf:{root}:test", n=4)
    for task in ("core_grounding", "core_refcocog"):
        for s in samples[task]:
            ref = want[s["doc_id"]]
            assert s["doc"]["id"] == ref.id and s["target"] == ref.answer
            assert json.loads(s["doc"]["boxes"]) == [b.to_dict() for b in ref.boxes]
    for s in samples["core_doc_needle"]:
        assert s["doc"]["n_images"] == 4 and json.loads(s["doc"]["meta"])["evidence_pages"]
    assert (TASK_DIR / "core_refcocog.yaml").is_file()
