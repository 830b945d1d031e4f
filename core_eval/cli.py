"""``core-eval`` command line: thin wrappers over the Python API."""

from __future__ import annotations

import argparse
import json
import sys


def _families(args) -> int:
    from core_eval.adapters import family_source, registered_families
    from core_eval.testing.tiny_models import FAMILIES

    rows = [("family", "model_type", "LM mask", "regions", "tested", "source", "notes")]
    for f in registered_families().values():
        tiny = [r.name for r in f.tiny]
        if any(t in FAMILIES for t in tiny):  # the built-in test matrix runs on these tiny models
            tested = "matrix: " + ", ".join(tiny)
        else:
            tested = f"tiny recipe {', '.join(tiny)} (not in core_eval's matrix)" if tiny else "no tiny recipe"
        rows.append((f.name, "/".join(f.model_types), f.attention_mask, "yes" if f.region else "-", tested,
                     family_source(f), f.notes))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    if args.verbose:
        print("\ntested = the tiny model runs the whole test matrix: load errors before weights, every ablation "
              "mode vs an eager oracle, bit-identical empty interventions, RAM capture vs output_attentions, "
              "region masks vs the model's own patch grouping, hybrid sparse attention vs the explicit-mask "
              "oracle and vs dense at a window longer than the input, head means, plots.")
    return 0


def _variants(args) -> int:
    from core_eval.masks import available_variants, get_variant

    for name in available_variants():
        cls = get_variant(name)
        opts = ", ".join(f"{k}={d!r}" for k, (_, d, _) in cls.options.items())
        print(f"{name:18s} {cls.kind:9s} {cls.description}" + (f"  [{opts}]" if opts else ""))
    return 0


def _tiny(args) -> int:
    from core_eval.testing import build_tiny

    print(build_tiny(args.family, args.out, seed=args.seed))
    return 0


def _tasks_path(args) -> int:
    if args.harness == "lmms-eval":
        from core_eval.integrations.lmms_eval_tasks import write_tasks

        print(write_tasks(args.dir))
        return 0
    if args.dir:
        raise SystemExit("core-eval tasks-path: --dir is for --harness lmms-eval (the lm-eval tasks ship with the package)")
    from core_eval.resources import tasks_dir

    print(tasks_dir())
    return 0


def _score(args) -> int:
    from core_eval.scoring.ram import ScoreConfig, score

    cfg = ScoreConfig(probes=args.probes, n=args.n, seed=args.seed, knobs=json.loads(args.knobs),
                      query_rows=args.query_rows, batch_size=args.batch_size, only_correct=args.only_correct,
                      max_new_tokens=args.max_new_tokens, frac=args.frac, bootstrap=args.bootstrap)
    spec = score(args.model, args.out, cfg, image_root=args.image_root, dtype=args.dtype, device=args.device,
                 family=args.family)
    if spec is not None:
        sc = spec.scorer
        print(f"wrote {args.out}: {sc['n_used']}/{sc['n_samples']} samples used, accuracy {sc['accuracy']:.3f}, "
              f"top-{args.frac:.0%} heads {spec.by_layer}")
        if spec.stability is not None:
            from core_eval.scoring.stability import stability_summary

            print(stability_summary(spec.stability))
    return 0


def _select(args) -> int:
    from core_eval.cliargs import output_path
    from core_eval.spec import load_head_spec

    out = output_path(args.spec, args.out, args.in_place, "select")
    spec = load_head_spec(args.spec)
    new = spec.with_selection(args.rule, frac=args.frac, k=args.k, seed=args.seed, threshold=args.threshold,
                              score=args.score)
    path = new.write(out)
    print(f"wrote {path}: {args.rule} -> {len(new.heads)} heads {new.by_layer}")
    return 0


def _export(args) -> int:
    from core_eval.export import export_ablated

    out = export_ablated(args.model, args.out, spec=args.head_spec, heads=args.heads, ablation=args.ablation, frac=args.frac,
                         k=args.k, seed=args.seed, threshold=args.threshold, means=args.means, family=args.family,
                         overwrite=args.overwrite)
    record = json.loads((out / "core_eval_export.json").read_text())
    print(f"wrote {out}: {record['mode']} ablation of {record['n_heads']} heads {record['heads']} in the weights")
    return 0


def _convert(args) -> int:
    from core_eval.spec import load_head_spec
    from core_eval.spec.writers import WRITERS

    path = WRITERS[args.to](load_head_spec(args.spec), args.out)
    print(f"wrote {path} ({args.to})")
    return 0


