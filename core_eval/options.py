"""The intervention arguments shared by every harness wrapper (lm-eval ``core_hf``, VLMEvalKit).

Harness-free: parsing and validating ``KEY=VALUE`` model arguments must not import a harness.
"""

from __future__ import annotations

# name -> (type, help). Types are applied to the parsed strings.
CORE_ARGS: dict[str, tuple[type, str]] = {
    "head_spec": (str, "head-spec file (core-head-spec/v1, Retrieval Head JSON, DuoAttention TSV)"),
    "heads": (str, "top | bottom | random | layer_matched_random | threshold | spec | none | L:H;L:H"),
    "frac": (float, "fraction of all heads for the rule (default 0.05)"),
    "k": (int, "number of heads for the rule (instead of frac)"),
    "threshold": (float, "score threshold for heads=threshold"),
    "seed": (int, "seed for random selections"),
    "ablation": (str, "zero | mean | uniform | visual_knockout | registered name | pkg.module:Class"),
    "means": (str, "head-means file for ablation=mean"),
    "sparse": (str, "hybrid sparse attention: streaming | text_only (the selected heads stay full)"),
    "sink": (int, "sink tokens of sparse heads (default 4)"),
    "window": (int, "recent window of sparse heads (default 256)"),
    "kv_policy": (str, "query heads -> full KV heads for sparse: any | all"),
    "family": (str, "model family: a registered name or pkg.module:obj (default: by the config's model_type)"),
    "allow_foreign_spec": (bool, "use a head spec recorded for another family / architecture of the same shape"),
}
_VARIANT_OPTIONS = ("sink", "window", "kv_policy")


class ModelArgsError(ValueError):
    """A bad model argument (raised before any weights load)."""


def coerce(key: str, value, typ: type, help_: str):
    """``value`` (often a string from a command line) as ``typ``, or a :class:`ModelArgsError`."""
    if value is None or (isinstance(value, typ) and not (isinstance(value, bool) and typ is not bool)):
        return value
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ModelArgsError(f"{key}={value!r} is not a valid bool ({help_})")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and not value.is_integer():  # never round 2.5 to 2
        raise ModelArgsError(f"{key}={value!r} is not a valid int ({help_})")
    try:
        return typ(value) if typ is not str else str(value)
    except (TypeError, ValueError):
        raise ModelArgsError(f"{key}={value!r} is not a valid {typ.__name__} ({help_})") from None


def parse_core_args(args: dict) -> dict:
    """Type-check the :data:`CORE_ARGS` entries of ``args`` (other keys are ignored)."""
    return {k: coerce(k, v, *CORE_ARGS[k]) for k, v in args.items() if k in CORE_ARGS}


def make_plan(pretrained, core: dict):
    """``core_eval.plan`` from parsed :data:`CORE_ARGS` (validates config, family, spec, heads,
    variant, and the processor fields the family reads: all before any weights load)."""
    from core_eval.loading import load_family_processor, plan

    p = plan(
        pretrained,
        spec=core.get("head_spec"),
        heads=core.get("heads"),
        ablation=core.get("ablation"),
        sparse=core.get("sparse"),
        variant_options={k: core[k] for k in _VARIANT_OPTIONS if k in core} or None,
        frac=core.get("frac"),
        k=core.get("k"),
        threshold=core.get("threshold"),
        seed=core.get("seed", 0),
        means=core.get("means"),
        family=core.get("family"),
        allow_foreign_spec=bool(core.get("allow_foreign_spec", False)),
    )
    if any(r.startswith("processor.") for r in p.family.requires):
        load_family_processor(pretrained, p.family)  # the harness loads its own copy after this
    return p
