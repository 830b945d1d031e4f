"""`core-eval report --overlays N`: attention overlays of the samples an ablation lost."""

from __future__ import annotations

import io

from PIL import Image

from core_eval.probes import load_probe
from core_eval.probes.tasks import resolve_probes
from core_eval.report import build_report
from report_fixtures import summary, synthetic_lm_eval_run


def test_overlays_show_the_lost_samples_of_each_ablated_run(tmp_path, tiny_dir):
    from core_eval.report_overlays import add_overlay_sections, lost_doc_ids

    model = str(tiny_dir("llava"))
    base = [1, 1, 0, 1, 1, 1]
    top = [1, 0, 0, 1, 0, 1]  # lost docs 1 and 4; doc 2 was never right
    synthetic_lm_eval_run(tmp_path / "runs", model=model, values={"core_grid_needle": {"exact_match": base}},
                          summary=summary(model, "none", 0), timestamp="2030-01-01T00-00-00.000001")
    synthetic_lm_eval_run(tmp_path / "runs", model=model, values={"core_grid_needle": {"exact_match": top}},
                          summary=summary(model, "top", 2, k=2), timestamp="2030-01-01T00-00-00.000002")
    rep = build_report([tmp_path / "runs"], n_boot=50)
    (run,) = [r for r in rep.runs if (r.intervention.summary or {}).get("n_heads")]
    assert lost_doc_ids(rep, run, "core_grid_needle") == [1, 4]
    names = add_overlay_sections(rep, 1)
    assert len(names) == 1 and rep.sections[names[0]].doc_id.tolist() == [1]
    family, knobs, task = resolve_probes("core_grid_needle")
    expected = load_probe(family, n=2, seed=task.eval_seed, **knobs)[1]
    row = rep.sections[names[0]].iloc[0]
    assert row.probe_id == expected.id and row.answer == expected.answer and row.heads_drawn == "0:0;0:1"
    assert Image.open(io.BytesIO(rep.figures[names[0]])).size[0] > 0
    out = rep.write(tmp_path / "report")
    assert names[0] in (out / "report.md").read_text()
    assert add_overlay_sections(rep, 0) == []


def test_report_cli_overlays_flag(tmp_path, tiny_dir):
    from core_eval.report.cli import main

    model = str(tiny_dir("llava"))
    synthetic_lm_eval_run(tmp_path / "runs", model=model, values={"core_grid_needle": {"exact_match": [1, 1, 1]}},
                          summary=summary(model, "none", 0), timestamp="2030-01-01T00-00-00.000001")
    synthetic_lm_eval_run(tmp_path / "runs", model=model, values={"core_grid_needle": {"exact_match": [0, 1, 1]}},
                          summary=summary(model, "top", 1, k=1), timestamp="2030-01-01T00-00-00.000002")
    assert main([str(tmp_path / "runs"), "-o", str(tmp_path / "rep"), "--overlays", "2", "--n-boot", "50"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "rep" / "plots").glob("overlay-*.png"))
    assert len(pngs) == 1 and pngs[0].endswith("core_grid_needle-0.png")
