"""VLMEvalKit integration: core_eval interventions and probe datasets inside VLMEvalKit's runner.

VLMEvalKit (PyPI ``nvidia-vlmeval``) has no plugin mechanism, so nothing is installed into it:
this module adds entries to ``vlmeval.config.supported_VLM`` (and the classes to ``vlmeval.vlm`` /
``vlmeval.dataset`` for ``--config`` runs) in the running process, then calls VLMEvalKit's own
``vlmeval.run.main()``.

Command line (``core-vlmeval``, or ``python -m core_eval.integrations.vlmeval``)::

    core-vlmeval --data core_grid_needle core_grid_needle_mc --model core-llava \\
        --model-args pretrained=llava-hf/llava-1.5-7b-hf \\
        --model-args 'pretrained=llava-hf/llava-1.5-7b-hf,head_spec=spec.json,heads=top,frac=0.05' \\
        --work-dir runs/vlmeval

Each ``--model-args`` becomes one VLMEvalKit model named ``<model>__<intervention>``
(``core-llava__baseline``, ``core-llava__zero-top51-s0-1a2b3c4d``): VLMEvalKit silently reuses the
predictions of a name already in the work dir, so the name encodes the intervention and a work
dir that holds the same name with other settings is refused. The intervention summary is written
to ``<work_dir>/<name>/core_eval.json``, next to the prediction files.

Python::

    from core_eval.integrations.vlmeval import register_core_model, run_vlmeval
    name = register_core_model("core-llava", work_dir="runs", pretrained=..., heads="0:0;1:2")
    results = run_vlmeval(["core_grid_needle-n20"], [name], work_dir="runs")

Datasets: every visual lm-eval probe task under its task name (``core_grid_needle``,
``core_multi_image_needle``, ``core_text_lookup``, ``core_count_control`` and the harder variants),
same generator, seed (1000), n (100), knobs, prompt and metrics; ``<grid task>_mc`` is the grid
needle as 4-option multiple choice through VLMEvalKit's MCQ path; ``core_probes`` /
``core_probes_hard`` (``_mc``) expand to their members. Suffixes ``-n<N>`` / ``-s<SEED>`` change
the number of samples / the seed (``core_grid_needle-n8`` = the first 8 of the 100).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import os
import sys
import time
from pathlib import Path

from ._common import (
    LOAD_ARGS, ModelArgsError, core_args_table, dataset_groups, dataset_names, expand_data_names, export_dataset,
    lmu_root, make_plan, parse_arg_string, probe_dataset, run_identity, run_name, split_model_args,
)

__all__ = [
    "register_core_model", "register_datasets", "run_vlmeval", "main", "model_name", "export_dataset",
    "expand_data_names", "collect_results",
    "dataset_names", "dataset_groups", "probe_dataset", "ModelArgsError", "VLMEvalRunError", "WorkDirConflict",
    "CoreVLM", "CoreProbeDataset", "CoreProbeMCQDataset", "RECORD_FILE",
]

RECORD_FILE = "core_eval.json"


class VLMEvalRunError(RuntimeError):
    """VLMEvalKit finished without the expected prediction / score files (``vlmeval.run.main``
    logs exceptions per model x dataset and carries on; this turns them into a failure)."""


class WorkDirConflict(ValueError):
    """The work dir already holds a run of this name made with other settings."""


def __getattr__(name):
    if name == "CoreVLM":
        from .model import CoreVLM

        return CoreVLM
    if name in ("CoreProbeDataset", "CoreProbeMCQDataset"):
        from . import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_work_dir(work_dir) -> Path:
    """VLMEvalKit's rule: ``$MMEVAL_ROOT`` wins over ``--work-dir``."""
    return Path(os.environ.get("MMEVAL_ROOT") or work_dir or "./outputs").resolve()


# ----------------------------------------------------------------------------- models