def _demo(args) -> int:
    from core_eval.demo import DemoConfig, run_demo

    run_demo(out_dir=args.out, model_dir=args.model, config=DemoConfig.small() if args.small else DemoConfig())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="core-eval", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    fa = sub.add_parser("families", help="list model families (built-in, entry points, outside) and what is tested")
    fa.add_argument("-v", "--verbose", action="store_true", help="explain the 'tested' column")
    fa.set_defaults(fn=_families)
    sub.add_parser("variants", help="list mask variants (built-in and installed)").set_defaults(fn=_variants)
    t = sub.add_parser("tiny", help="save a tiny random model + processor (no download)")
    t.add_argument("family")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=_tiny)
    tp = sub.add_parser("tasks-path", help="print the probe task folder of lm-eval or lmms-eval (for --include_path)")
    tp.add_argument("--harness", choices=("lm-eval", "lmms-eval"), default="lm-eval",
                    help="lm-eval: the shipped task_configs/; lmms-eval: the same tasks (plus video) in lmms-eval's "
                         "format, written once to a cache folder")
    tp.add_argument("--dir", default=None, help="lmms-eval: write the task folder here instead of the cache")
    tp.set_defaults(fn=_tasks_path)
    from core_eval.loading import add_family_argument
    from core_eval.probes import add_probe_arguments
    from core_eval.scoring.ram import QUERY_ROWS

    sc = sub.add_parser("score", help="score every LM head by RAM on probes -> head spec (resumable)")
    sc.add_argument("--model", required=True, help="checkpoint directory or cached model id")
    sc.add_argument("--out", required=True, help="head-spec JSON to write")
    sc.add_argument("--n", type=int, default=64)
    add_probe_arguments(sc)
    add_family_argument(sc)
    sc.add_argument("--query-rows", default="answer", choices=QUERY_ROWS,
                    help="answer: rows predicting the gold answer; last: the last prompt token; generate: "
                         "every generated token; key: the question's key tokens (default %(default)s)")
    sc.add_argument("--only-correct", action="store_true", help="only samples the model answers correctly")
    sc.add_argument("--batch-size", type=int, default=8)
    sc.add_argument("--max-new-tokens", type=int, default=16, help="for --query-rows generate")
    sc.add_argument("--frac", type=float, default=0.05, help="default top selection written to the spec")
    sc.add_argument("--bootstrap", type=int, default=1000,
                    help="resamples of the samples for the spec's stability section (0: none; docs/stability.md)")
    sc.add_argument("--dtype", default=None)
    sc.add_argument("--device", default=None)
    sc.set_defaults(fn=_score)
    se = sub.add_parser("select", help="derive top / bottom / random / layer-matched sets from a scored spec")
    se.add_argument("spec")
    se.add_argument("--rule", default="top", choices=["top", "bottom", "random", "layer_matched_random", "threshold"])
    se.add_argument("--frac", type=float, default=None)
    se.add_argument("--k", type=int, default=None)
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--threshold", type=float, default=None)
    se.add_argument("--score", default=None, help="score array to rank (default: the spec's, usually ram)")
    from core_eval.cliargs import add_output_arguments

    add_output_arguments(se)
    se.set_defaults(fn=_select)
    ex = sub.add_parser("export", help="write a checkpoint with the chosen heads ablated in its weights "
                                       "(zero; mean where o_proj has a bias), for engines that cannot be patched")
    ex.add_argument("--model", required=True, help="checkpoint directory or cached model id")
    from core_eval.options import add_arguments

    add_arguments(ex, ["head_spec", "heads", "frac", "k", "seed", "threshold"], flags={"head_spec": "--spec"})
    ex.add_argument("--ablation", default="zero", help="zero | mean (what the weights can hold)")
    add_arguments(ex, ["means"])
    ex.add_argument("--out", required=True, help="folder to write the checkpoint into")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_family_argument(ex)
    ex.set_defaults(fn=_export)
    cv = sub.add_parser("convert", help="write a spec's heads in another project's format")
    cv.add_argument("spec")
    cv.add_argument("--to", required=True, choices=["duo", "retrieval-head"],
                    help="duo: DuoAttention full_attention_heads.tsv; retrieval-head: Retrieval Head JSON")
    cv.add_argument("--out", required=True)
    cv.set_defaults(fn=_convert)
    from core_eval.report.cli import add_report_parser
    from core_eval.scoring.causal import add_causal_parser

    from core_eval.scoring.plots import add_plot_parser

    add_causal_parser(sub)
    add_report_parser(sub)
    add_plot_parser(sub)
    from core_eval.scoring.compare import add_compare_parser

    add_compare_parser(sub)
    d = sub.add_parser("demo", help="run the end-to-end pipeline on the bundled default")
    d.add_argument("--out", default="core_eval_runs/demo", help="output folder (a rerun reuses finished steps)")
    d.add_argument("--model", default=None, help="checkpoint to study (default: the bundled organism)")
    d.add_argument("--small", action="store_true", help="reduced sizes (what the test suite runs)")
    d.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:  # our errors say what to fix; no traceback
        print(f"core-eval {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
