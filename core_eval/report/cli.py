"""``core-eval report RUN... [--baseline RUN] -o OUTDIR``: the command-line face of :func:`build_report`."""

from __future__ import annotations

import argparse

SOURCES = ("auto", "lm_eval", "lmms_eval", "vlmeval")  # as in core_eval.report.readers (kept import-free here)

HELP = "compare runs against unmodified baselines: tables, plots, Markdown / CSV / HTML"

DESCRIPTION = """\
Compare lm-eval (or VLMEvalKit) runs of intervened models against the unmodified baseline of the
same model: per-task deltas with paired bootstrap CIs and McNemar's exact test, the causal-test
table, ablation curves, accuracy vs speed, a leaderboard. RUN is an lm-eval --output_path folder,
a model folder under it, a results_<ts>.json, or FOLDER@TIMESTAMP; or a VLMEvalKit work dir.
Writes OUTDIR/report.md, report.html (self-contained), one CSV per table, plots/ and report.json.
"""


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to an argparse subparsers object; sets ``fn=run_report``."""
    p = subparsers.add_parser("report", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders / results files to compare")
    p.add_argument("--baseline", "-b", action="append", default=[], metavar="RUN",
                   help="baseline run (repeat: one per model). Default: the unmodified run (heads=none or "
                        "plain hf / hf-multimodal) among RUNs, per model")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (replaced atomically)")
    p.add_argument("--speed", metavar="FILE", help="measured speedups, CSV or JSON: run (label or name) -> "
                                                   "speedup (see core_eval.report.speed)")
    p.add_argument("--metric", action="append", default=[], metavar="[TASK=]METRIC",
                   help="primary metric for the summary tables (repeatable); default: acc, exact_match, ...")
    p.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - CI level (default 0.05: 95%% CI)")
    p.add_argument("--all-results", action="store_true",
                   help="read every results file in a model folder, not just the newest")
    p.add_argument("--source", choices=SOURCES, default="auto", help="harness of the RUNs (default: detect)")
    p.add_argument("--format", default="md,csv,html", help="comma-separated subset of md,csv,html")
    p.add_argument("--title", default=None)
    p.set_defaults(fn=run_report)
    return p


def run_report(args) -> int:
    """Build and write the report; prints where it went and the leaderboard. Errors raise ReportError."""
    from core_eval.report.report import build_report
    from core_eval.report.writers import fmt

    report = build_report(args.runs, args.baseline, speed=args.speed, metrics=args.metric, n_boot=args.n_boot,
                          seed=args.seed, alpha=args.alpha, title=args.title, source=args.source,
                          all_results=args.all_results)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    out = report.write(args.out, formats=formats)
    board = report.leaderboard
    if len(board):
        cols = ["model", "label", *[c for c in board.columns if c not in ("model", "label", "run")]]
        print(board[cols].to_string(index=False, na_rep="",
                                    formatters={c: (lambda v, c=c: fmt(c, v)) for c in cols[2:]}))
    n = len(report.notes)
    warn = int((report.notes.level == "warning").sum()) if n else 0
    print(f"wrote {out} ({len(report.runs)} runs, {n} notes, {warn} warnings)")
    for row in report.notes[report.notes.level == "warning"].itertuples() if n else []:
        where = " / ".join(x for x in (row.run, row.task) if x)
        print(f"  warning: {where + ': ' if where else ''}{row.message}")
    return 0


def main(argv=None) -> int:
    """Standalone entry (``python -m core_eval.report.cli``) until ``core-eval report`` is wired."""
    import sys

    from core_eval.report.errors import ReportError

    parser = argparse.ArgumentParser(prog="core-eval")
    add_report_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.fn(args)
    except (ReportError, FileNotFoundError) as e:
        print(f"core-eval report: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