def model_name(base: str | None = None, **args) -> str:
    """The run name :func:`register_core_model` would use (validates; loads no weights)."""
    core, load = split_model_args(args)
    return run_name(base, make_plan(load["pretrained"], core), core=core, load=load)


def check_identity(record_dir: Path, identity: dict, name: str) -> None:
    """Refuse a work dir whose ``core_eval.json`` for ``name`` records other settings."""
    path = record_dir / RECORD_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("identity")
    except (OSError, ValueError):
        return
    new = json.loads(json.dumps(identity, default=str))
    if old is not None and old != new:
        diff = {k: {"recorded": old.get(k), "now": new.get(k)} for k in set(old) | set(new) if old.get(k) != new.get(k)}
        raise WorkDirConflict(
            f"{record_dir} already holds VLMEvalKit run {name!r} made with other settings ({json.dumps(diff)}); "
            "VLMEvalKit would silently reuse its predictions. Use another --model name or --work-dir.")


def _register_model_class():
    import vlmeval.vlm

    from .model import CoreVLM

    vlmeval.vlm.CoreVLM = CoreVLM  # for --config runs: {"class": "CoreVLM", ...}
    return CoreVLM


def register_core_model(name: str | None = None, *, work_dir=None, **args) -> str:
    """Validate ``args`` (model args as for ``core_hf``, see :data:`LOAD_ARGS` and ``CORE_ARGS``)
    and add ``partial(CoreVLM, **args)`` to ``vlmeval.config.supported_VLM`` as
    ``<name>__<intervention tag>``. Returns that name. Nothing is loaded until VLMEvalKit builds
    the model. With ``work_dir``, the model records ``core_eval.json`` in ``<work_dir>/<name>/``
    and a conflicting earlier run of the same name there raises :class:`WorkDirConflict`."""
    core, load = split_model_args(args)
    plan = make_plan(load["pretrained"], core)
    full = run_name(name, plan, core=core, load=load)
    kwargs = {**core, **load}
    if work_dir is not None:
        record_dir = resolve_work_dir(work_dir) / full
        check_identity(record_dir, run_identity(plan, core, load), full)
        kwargs["record_dir"] = str(record_dir)
    import vlmeval.config

    CoreVLM = _register_model_class()
    vlmeval.config.supported_VLM[full] = functools.partial(CoreVLM, run_name=full, **kwargs)
    return full


def register_datasets(names) -> list[str]:
    """Make core probe datasets buildable by ``vlmeval.dataset.build_dataset`` (and ``--config``
    ``class`` names). Group names expand; other names pass through unchanged. Returns the list."""
    import vlmeval.dataset as vd

    from .datasets import CoreProbeDataset, CoreProbeMCQDataset

    for cls in (CoreProbeDataset, CoreProbeMCQDataset):
        setattr(vd, cls.__name__, cls)
        if cls not in vd.DATASET_CLASSES:
            vd.DATASET_CLASSES.insert(0, cls)
    lmu_root()  # VLMEvalKit reads $LMUData only if the folder exists (else ~/LMUData)
    out = expand_data_names(names)
    for name in out:
        spec = probe_dataset(name)
        if spec is not None:
            (CoreProbeMCQDataset if spec.kind == "mcq" else CoreProbeDataset).register(name)
    return out


# ----------------------------------------------------------------------------- running

@contextlib.contextmanager
def _argv(argv):
    old = sys.argv
    sys.argv = list(argv)
    try:
        yield
    finally:
        sys.argv = old


