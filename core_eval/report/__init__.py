"""Reports: compare runs of intervened models against their unmodified baselines.

Python API (all tables are pandas DataFrames)::

    from core_eval.report import build_report
    rep = build_report(["runs/top", "runs/random"], baselines=["runs/base"], speed="speed.csv")
    rep = build_report(["runs/"], specs=["head_masks/m.json"])   # every results file; spec sections
    rep.verdict, rep.retention, rep.comparison, rep.causal, rep.curves, rep.leaderboard, rep.notes, rep.speed
    rep.write("report_dir")            # report.md, report.html, *.csv, plots/*.png, report.json

Building blocks: :func:`load_runs` / :func:`read_lm_eval` / :func:`read_vlmeval` (-> :class:`Run`),
:func:`compare` (one run vs its baseline), :func:`assign_baselines`, :func:`newcombe_paired_ci`,
:func:`paired_bootstrap_ci`, :func:`mcnemar_exact`, :func:`pool_rows`, :func:`verdict_table`,
:func:`retention_table` (the sparse retention verdict), :func:`add_spec_sections`, :func:`register_reader`
(another harness's reader),
:func:`read_speed`. CLI: ``core-eval report`` (:mod:`core_eval.report.cli`). Names are imported
lazily, so that importing the CLI module stays cheap.
"""

_LAZY = {
    "Comparison": "comparison", "Note": "comparison", "compare": "comparison", "pair_samples": "comparison",
    "CorruptFileError": "errors", "EmptyRunError": "errors", "MismatchError": "errors",
    "MissingBaselineError": "errors", "NothingPairsError": "errors", "ReportError": "errors",
    "read_lm_eval": "lm_eval_reader", "read_results_file": "lm_eval_reader",
    "load_run": "readers", "load_runs": "readers", "Reader": "readers", "register_reader": "readers",
    "assign_baselines": "baselines", "sample_key": "sample_keys", "pool_rows": "pooling",
    "verdict_table": "verdict", "retention_table": "retention", "sparse_rows": "retention",
    "add_spec_sections": "spec_sections", "heads_table": "spec_sections",
    "Report": "report", "build_report": "report",
    "Intervention": "run", "Run": "run",
    "read_speed": "speed",
    "bootstrap_means": "stats", "mcnemar_exact": "stats", "paired_bootstrap_ci": "stats",
    "newcombe_paired_ci": "stats", "paired_ci": "stats",
    "read_vlmeval": "vlmeval_reader",
    "write_report": "writers",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"core_eval.report.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'core_eval.report' has no attribute {name!r}")


__all__ = sorted(_LAZY)
