"""``core-eval causal``: a thin argparse layer over :func:`core_eval.scoring.causal.run_causal`."""

from __future__ import annotations

import argparse
import json

from .effects import MODES
from .run import METHODS, run_causal


def add_causal_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``core-eval causal`` on an ``argparse`` subparsers object."""
    from core_eval.cliargs import add_output_arguments
    from core_eval.loading import add_family_argument
    from core_eval.probes import add_probe_arguments

    p = subparsers.add_parser(
        "causal", help="causal check of a RAM ranking: per-head ablation effects on the gold answer",
        description="Measure each head's effect on the gold answer (drop in log-probability and accuracy when "
                    "that head alone is ablated), exactly and/or by attribution patching; write the effects "
                    "into the head spec and report the rank correlation with RAM.")
    p.add_argument("--model", required=True, help="checkpoint directory or cached model id")
    p.add_argument("--spec", required=True, help="head spec with RAM scores")
    p.add_argument("--n", type=int, default=32, help="number of samples")
    add_probe_arguments(p, seed_help="probe seed and random-subset seed")
    add_family_argument(p)
    p.add_argument("--mode", default="zero", choices=MODES, help="ablation mode")
    p.add_argument("--means", default=None, help="head-means file for --mode mean (default: <out>.means."
                   "safetensors if present, else computed on 16 grid_needle samples and saved there)")
    p.add_argument("--subset", default="auto",
                   help="heads for the exact method: all, topN+randomM (e.g. top50+random50), topN, randomM, "
                        "or auto (all if <= 256 heads, else top50+random50)")
    p.add_argument("--method", default="both", choices=METHODS)
    p.add_argument("--score", default=None, help="the RAM array of the spec (default: ram)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top", type=int, default=10, help="rows per direction in the disagreement table")
    add_output_arguments(p)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=causal_main)
    return p


def causal_main(args) -> int:
    """``core-eval causal``: see :func:`add_causal_parser`."""
    from core_eval.cliargs import output_path

    out = output_path(args.spec, args.out, args.in_place, "causal")  # before anything loads
    run_causal(args.model, args.spec, out, probes=args.probes, n=args.n, seed=args.seed, knobs=json.loads(args.knobs),
               image_root=args.image_root, family=args.family, mode=args.mode, means=args.means, subset=args.subset,
               method=args.method, score=args.score, batch_size=args.batch_size, top=args.top, dtype=args.dtype,
               device=args.device, progress=not args.no_progress)
    return 0
