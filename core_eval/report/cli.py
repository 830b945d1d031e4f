"""``core-eval report RUN... [--baseline RUN] -o OUTDIR``: the command-line face of :func:`build_report`."""

from __future__ import annotations

import argparse

SOURCES = ("auto", "lm_eval", "vlmeval", "lmms_eval")  # the built-in readers of core_eval.report.readers (kept import-free here)

HELP = "compare runs against unmodified baselines: tables, plots, Markdown / CSV / HTML"

DESCRIPTION = """\
Compare lm-eval (or VLMEvalKit) runs of intervened models against the unmodified baseline of the
same model, harness and task. First the verdict (per task: does ablating the top heads hurt more
than each control of the same size, with a paired CI and p-value) and, for hybrid sparse attention
runs, the sparse retention verdict (per task: does the run keep >= --keep of the baseline's score,
and CoRe vs random full heads at each size), then per-task deltas (Newcombe
paired CIs for 0/1 metrics, paired bootstrap otherwise, McNemar's exact test), the causal-test
table (seeds pooled), ablation curves, accuracy vs speed, a leaderboard, and with --spec the RAM
heatmap, heads table and RAM vs causal effect of a head spec.
RUN is an lm-eval --output_path folder (every results file in it is read: runs that differ only in
their mask share lm-eval's model folder and are told apart by the intervention each recorded), a
model folder under it, a results_<ts>.json, or FOLDER@TIMESTAMP (one file); or a VLMEvalKit work dir.
Writes OUTDIR/report.md, report.html (self-contained, sortable tables), one CSV per table, plots/
and report.json.
"""


def _share(text: str) -> float:
    """``--keep``'s value: a number in (0, 1]."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < x <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a share of the baseline, e.g. 0.95), got {text}")
    return x


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
    p.add_argument("--keep", type=_share, default=0.95, metavar="SHARE",  # = retention.KEEP (kept import-free)
                   help="sparse retention verdict: the share of the baseline's score a hybrid sparse attention run "
                        "must keep, in (0, 1] (default 0.95)")
    p.add_argument("--all-results", action="store_true",
                   help="accepted for old scripts and ignored: every results file is read by default "
                        "(FOLDER@TIMESTAMP or the file itself reads one)")
    p.add_argument("--spec", action="append", default=[], metavar="SPEC",
                   help="head spec to show (repeatable): RAM heatmap, heads table, RAM vs causal effect")
    p.add_argument("--overlays", type=int, default=0, metavar="N",
                   help="draw attention overlays of up to N samples each ablation lost per probe task (loads the "
                        "model of each run; default 0: none)")
    p.add_argument("--device", default=None, help="device for --overlays (default: the model's default)")
    p.add_argument("--source", default="auto", metavar="|".join(SOURCES),
                   help="harness of the RUNs (default: detect; readers registered with "
                        "core_eval.report.readers.register_reader add names)")
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
                          specs=args.spec, keep=args.keep)
    if args.overlays:
        from core_eval.report_overlays import add_overlay_sections

        add_overlay_sections(report, args.overlays, device=args.device)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    out = report.write(args.out, formats=formats)
    for line in (report.verdict.summary if len(report.verdict) else []):
        print(f"verdict: {line}")
    for line in (report.retention.summary if len(report.retention) else []):
        print(f"sparse: {line}")
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
