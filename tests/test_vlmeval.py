"""VLMEvalKit integration: core models and probe datasets through VLMEvalKit's own runner.

Real ``vlmeval`` (PyPI ``nvidia-vlmeval``), real tiny checkpoints, nothing mocked. The end-to-end
runs go through the launcher in a subprocess (``python -m core_eval.integrations.vlmeval``, the
``core-vlmeval`` entry point): VLMEvalKit's ``run.main`` does inference, exact-matching
evaluation and its file layout. The models are random, so scores are ~0: the runs assert on
structure, names, records, and on per-sample equality with ``lm_eval --model core_hf``; the
reporter's values are checked on copies with chosen predictions, scored again by VLMEvalKit.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import vlmeval  # noqa: F401  (the real package: a missing install fails here)
from PIL import Image

from core_eval.report.sample_keys import sample_key  # reports name VLMEvalKit's core_x-n8 as core_x
from core_eval.integrations import vlmeval as cv
from core_eval.integrations.vlmeval import _common
from core_eval.probes import generate

pytestmark = pytest.mark.subprocess  # runs harness CLIs in subprocesses (README: -m 'not subprocess')

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "task_configs"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}
ENV.pop("MMEVAL_ROOT", None)
HEADS = "0:0;0:1;1:2"
N = 3
RUNS = {"llava": "core_grid_needle", "qwen2_vl": "core_multi_image_needle"}  # family -> probe task (1 / 4 images)
ABLATED = re.compile(r"core-(llava|qwen2_vl)-tiny__zero-explicit3-s0-[0-9a-f]{8}")


def launch(*args, env=None, check=True):
    cmd = [sys.executable, "-m", "core_eval.integrations.vlmeval", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def lmu(tmp_path, monkeypatch):
    root = tmp_path / "LMUData"
    monkeypatch.setenv("LMUData", str(root))
    monkeypatch.delenv("MMEVAL_ROOT", raising=False)
    return root


# ----------------------------------------------------------------------------- datasets

def test_datasets_mirror_the_lm_eval_probe_tasks():
    names = cv.dataset_names()
    for task in ["core_grid_needle", "core_multi_image_needle", "core_text_lookup", "core_count_control",
                 "core_grid_needle_8x8", "core_multi_image_needle_8img", "core_count_control_dense"]:
        assert task in names
    assert not any(n.startswith("core_text_needle") for n in names)  # text-only tasks: no images
    g = cv.probe_dataset("core_grid_needle")
    assert (g.family, g.n, g.seed, g.kind) == ("grid_needle", 100, 1000, "vqa")
    assert g.knobs == {"grid": 4, "image_size": 448, "n_distractor_types": 4, "confusable": False}
    assert (g.max_gen_toks, g.until) == (16, ("\n\n",))
    small = cv.probe_dataset("core_grid_needle_mc-n8-s7")
    assert (small.n, small.seed, small.kind, small.task) == (8, 7, "mcq", "core_grid_needle")
    assert cv.probe_dataset("core_grid_needle-x") is None and cv.probe_dataset("MMBench_DEV_EN") is None
    assert _common.expand_data_names(["core_probes-n5", "OCRBench"]) == [
        "core_grid_needle-n5", "core_multi_image_needle-n5", "core_text_lookup-n5", "core_count_control-n5",
        "OCRBench"]
    for name in names + list(cv.dataset_groups()):  # names VLMEvalKit would route to special judges
        low = name.lower()
        assert not any(t in low for t in ("mmbench", "circular", "mathvista", "mmcr", "ccbench")), name
    with pytest.raises(ValueError, match="special judges"):
        _common.check_dataset_name("core_MMBench_like")


def test_tsv_round_trips_through_vlmeval_build_dataset(lmu):
    from vlmeval.dataset import build_dataset

    names = cv.register_datasets(["core_multi_image_needle-n2", "core_text_lookup-n2", "core_grid_needle_mc-n2"])
    multi, text, mc = (build_dataset(n) for n in names)
    assert (lmu / "core_multi_image_needle-n2.tsv").is_file()
    assert type(multi).__name__ == "CoreProbeDataset" and multi.TYPE == "VQA" and len(multi) == 2
    assert type(mc).__name__ == "CoreProbeMCQDataset" and mc.TYPE == "MCQ"

    ref = generate("multi_image_needle", 2, seed=1000, **cv.probe_dataset("core_multi_image_needle").knobs)
    msgs = multi.build_prompt(multi.data.iloc[1])
    assert [m["type"] for m in msgs] == ["image"] * 4 + ["text"]
    assert msgs[-1]["value"] == ref[1].question + "\nAnswer the question using a single word or phrase."
    for m, im in zip(msgs, ref[1].images):  # lossless: exactly the generator's pixels
        assert m["value"].endswith(".png") and m["value"].startswith(str(lmu))  # not ~/LMUData
        assert np.array_equal(np.asarray(Image.open(m["value"]).convert("RGB")), np.asarray(im))

    ref_text = generate("text_lookup", 2, seed=1000, **cv.probe_dataset("core_text_lookup").knobs)
    assert list(text.data["answer"]) == [s.answer for s in ref_text]  # codes stay strings ("0412" != 412)

    row = mc.data.iloc[0]
    options = [row[c] for c in "ABCD"]
    assert len(set(options)) == 4 and row[row["answer"]] == row["answer_text"]
    grid = generate("grid_needle", 1, seed=1000, **cv.probe_dataset("core_grid_needle").knobs)[0]
    assert row["answer_text"] == grid.answer
    prompt = mc.build_prompt(row)[-1]["value"]  # VLMEvalKit's own MCQ prompt
    assert "Options:\nA. " in prompt and "Answer with" not in prompt


# ----------------------------------------------------------------------------- names and arguments

def test_run_names_encode_the_intervention_without_loading_weights(weightless):
    d = str(weightless)
    assert cv.model_name("core-llava-tiny", pretrained=d) == "core-llava-tiny__baseline"
    assert cv.model_name(pretrained=d, heads="none", ablation="mean") == "core-weightless__baseline"
    a = cv.model_name("m", pretrained=d, heads=HEADS)
    assert re.fullmatch(r"m__zero-explicit3-s0-[0-9a-f]{8}", a)
    assert cv.model_name("m", pretrained=d, heads="1:2;0:1;0:0") == a  # same mask, same name
    assert cv.model_name("m", pretrained=d, heads="0:0;0:1;1:3") != a
    assert cv.model_name("m", pretrained=d, heads=HEADS, ablation="uniform").startswith("m__uniform-explicit3-")
    assert cv.model_name("m", pretrained=d, heads=HEADS, max_new_tokens=64).endswith("-mnt64")
    # a sparse pattern with no full heads changes every head: never named (or read as) a baseline
    assert re.fullmatch(r"m__streaming-none0-s0-[0-9a-f]{8}", cv.model_name("m", pretrained=d, sparse="streaming"))


@pytest.mark.parametrize("args,needle", [
    ("head_sepc=x.json", "unknown argument(s) ['head_sepc']"),
    ("heads=9:0", "layer 9 is out of range"),
    ("heads=1:0,ablation=zeroo", "unknown mask variant 'zeroo'"),
    ("heads=1:0,frac=lots", "frac='lots' is not a valid float"),
    ("heads=top", "needs a head spec"),
])
def test_bad_model_args_fail_before_weights_load(weightless, tmp_path, capsys, args, needle):
    rc = cv.main(["--data", "core_grid_needle-n1", "--model-args", f"pretrained={weightless},{args}",
                  "--work-dir", str(tmp_path / "out")])
    assert rc == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.xlsx"))


def test_work_dir_with_other_settings_under_the_same_name_is_refused(weightless, tmp_path):
    d = str(weightless)
    name = cv.register_core_model("m", work_dir=tmp_path, pretrained=d, heads=HEADS)
    import vlmeval.config

    assert vlmeval.config.supported_VLM[name].keywords["heads"] == HEADS
    core, load = _common.split_model_args({"pretrained": d, "heads": HEADS})
    ident = _common.run_identity(cv.make_plan(d, core), core, load)
    (tmp_path / name).mkdir()
    (tmp_path / name / cv.RECORD_FILE).write_text(json.dumps({"identity": ident}))
    assert cv.register_core_model("m", work_dir=tmp_path, pretrained=d, heads=HEADS) == name  # same settings: fine
    with pytest.raises(cv.WorkDirConflict, match="silently reuse"):
        cv.register_core_model("m", work_dir=tmp_path, pretrained=d, heads=HEADS, dtype="bfloat16")


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def vlmeval_runs(tmp_path_factory, tiny_dir):
    """family -> (work dir, LMUData, model dir, stdout): baseline + ablated, probe + MCQ, N samples."""
    cache = {}

    def get(family):
        if family not in cache:
            root = tmp_path_factory.mktemp(f"vlmeval_{family}")
            d = tiny_dir(family)
            proc = launch("--data", f"{RUNS[family]}-n{N}", f"core_grid_needle_mc-n{N}",
                          "--model", f"core-{family}-tiny", "--model-args", f"pretrained={d}",
                          "--model-args", f"pretrained={d},heads={HEADS},ablation=zero,log_prompts=true",
                          "--work-dir", root / "out", env={"LMUData": str(root / "LMUData")})
            cache[family] = (root / "out", root / "LMUData", d, proc.stdout)
        return cache[family]

    return get


def _models(out: Path, family: str) -> tuple[str, str]:
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith(f"core-{family}-tiny__"))
    assert len(names) == 2, names
    base, abl = (names if names[0].endswith("__baseline") else names[::-1])
    return base, abl


def _pred_file(out, model, data, suffix=".xlsx"):
    (path,) = glob.glob(str(out / model / "T*" / f"{model}_{data}{suffix}"))
    return Path(path)


@pytest.mark.parametrize("family", list(RUNS))
def test_vlmeval_runner_end_to_end_baseline_and_ablated(vlmeval_runs, family):
    out, lmu, _, stdout = vlmeval_runs(family)
    base, abl = _models(out, family)
    assert base == f"core-{family}-tiny__baseline" and ABLATED.fullmatch(abl)
    assert stdout.count(": ok") == 4 and "FAILED" not in stdout
    probe, mcq = f"{RUNS[family]}-n{N}", f"core_grid_needle_mc-n{N}"
    assert (lmu / f"{probe}.tsv").is_file() and (lmu / f"{mcq}.tsv").is_file()
    preds = {}
    for m in (base, abl):
        # probe (VQA): predictions, per-sample scores, means
        p = pd.read_excel(_pred_file(out, m, probe))
        assert list(p["index"]) == list(range(N)) and "prediction" in p
        preds[m] = [str(x) for x in p["prediction"]]
        s = pd.read_excel(_pred_file(out, m, probe, "_score.xlsx"))
        assert len(s) == N and set(s["exact_match"]) <= {0, 1} and set(s["relaxed_match"]) <= {0, 1}
        acc = pd.read_csv(_pred_file(out, m, probe, "_acc.csv"))
        assert acc["n"].tolist() == [N] and acc["exact_match"].iloc[0] == s["exact_match"].mean()
        # MCQ through VLMEvalKit's ImageMCQDataset.evaluate with the exact_matching judge
        r = pd.read_excel(_pred_file(out, m, mcq, "_exact_matching_result.xlsx"))
        assert len(r) == N and set(r["hit"]) <= {0, 1} and set(r["answer"]) <= set("ABCD")
        macc = pd.read_csv(_pred_file(out, m, mcq, "_acc.csv"))
        assert "Overall" in macc and macc["Overall"].iloc[0] == r["hit"].mean()
        # the intervention record sits next to the (symlinked) prediction files
        rec = json.loads((out / m / cv.RECORD_FILE).read_text())
        assert rec["name"] == m and (out / m / f"{m}_{probe}.xlsx").exists()
        core = rec["core_eval"]
        assert core["family"] == family and core["model_args"]["pretrained"]
        if m == base:
            assert core["n_heads"] == 0 and core["selection"]["rule"] == "none"
        else:
            assert core["n_heads"] == 3 and core["heads"] == [[0, 0], [0, 1], [1, 2]]
            assert core["variant"]["name"] == "zero" and core["selection"]["rule"] == "explicit"
    assert preds[base] != preds[abl]  # the mask really was applied inside VLMEvalKit


@pytest.fixture(scope="module")
def vlmeval_specs(tmp_path_factory, tiny_dir):
    """One launcher run of tiny LLaVA on core_grid_needle-n2 with a head spec: heads=top,k=2 zeroed,
    the same heads kept full under sparse=streaming, and streaming on every head."""
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config
    from core_eval.spec import spec_from_scores

    root = tmp_path_factory.mktemp("vlmeval_specs")
    d = tiny_dir("llava")
    shape = shape_from_config(load_config(d))
    ram = np.random.default_rng(5).random((shape.num_layers, shape.num_heads))
    spec = spec_from_scores({"ram": ram}, {"name": str(d)}, {"name": "ram-v1"}, shape=shape, frac=0.25)
    spec_path = spec.write(root / "spec.json")
    stream = "sparse=streaming,sink=1,window=4"
    proc = launch("--data", "core_grid_needle-n2", "--model", "core-llava-tiny",
                  "--model-args", f"pretrained={d},head_spec={spec_path},heads=top,k=2",
                  "--model-args", f"pretrained={d},head_spec={spec_path},heads=top,k=2,{stream}",
                  "--model-args", f"pretrained={d},{stream}",
                  "--work-dir", root / "out", env={"LMUData": str(root / "LMUData")})
    top2 = sorted(divmod(int(i), shape.num_heads) for i in np.argsort(-ram, axis=None)[:2])
    return root / "out", spec.content_hash(), [list(h) for h in top2], proc.stdout


def test_vlmeval_runs_spec_selected_and_sparse_interventions(vlmeval_specs, vlmeval_runs):
    out, spec_hash, top2, stdout = vlmeval_specs
    assert stdout.count(": ok") == 3 and "FAILED" not in stdout
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    pattern = r"core-llava-tiny__(zero-top2|streaming-top2|streaming-none0)-s0-[0-9a-f]{8}"
    assert len(names) == 3 and all(re.fullmatch(pattern, n) for n in names), names
    base_out, _, _, _ = vlmeval_runs("llava")
    base = pd.read_excel(_pred_file(base_out, "core-llava-tiny__baseline", f"core_grid_needle-n{N}"))
    records = {}
    for m in names:
        core = json.loads((out / m / cv.RECORD_FILE).read_text())["core_eval"]
        records[m.split("__")[1].rsplit("-s0-", 1)[0]] = core
        preds = pd.read_excel(_pred_file(out, m, "core_grid_needle-n2"))
        assert list(preds["index"]) == [0, 1] and preds["prediction"].notna().all()
        assert [str(x) for x in preds["prediction"]] != [str(x) for x in base["prediction"][:2]], m
    zero, hybrid, stream = records["zero-top2"], records["streaming-top2"], records["streaming-none0"]
    assert zero["heads"] == top2 and zero["variant"]["name"] == "zero" and zero["spec"]["hash"] == spec_hash
    assert zero["selection"]["rule"] == "top" and zero["selection"]["k"] == 2
    assert hybrid["heads"] == top2 and hybrid["variant"]["kind"] == "sparse" and hybrid["spec"]["hash"] == spec_hash
    assert {k: hybrid["variant"]["options"][k] for k in ("sink", "window")} == {"sink": 1, "window": 4}
    assert stream["n_heads"] == 0 and stream["variant"]["name"] == "streaming"  # every head sparse: no baseline
    from core_eval.report import load_run

    runs = {r.name: r for r in load_run(out, source="vlmeval")}
    assert not any(r.is_baseline for r in runs.values())
    assert sorted(r.intervention.variant for r in runs.values()) == ["streaming", "streaming", "zero"]


def test_run_vlmeval_python_api(tiny_dir, lmu, tmp_path):
    """`run_vlmeval` in this process: its result paths, and `check` turning a failure VLMEvalKit only
    logs (a text-only model given images) into an error."""
    from vlmeval.smp import load

    work = tmp_path / "out"
    name = cv.register_core_model("api", work_dir=work, pretrained=tiny_dir("llava"), heads="0:1", ablation="zero")
    res = cv.run_vlmeval(["core_grid_needle-n1"], [name], work_dir=work)
    r = res[(name, "core_grid_needle-n1")]
    assert Path(r["predictions"]).parent.parent == work / name and Path(r["scores"]).name.endswith("_score.xlsx")
    assert len(load(r["predictions"])) == 1 and load(r["scores"])["exact_match"].tolist() == \
        pd.read_csv(r["acc"])["exact_match"].tolist()
    assert json.loads(Path(r["record"]).read_text())["core_eval"]["heads"] == [[0, 1]]
    text = cv.register_core_model("api-text", work_dir=work, pretrained=tiny_dir("llama"))
    with pytest.raises(cv.VLMEvalRunError, match=rf"{text} x core_grid_needle-n1: predictions"):
        cv.run_vlmeval(["core_grid_needle-n1"], [text], work_dir=work)


def test_rerun_with_other_settings_under_the_same_name_is_refused(vlmeval_runs):
    out, lmu, d, _ = vlmeval_runs("llava")
    proc = launch("--data", f"core_grid_needle-n{N}", "--model", "core-llava-tiny",
                  "--model-args", f"pretrained={d},heads={HEADS},ablation=zero,dtype=bfloat16",
                  "--work-dir", out, env={"LMUData": str(lmu)}, check=False)
    assert proc.returncode == 2 and "silently reuse" in proc.stderr


def _lm_eval_samples(out: Path, task: str) -> dict[int, dict]:
    (path,) = glob.glob(str(out / "*" / f"samples_{task}_*.jsonl"))
    return {r["doc_id"]: r for r in map(json.loads, Path(path).read_text().splitlines())}


def _png_sha256(path) -> str:  # lm-eval's convert_pil_to_hash
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return hashlib.sha256(buf.getvalue()).hexdigest()


@pytest.mark.parametrize("family,mask", [("llava", "ablated"), ("qwen2_vl", "ablated"), ("qwen2_vl", "baseline")])
def test_same_predictions_as_lm_eval_core_hf(vlmeval_runs, tmp_path, family, mask):
    """Same model, mask, probe docs, prompt text, images and greedy settings in both harnesses."""
    from vlmeval.smp import dump, load

    out, lmu, d, _ = vlmeval_runs(family)
    base, abl = _models(out, family)
    task = RUNS[family]
    model_args = f"pretrained={d}" + (f",heads={HEADS},ablation=zero" if mask == "ablated" else "")
    lm_out = tmp_path / "lm"
    cmd = [str(BIN / "lm_eval"), "--model", "core_hf", "--model_args", model_args, "--tasks", task,
           "--include_path", str(TASKS), "--apply_chat_template", "--log_samples", "--limit", str(N),
           "--batch_size", "1", "--output_path", str(lm_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lm = _lm_eval_samples(lm_out, task)
    assert sorted(lm) == list(range(N))

    m = abl if mask == "ablated" else base
    probe = f"{task}-n{N}"
    vl = pd.read_excel(_pred_file(out, m, probe)).set_index("index")
    ds = cv.probe_dataset(probe)
    for i in range(N):
        args = lm[i]["arguments"]["gen_args_0"]
        assert args["arg_1"]["max_gen_toks"] == ds.max_gen_toks and tuple(args["arg_1"]["until"]) == ds.until
        # the same images (lm-eval logs sha256 of each image re-encoded as PNG)
        names = vl.loc[i, "image_path"]
        names = eval(names) if str(names).startswith("[") else [names]  # VLMEvalKit's own list format
        assert args["arg_2"]["visual"] == [_png_sha256(lmu / "images" / probe / n) for n in names]
        # the same answer: VLMEvalKit's stored prediction == lm-eval's response after VLMEvalKit's own
        # xlsx round trip (xlsx escapes control characters such as \x03 as "_x0003_")
        rt = tmp_path / f"rt{i}.xlsx"
        dump(pd.DataFrame({"prediction": [lm[i]["resps"][0][0]]}), str(rt))
        expected = load(str(rt))["prediction"].iloc[0]
        got = vl.loc[i, "prediction"]
        assert ("" if pd.isna(got) else str(got)) == ("" if pd.isna(expected) else str(expected)), i
    if mask == "ablated":  # exact prompt text and raw generation, from the wrapper's prompt log
        logged = [json.loads(x) for x in (out / m / "core_eval_prompts.jsonl").read_text().splitlines()]
        logged = [x for x in logged if x["dataset"] == probe]
        assert len(logged) == N
        for i, x in enumerate(logged):
            assert x["prompt"] == lm[i]["arguments"]["gen_args_0"]["arg_0"]
            assert x["prediction"] == lm[i]["resps"][0][0]


def _scores(run, task: str, metric: str) -> pd.Series:
    s = run.samples[(run.samples.task == task) & (run.samples.metric == metric)]
    return pd.Series(s.value.to_numpy(), index=s.doc_id.astype(int)).sort_index()


def _file_scores(path: Path, metric: str) -> pd.Series:
    df = pd.read_excel(path)
    return pd.Series(df[metric].astype(float).to_numpy(), index=df["index"].astype(int)).sort_index()


@pytest.mark.parametrize("family", list(RUNS))
def test_reporter_reads_the_real_vlmeval_outputs(vlmeval_runs, family):
    """`core-eval report` takes every per-sample score and mean from the files VLMEvalKit's runner wrote."""
    from core_eval.report import load_run

    out, _, _, _ = vlmeval_runs(family)
    probe, mcq = f"{RUNS[family]}-n{N}", f"core_grid_needle_mc-n{N}"
    for m in _models(out, family):
        (run,) = load_run(out / m, source="vlmeval")
        assert run.notes == []  # nothing recomputed, nothing disagrees
        for metric in ("exact_match", "relaxed_match"):
            expected = _file_scores(_pred_file(out, m, probe, "_score.xlsx"), metric)
            pd.testing.assert_series_equal(_scores(run, sample_key(probe), metric), expected, check_names=False)
            assert run.score(sample_key(probe), metric) == pd.read_csv(_pred_file(out, m, probe, "_acc.csv"))[metric].iloc[0]
        hits = _file_scores(_pred_file(out, m, mcq, "_exact_matching_result.xlsx"), "hit")
        pd.testing.assert_series_equal(_scores(run, sample_key(mcq), "hit"), hits, check_names=False)
        assert run.score(sample_key(mcq), "hit") == hits.mean()
        overall = pd.read_csv(_pred_file(out, m, mcq, "_acc.csv"))["Overall"].iloc[0]
        assert run.score(sample_key(mcq), "Overall", "acc.csv") == overall
        assert set(run.metrics.metric) == {"exact_match", "relaxed_match", "hit", "Overall"}