def collect_results(work_dir, models, data, *, since: float | None = None) -> dict:
    """``{(model, dataset): {"predictions": path, "scores": path | None, "acc": path | None,
    "record": path | None}}`` from VLMEvalKit's work dir (``<work_dir>/<model>/T<date>_G<commit>/``),
    the newest files, ignoring those last written before ``since`` (a ``time.time()``)."""

    def _latest(pattern: str) -> str | None:
        hits = [h for h in glob.glob(pattern) if since is None or os.path.getmtime(h) >= since - 1]
        return max(hits, key=os.path.getmtime) if hits else None

    out = {}
    for m in models:
        for d in data:
            root = resolve_work_dir(work_dir) / m
            pred = _latest(str(root / "T*" / f"{m}_{d}.xlsx"))
            acc = _latest(str(root / "T*" / f"{m}_{d}_acc.csv"))
            score = _latest(str(root / "T*" / f"{m}_{d}_score.xlsx")) or _latest(
                str(root / "T*" / f"{m}_{d}_*_result.xlsx"))
            record = root / RECORD_FILE
            out[(m, d)] = {"predictions": pred, "scores": score, "acc": acc,
                           "record": str(record) if record.is_file() else None}
    return out


def run_vlmeval(data, models, *, work_dir="./outputs", judge: str | None = "exact_matching", mode: str = "all",
                extra_args=(), check: bool = True) -> dict:
    """Run VLMEvalKit's own runner (``vlmeval.run.main``) on ``data`` x ``models`` (registered
    names, e.g. from :func:`register_core_model`, or VLMEvalKit's own). Core datasets are
    registered first. Returns :func:`collect_results`; with ``check``, a missing prediction file
    (or, in mode ``all``, a missing ``_acc.csv``) raises :class:`VLMEvalRunError`."""
    data = register_datasets(list(data))
    models = list(models)
    work_dir = resolve_work_dir(work_dir)
    for d in data:
        if probe_dataset(d) is not None:
            export_dataset(d)
    import vlmeval.run

    start = time.time()
    argv = ["vlmeval", "--data", *data, "--model", *models, "--work-dir", str(work_dir), "--mode", mode]
    if judge:
        argv += ["--judge", judge]
    with _argv(argv + [str(a) for a in extra_args]):
        vlmeval.run.main()
    results = collect_results(work_dir, models, data, since=start)
    if check:
        missing = [f"{m} x {d}: {'predictions' if not r['predictions'] else 'scores (_acc.csv)'}"
                   for (m, d), r in results.items() if not r["predictions"] or (mode == "all" and not r["acc"])]
        if missing:
            raise VLMEvalRunError("VLMEvalKit produced no " + "; ".join(missing) + " (see its log above)")
    return results


def _rewrite_config(path: str, work_dir: Path) -> tuple[str, list[str], list[str]]:
    """A ``--config`` JSON with CoreVLM models renamed ``<key>__<tag>`` (unless already) and given a
    ``record_dir``; core datasets registered. Returns (new path, models, data)."""
    cfg = json.loads(Path(path).read_text())
    models = {}
    for key, entry in cfg.get("model", {}).items():
        if isinstance(entry, dict) and entry.get("class") == "CoreVLM":
            args = {k: v for k, v in entry.items() if k != "class"}
            core, load = split_model_args(args)
            plan = make_plan(load["pretrained"], core)
            tag = run_name(None, plan, core=core, load=load).split("__", 1)[1]
            full = key if key.endswith("__" + tag) else f"{key}__{tag}"
            check_identity(work_dir / full, run_identity(plan, core, load), full)
            entry = {**entry, "record_dir": str(work_dir / full), "run_name": full}
            key = full
        models[key] = entry
    cfg["model"] = models
    _register_model_class()
    data = {}
    for key, entry in cfg.get("data", {}).items():
        spec = probe_dataset(key)
        if spec is not None and not entry:  # {} -> our class (VLMEvalKit would look for a video preset)
            entry = {"class": "CoreProbeMCQDataset" if spec.kind == "mcq" else "CoreProbeDataset", "dataset": key}
        data[key] = entry
    cfg["data"] = data
    register_datasets(list(data))
    for key in data:
        if probe_dataset(key) is not None:
            export_dataset(key)
    work_dir.mkdir(parents=True, exist_ok=True)
    new = work_dir / f"core_eval_config_{Path(path).stem}.json"
    new.write_text(json.dumps(cfg, indent=2))
    return str(new), list(models), list(cfg.get("data", {}))


