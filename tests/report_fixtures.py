"""Helpers for tests/test_report.py: real lm-eval runs on tiny models, edited copies, hand-made outputs.

``run_queues`` runs the real ``lm_eval`` console script (one subprocess per run; queues in
parallel). ``derive_run`` copies a real run and edits it the way a different ``--limit``, a changed
prompt or a missing task would. ``synthetic_lm_eval_run`` writes the lm-eval 0.4.x output format
(results + samples) with chosen per-sample values; ``vlmeval_workdir`` a small VLMEvalKit work dir.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "task_configs"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}


def lm_eval_cmd(model: str, model_args: str, tasks: str, out: Path, limit: int, *extra) -> list[str]:
    return [str(BIN / "lm_eval"), "--model", model, "--model_args", model_args, "--tasks", tasks,
            "--include_path", str(TASKS), "--limit", str(limit), "--output_path", str(out), "--log_samples",
            "--batch_size", "4", *map(str, extra)]


def run_queues(queues: list[list[list[str]]], cwd: Path, timeout: int = 600) -> None:
    """Run each queue's commands in order, the queues in parallel; raise with stderr on failure."""
    errors = []

    def worker(queue):
        for cmd in queue:
            p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)
            if p.returncode != 0:
                errors.append(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
                return

    threads = [threading.Thread(target=worker, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError("\n\n".join(errors))


def results_files(out: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(out / "*" / "results_*.json")))


def read_samples(results_file: Path, task: str) -> pd.DataFrame:
    """A run's samples file as lm-eval wrote it (independent of core_eval.report)."""
    ts = results_file.name[len("results_"):-len(".json")]
    return pd.read_json(results_file.parent / f"samples_{task}_{ts}.jsonl", lines=True)


def derive_run(src_results: Path, dst_root: Path, *, keep_docs=None, drop_tasks=(), prompt_change_docs=(),
               limit=None, timestamp="2030-01-01T00-00-00.000000") -> Path:
    """Copy a real lm-eval run and edit it; aggregates are recomputed from the kept samples.

    ``keep_docs``: doc_ids to keep (a smaller ``--limit``); ``prompt_change_docs``: doc_ids whose
    prompt hash changes (as with another chat template); ``drop_tasks``: tasks removed entirely.
    """
    data = json.loads(src_results.read_text())
    src_ts = src_results.name[len("results_"):-len(".json")]
    folder = dst_root / src_results.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    for task in list(data["results"]):
        if task in drop_tasks:
            for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
                data.get(key, {}).pop(task, None)
            continue
        rows = [json.loads(line) for line in
                (src_results.parent / f"samples_{task}_{src_ts}.jsonl").read_text().splitlines() if line.strip()]
        if keep_docs is not None:
            rows = [r for r in rows if r["doc_id"] in set(keep_docs)]
        for r in rows:
            if r["doc_id"] in set(prompt_change_docs):
                r["prompt_hash"] = "changed-" + r["prompt_hash"][:20]
        for m in rows[0]["metrics"] if rows else []:
            key = f"{m},none"
            if key in data["results"][task]:
                data["results"][task][key] = sum(float(r[m]) for r in rows) / len(rows)
        if "n-samples" in data and task in data["n-samples"]:
            data["n-samples"][task]["effective"] = len(rows)
        with open(folder / f"samples_{task}_{timestamp}.jsonl", "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    if limit is not None:
        data["config"]["limit"] = float(limit)
    path = folder / f"results_{timestamp}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def synthetic_lm_eval_run(root: Path, *, model: str, values: dict[str, dict[str, list]], summary: dict | None,
                          timestamp: str = "2030-01-01T00-00-00.000000", limit=None, model_type="core_hf",
                          prompt_salt: str = "") -> Path:
    """Write results + samples in lm-eval 0.4.x's format. ``values``: task -> metric -> per-doc values."""
    folder = root / model.strip("/").replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    results, configs, hib, ns = {}, {}, {}, {}
    for task, metrics in values.items():
        n = len(next(iter(metrics.values())))
        results[task] = {"alias": task, **{f"{m},none": sum(v) / len(v) for m, v in metrics.items()},
                         **{f"{m}_stderr,none": 0.0 for m in metrics}}
        configs[task] = {"task": task, "metric_list": [{"metric": m, "aggregation": "mean"} for m in metrics]}
        hib[task] = {m: True for m in metrics}
        ns[task] = {"original": 100, "effective": n}
        with open(folder / f"samples_{task}_{timestamp}.jsonl", "w") as fh:
            for i in range(n):
                row = {"doc_id": i, "doc": {"q": i}, "target": "t", "arguments": {}, "resps": [], "filtered_resps": [],
                       "filter": "none", "metrics": list(metrics), "doc_hash": f"d{i}",
                       "prompt_hash": f"p{prompt_salt}{task}{i}", "target_hash": f"t{i}",
                       **{m: v[i] for m, v in metrics.items()}}
                fh.write(json.dumps(row) + "\n")
    config = {"model": model_type, "model_args": {"pretrained": model}, "limit": limit, "gen_kwargs": {}}
    if summary is not None:
        config["core_eval"] = summary
    data = {"results": results, "group_subtasks": {}, "configs": configs, "versions": {t: 1.0 for t in values},
            "n-shot": {t: 0 for t in values}, "higher_is_better": hib, "n-samples": ns, "config": config,
            "model_name": model, "lm_eval_version": "0.4.13"}
    path = folder / f"results_{timestamp}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def summary(model: str, rule: str, n: int, *, variant="zero", kind="ablation", layers=4, heads=4, **sel) -> dict:
    """A ``config["core_eval"]`` record as core_hf writes it."""
    hs = [[i // heads, i % heads] for i in range(n)]
    selection = {"rule": rule, **sel, "n": n} if rule != "none" else {"rule": "none"}
    return {"variant": {"name": variant, "kind": kind, "options": {}}, "n_heads": n, "heads": hs,
            "heads_per_layer": {}, "family": "text", "model": {"name_or_path": model},
            "shape": {"num_layers": layers, "num_heads": heads, "num_kv_heads": heads, "head_dim": 8},
            "selection": selection, "spec": None, "model_args": {}}


def vlmeval_workdir(root: Path, xlsx: bool = False) -> Path:
    """Two VLMEvalKit model folders (baseline + variant, each with core_eval's ``core_eval.json`` record,
    as core_eval.integrations.vlmeval writes it) on one MCQ dataset."""
    ds = "CoreProbe_MCQ"
    qs = [f"question {i}?" for i in range(6)]
    answers = ["A", "B", "C", "A", "B", "C"]
    preds = {"base_model": ["A", "B", "C", "A", "C", "C"], "zero_top": ["A", "C", "C", "B", "B", "A"]}
    ext = ".xlsx" if xlsx else ".tsv"
    for name, p in preds.items():
        d = root / name / "T20260101_Gabc1234"
        d.mkdir(parents=True)
        pred = pd.DataFrame({"index": range(6), "question": qs, "A": "x", "B": "y", "C": "z", "answer": answers,
                             "prediction": p})
        if xlsx:
            pred.to_excel(d / f"{name}_{ds}{ext}", index=False, engine="openpyxl")
        else:
            pred.to_csv(d / f"{name}_{ds}{ext}", sep="\t", index=False)
        hits = [float(a == b) for a, b in zip(p, answers)]
        pred.assign(hit=hits).to_csv(d / f"{name}_{ds}_exact_matching_result.csv", index=False)
        pd.DataFrame({"split": ["none"], "Overall": [sum(hits) / 6]}).to_csv(d / f"{name}_{ds}_acc.csv", index=False)
        n = 0 if name == "base_model" else 2
        rec = summary("/models/tiny-vlm", "top" if n else "none", n, frac=0.125) if n else \
            summary("/models/tiny-vlm", "none", 0)
        (d.parent / "core_eval.json").write_text(json.dumps(
            {"name": name, "harness": "vlmeval", "core_eval": rec, "dtype": "torch.float32",
             "generation": {"do_sample": False, "max_new_tokens": 16}}))
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