def _rescored_copy(out: Path, model: str, dst: Path, predictions: dict[str, list[str]]) -> Path:
    """``model``'s eval folder copied to ``dst`` with new predictions, evaluated again by VLMEvalKit's
    own ``dataset.evaluate`` (exact matching), as ``run.main`` does."""
    from vlmeval.dataset import build_dataset
    from vlmeval.smp import dump, load

    (src,) = (out / model).glob("T*")
    tgt = dst / model / src.name
    tgt.mkdir(parents=True)
    shutil.copy(out / model / cv.RECORD_FILE, dst / model)
    for data, preds in predictions.items():
        df = load(str(src / f"{model}_{data}.xlsx"))
        df["prediction"] = preds
        dump(df, str(tgt / f"{model}_{data}.xlsx"))
        build_dataset(data).evaluate(str(tgt / f"{model}_{data}.xlsx"), model="exact_matching", nproc=1)
    return tgt


@pytest.mark.parametrize("family", list(RUNS))
def test_reporter_values_follow_vlmeval_evaluation(vlmeval_runs, tmp_path, monkeypatch, family):
    """Real work dirs with chosen predictions, scored again by VLMEvalKit: per-sample values, means and
    deltas equal those in its files; without the score files the probe metrics give the same."""
    from core_eval.report import build_report, load_run

    out, lmu, _, _ = vlmeval_runs(family)
    monkeypatch.setenv("LMUData", str(lmu))
    probe, mcq = f"{RUNS[family]}-n{N}", f"core_grid_needle_mc-n{N}"
    cv.register_datasets([probe, mcq])
    base, abl = _models(out, family)
    gold = pd.read_excel(_pred_file(out, base, probe), dtype={"answer": str})["answer"].tolist()
    letters = pd.read_excel(_pred_file(out, base, mcq))["answer"].tolist()
    wrong = [next(c for c in "ABCD" if c != a) for a in letters]
    chosen = {  # model -> predictions; expected exact / relaxed / hit below
        base: {probe: [gold[0] + "\nmore text", f"the {gold[1]}", "nothing"], mcq: [letters[0], wrong[1], "nothing"]},
        abl: {probe: ["nothing", gold[1], gold[2]], mcq: letters},
    }
    expected = {base: ([1, 0, 0], [1, 1, 0], [1, 0, 0]), abl: ([0, 1, 1], [0, 1, 1], [1, 1, 1])}
    folders = {m: _rescored_copy(out, m, tmp_path / "work", p) for m, p in chosen.items()}
    runs = {m: load_run(tmp_path / "work" / m, source="vlmeval")[0] for m in chosen}
    for m, (em, rm, hit) in expected.items():
        f = folders[m]
        for metric, want in (("exact_match", em), ("relaxed_match", rm)):
            from_file = _file_scores(f / f"{m}_{probe}_score.xlsx", metric)
            assert from_file.tolist() == want  # VLMEvalKit ran the probe task's own metric
            pd.testing.assert_series_equal(_scores(runs[m], sample_key(probe), metric), from_file, check_names=False)
            assert runs[m].score(sample_key(probe), metric) == pd.read_csv(f / f"{m}_{probe}_acc.csv")[metric].iloc[0]
        hits = _file_scores(f / f"{m}_{mcq}_exact_matching_result.xlsx", "hit")
        assert hits.tolist() == hit
        pd.testing.assert_series_equal(_scores(runs[m], sample_key(mcq), "hit"), hits, check_names=False)
        assert runs[m].score(sample_key(mcq), "Overall", "acc.csv") == pd.read_csv(f / f"{m}_{mcq}_acc.csv")["Overall"].iloc[0]
        assert runs[m].notes == []
    c = build_report([runs[abl]], [runs[base]], n_boot=200).comparison
    for task, metric, filt, (fb, fv) in [
            (probe, "exact_match", "none", [folders[m] / f"{m}_{probe}_score.xlsx" for m in (base, abl)]),
            (probe, "relaxed_match", "none", [folders[m] / f"{m}_{probe}_score.xlsx" for m in (base, abl)]),
            (mcq, "hit", "none", [folders[m] / f"{m}_{mcq}_exact_matching_result.xlsx" for m in (base, abl)])]:
        row = c[(c.task == sample_key(task)) & (c.metric == metric) & (c["filter"] == filt)].iloc[0]
        b, v = pd.read_excel(fb)[metric].mean(), pd.read_excel(fv)[metric].mean()
        assert (row.n, row.stats) == (N, "paired")
        assert row.delta == pytest.approx(v - b) and row.baseline == pytest.approx(b)
    row = c[(c.task == sample_key(mcq)) & (c.metric == "Overall")].iloc[0]
    b, v = (pd.read_csv(folders[m] / f"{m}_{mcq}_acc.csv")["Overall"].iloc[0] for m in (base, abl))
    assert row.delta == pytest.approx(v - b) and row.stats.startswith("aggregate only")
    # no per-sample score files: core_eval.probes.metrics, the same values, and a note
    for f in folders[base].glob("*_score.xlsx"):
        f.unlink()
    (run,) = load_run(tmp_path / "work" / base, source="vlmeval")
    assert _scores(run, sample_key(probe), "exact_match").tolist() == expected[base][0]
    assert _scores(run, sample_key(probe), "relaxed_match").tolist() == expected[base][1]
    assert any("computed by core_eval.probes.metrics" in n for n in run.notes)