# ----------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    from core_eval.options import help_text

    p = argparse.ArgumentParser(
        prog="core-vlmeval",
        description="Run VLMEvalKit with core_eval interventions and probe datasets. Arguments not listed here "
                    "(--verbose, --first-n, --reuse, ...) go to VLMEvalKit's runner.",
        epilog="model args: " + "; ".join(f"{k}: {h}" for k, (_, h) in LOAD_ARGS.items()) + "; " + help_text()
               + ". Datasets: " + ", ".join(dataset_names()) + "; groups: " + ", ".join(dataset_groups())
               + " (suffixes -n<N>, -s<SEED>).",
    )
    p.add_argument("--data", nargs="+", help="dataset names (core probe datasets or VLMEvalKit's)")
    p.add_argument("--model", nargs="+", default=[],
                   help="base name(s) for --model-args (default core-<checkpoint>), or VLMEvalKit model names")
    p.add_argument("--model-args", action="append", default=[],
                   help="KEY=VALUE,... for one core model (repeatable: one model per --model-args)")
    p.add_argument("--config", help="VLMEvalKit --config JSON; models with class CoreVLM are supported")
    p.add_argument("--work-dir", default="./outputs")
    p.add_argument("--judge", default="exact_matching", help="VLMEvalKit judge (default exact_matching: offline)")
    p.add_argument("--mode", default="all", choices=["all", "infer"])
    p.add_argument("--list", action="store_true", help="print the core datasets and model args, then exit")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args, passthrough = parser.parse_known_args(argv)
    if args.list:
        for name in dataset_names():
            d = probe_dataset(name)
            print(f"{name:36s} {d.kind:4s} {d.family:20s} n={d.n} seed={d.seed} {json.dumps(d.knobs)}")
        for g, members in dataset_groups().items():
            print(f"{g:36s} group: {' '.join(members)}")
        return 0
    work_dir = resolve_work_dir(args.work_dir)
    try:  # everything that can fail on bad input, before VLMEvalKit starts
        if args.config:
            if args.data or args.model or args.model_args:
                parser.error("--config replaces --data / --model / --model-args")
            cfg_path, models, data = _rewrite_config(args.config, work_dir)
        else:
            if not args.data:
                parser.error("--data is required (or --config)")
            models = []
            if args.model_args:
                bases = args.model or [None]
                if len(bases) == 1:
                    bases = bases * len(args.model_args)
                elif len(bases) != len(args.model_args):
                    parser.error("give one --model (shared base name) or one per --model-args")
                for base, text in zip(bases, args.model_args):
                    models.append(register_core_model(base, work_dir=work_dir, **parse_arg_string(text)))
            elif args.model:
                models = list(args.model)
            else:
                parser.error("--model or --model-args is required")
            data = register_datasets(args.data)
    except (ModelArgsError, WorkDirConflict, ValueError, KeyError, FileNotFoundError) as e:
        print(f"core-vlmeval: error: {e}", file=sys.stderr)
        return 2
    if args.config:
        import vlmeval.run

        start = time.time()
        with _argv(["vlmeval", "--config", cfg_path, "--work-dir", str(work_dir), "--mode", args.mode,
                    *(["--judge", args.judge] if args.judge else []), *passthrough]):
            vlmeval.run.main()
        results = collect_results(work_dir, models, data, since=start)
    else:
        results = run_vlmeval(data, models, work_dir=work_dir, judge=args.judge, mode=args.mode,
                              extra_args=passthrough, check=False)
    failed = 0
    print("\ncore-vlmeval results:")
    for (m, d), r in results.items():
        ok = bool(r["predictions"]) and (args.mode == "infer" or bool(r["acc"]))
        failed += not ok
        print(f"  {m} x {d}: {'ok' if ok else 'FAILED'}")
        for key in ("predictions", "scores", "acc", "record"):
            if r[key]:
                print(f"    {key}: {r[key]}")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
