"""``core-eval demo``: the whole method end to end on the bundled model organism, on a CPU.

Steps (each writes its outputs atomically and is skipped on a rerun when they exist):

1. score every head by RAM on grid-needle probes (``core-eval score``) -> ``spec.json``;
2. the causal check: exact single-head ablation effects and attribution patching;
3. selections of equal size: top / bottom / random / layer-matched random (5% by default), and
   top-k / random-k for the ablation curve;
4. lm-eval through ``core_hf`` on the probe tasks: the baseline, each ablation, hybrid sparse
   attention with the CoRe heads full and with as many random heads full;
5. the sparse-attention benchmark at a small size (speed of the hybrid model);
6. the report (HTML + Markdown): causal-test table, ablation curves, RAM heatmap, RAM vs causal
   effect, accuracy vs speed, leaderboard.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core_eval._io import atomic_write


@dataclass
class DemoConfig:
    """Sizes of the demo. ``small`` is what the test suite runs."""

    n_score: int = 128
    n_causal: int = 64
    limit: int = 100
    frac: float = 0.05
    sparse_fracs: tuple[float, ...] = (0.10, 0.25, 0.50)   # fractions of heads kept full
    curve_k: tuple[int, ...] = (1, 2, 4, 8)
    # position-addressed retrieval, a whole-image control, content-addressed retrieval across images
    # and in a table
    tasks: tuple[str, ...] = ("core_grid_needle", "core_count_control", "core_multi_image_needle",
                              "core_text_lookup_table")
    window: int = 16
    sink: int = 4
    bench_tokens: int = 1024
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def small(cls) -> "DemoConfig":
        return cls(n_score=24, n_causal=12, limit=8, curve_k=(1,), tasks=("core_grid_needle",), bench_tokens=256,
                   sparse_fracs=(0.10,))


def _step(name: str):
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str = "") -> None:
    print(f"   done in {time.perf_counter() - t0:.1f}s {what}", flush=True)


def _task_knobs(task: str) -> dict:
    """The probe knobs a task config generates with (so scoring sees the evaluation's layout)."""
    from core_eval.probes.tasks import probe_tasks

    return dict(probe_tasks()[task].knobs)


def _lm_eval(model_dir: Path, args: str, tasks, limit: int, out: Path, log) -> Path:
    """One ``lm_eval --model core_hf`` run into ``out`` (skipped if it already has results)."""
    from core_eval.resources import tasks_dir

    if list(out.glob("*/results_*.json")):
        return out
    cmd = [sys.executable, "-m", "lm_eval", "--model", "core_hf", "--model_args", f"pretrained={model_dir},{args}",
           "--tasks", ",".join(tasks), "--include_path", str(tasks_dir()), "--limit", str(limit),
           "--batch_size", "8", "--apply_chat_template", "--log_samples", "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write(f"$ {' '.join(cmd)}\n{proc.stderr[-4000:]}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"lm_eval failed ({proc.returncode}) for {args}:\n{proc.stderr[-3000:]}")
    return out


def run_demo(out_dir: str | Path = "core_eval_runs/demo", *, model_dir: str | Path | None = None,
             config: DemoConfig | None = None) -> Path:
    """Run (or resume) the demo; returns the report folder."""
    from core_eval.scoring.ram import ScoreConfig, score
    from core_eval.spec import load_head_spec

    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = "core-eval demo: the bundled organism"
    if model_dir is None:
        from core_eval.organism import organism_dir

        try:
            model_dir = organism_dir()
        except FileNotFoundError as e:  # a checkout without the trained weights
            from core_eval.testing import tiny_model_dir

            print(f"NOTE: {e}\nNOTE: running the pipeline on a tiny RANDOM LLaVA instead: this shows the "
                  "plumbing, not the science (accuracies will be ~0).", flush=True)
            model_dir = tiny_model_dir("llava")
            title = "core-eval demo: tiny random LLaVA (organism weights missing)"
    else:
        title = f"core-eval demo: {Path(model_dir).name}"
    model_dir = Path(model_dir).resolve()
    atomic_write(out / "demo_config.json", json.dumps({"model": str(model_dir), **asdict(cfg)}, indent=2))
    knobs = _task_knobs("core_grid_needle")
    t_all = time.perf_counter()

    # 1. RAM scores
    spec_path = out / "spec.json"
    t0 = _step(f"1/6 RAM scoring of {model_dir.name} on {cfg.n_score} grid-needle probes")
    if not spec_path.exists():
        score(str(model_dir), spec_path, ScoreConfig(probes="grid_needle", n=cfg.n_score, seed=cfg.seed,
                                                      knobs=knobs, batch_size=8, frac=cfg.frac))
    spec = load_head_spec(spec_path)
    _done(t0, f"-> {spec_path} (top {cfg.frac:.0%}: {spec.by_layer})")

    # 2. causal check
    t0 = _step(f"2/6 causal check: single-head ablation (exact) and attribution patching, {cfg.n_causal} probes")
    if "causal" not in (spec.extra or {}):
        from core_eval.scoring.causal import run_causal

        spec = run_causal(str(model_dir), spec_path, spec_path, n=cfg.n_causal, knobs=knobs, method="both",
                          subset="all").spec  # writes the effects into the demo's own spec
    _done(t0)

    # 3. selections
    t0 = _step("3/6 head selections of equal size")
    L, H = spec.shape.num_layers, spec.shape.num_heads
    k = max(1, round(cfg.frac * L * H))
    selections = {}
    for rule in ("top", "bottom", "random", "layer_matched_random"):
        p = out / "specs" / f"{rule}.json"
        if not p.exists():
            spec.with_selection(rule, k=k, seed=cfg.seed).write(p)
        selections[rule] = p
    _done(t0, f"({k} heads each)")

    # 4. lm-eval runs
    runs_dir = out / "runs"
    log = open(out / "lm_eval.log", "a")
    plan = {"baseline": "heads=none"}
    for rule, p in selections.items():
        plan[f"zero-{rule}"] = f"head_spec={p},heads=spec,ablation=zero"
    for kk in cfg.curve_k:
        if kk != k:
            plan[f"zero-top-k{kk}"] = f"head_spec={spec_path},heads=top,k={kk},ablation=zero"
            plan[f"zero-random-k{kk}"] = f"head_spec={spec_path},heads=random,k={kk},seed={cfg.seed},ablation=zero"
    sparse_args = f"sparse=text_only,window={cfg.window},sink={cfg.sink}"
    sparse_k = {}   # run name -> (rule, number of full heads)
    for f in cfg.sparse_fracs:
        ks = max(1, round(f * L * H))
        for rule, tag in (("top", "core"), ("random", "random")):
            sparse_k[f"sparse-{tag}-{round(100 * f)}"] = (rule, ks)
            plan[f"sparse-{tag}-{round(100 * f)}"] = f"head_spec={spec_path},heads={rule},k={ks},seed={cfg.seed},{sparse_args}"
    t0 = _step(f"4/6 lm-eval (core_hf) on {', '.join(cfg.tasks)}, limit {cfg.limit}: {len(plan)} runs")
    run_paths = {}
    for i, (name, args) in enumerate(plan.items(), 1):
        t1 = time.perf_counter()
        run_paths[name] = _lm_eval(model_dir, args, cfg.tasks, cfg.limit, runs_dir / name, log)
        print(f"   [{i}/{len(plan)}] {name} ({time.perf_counter() - t1:.0f}s)", flush=True)
    log.close()
    _done(t0)

    # 5. speed of hybrid sparse attention
    t0 = _step(f"5/6 sparse-attention benchmark at {cfg.bench_tokens} tokens")
    speed_path = out / "speed.json"
    if not speed_path.exists():
        speed = _measure_speed(model_dir, spec, sparse_k, cfg)
        atomic_write(speed_path, json.dumps(speed, indent=2))
    _done(t0, json.loads(speed_path.read_text()).__repr__())

    # 6. report
    t0 = _step("6/6 report")
    report_dir = _write_report(out, spec, run_paths, speed_path, title)
    _done(t0, f"-> {report_dir / 'report.html'}")
    print(f"\ndemo finished in {time.perf_counter() - t_all:.0f}s: {report_dir / 'report.md'}")
    return report_dir


def _measure_speed(model_dir: Path, spec, runs: dict[str, tuple[str, int]], cfg: DemoConfig) -> dict:
    """Whole-model prefill time of the organism, dense vs hybrid, on a grid-needle prompt repeated to
    ``bench_tokens`` tokens. ``runs``: run name -> (selection rule, number of full heads).
    Returns run name -> speedup (dense time / hybrid time)."""
    import torch

    from core_eval.intervene import apply_intervention
    from core_eval.loading import load
    from core_eval.probes import generate
    from core_eval.prompting import encode

    loaded = load(model_dir, heads="none")
    model, proc = loaded.model, loaded.processor
    sample = generate("grid_needle", 1, seed=cfg.seed, **_task_knobs("core_grid_needle"))
    inputs = dict(encode(proc, sample))
    reps = max(1, cfg.bench_tokens // inputs["input_ids"].shape[1])
    inputs = {k: (torch.cat([v] * reps, 1) if k in ("input_ids", "attention_mask") else
                  torch.cat([v] * reps, 0) if k == "pixel_values" else v) for k, v in inputs.items()}

    def timed() -> float:
        with torch.no_grad():
            model(**inputs)
            ts = []
            for _ in range(5):
                t = time.process_time()
                model(**inputs)
                ts.append(time.process_time() - t)
        return sorted(ts)[2]

    dense = timed()
    out = {}
    for label, (rule, k_full) in runs.items():
        heads = spec.with_selection(rule, k=k_full, seed=cfg.seed).heads
        iv = apply_intervention(model, heads, "text_only", window=cfg.window, sink=cfg.sink)
        out[label] = round(dense / timed(), 3)
        iv.remove()
    return out


def _write_report(out: Path, spec, run_paths: dict, speed_path: Path, title: str) -> Path:
    """The report through the same path as ``core-eval report RUNS --baseline B --speed S --spec SPEC``."""
    from core_eval.report import build_report

    runs = [p for name, p in run_paths.items() if name != "baseline"]
    report = build_report(runs, [run_paths["baseline"]], speed=speed_path, title=title,
                          specs=[spec.source or out / "spec.json"])
    return report.write(out / "report")
