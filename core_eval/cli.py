"""``core-eval`` command line: thin wrappers over the Python API."""

from __future__ import annotations

import argparse
import json
import sys


def _families(args) -> int:
    from core_eval.adapters import registered_families

    for f in registered_families().values():
        print(f"{f.name:12s} {'/'.join(f.model_types):40s} {f.notes}")
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
    from core_eval.resources import tasks_dir

    print(tasks_dir())
    return 0


def _demo(args) -> int:
    from core_eval.demo import run_demo

    run_demo(out_dir=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="core-eval", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("families", help="list supported model families").set_defaults(fn=_families)
    sub.add_parser("variants", help="list mask variants (built-in and installed)").set_defaults(fn=_variants)
    t = sub.add_parser("tiny", help="save a tiny random model + processor (no download)")
    t.add_argument("family")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=_tiny)
    sub.add_parser("tasks-path", help="print the lm-eval task folder (for --include_path)").set_defaults(
        fn=_tasks_path)
    d = sub.add_parser("demo", help="run the end-to-end pipeline on the bundled default")
    d.add_argument("--out", default="core_eval_runs/demo")
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
