"""``core_eval.load``: ``from_pretrained`` + a head set + a mask variant, validated before loading.

Everything that can be checked without weights is checked first (config, family, head spec and
its shape, head set, variant name and options), so bad input fails in seconds with a message that
names the problem, not after minutes of loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core_eval.adapters import (
    ModelShape,
    UnsupportedArchitectureError,
    bind_family,
    check_requirements,
    family_for_config,
    shape_from_config,
)
from core_eval.intervene import Intervention, apply_intervention, check_heads
from core_eval.masks import Variant, make_variant
from core_eval.options import FAMILY_HELP, HEAD_RULES, CoreArgs, LoadError, ModelArgsError

__all__ = ["HEAD_RULES", "LoadError", "Loaded", "Plan", "load", "plan", "resolve_heads", "parse_head_list"]


@dataclass
class Loaded:
    """A loaded model with its processor (tokenizer for text models) and what was applied."""

    model: Any
    processor: Any
    intervention: Intervention
    spec: Any = None
    summary: dict = field(default_factory=dict)

    @property
    def adapter(self):
        return self.intervention.adapter


def load_config(pretrained: str | os.PathLike, **kwargs):
    """``AutoConfig.from_pretrained`` with an error that says what to pass instead."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(pretrained), **kwargs)
    except (OSError, ValueError) as e:
        raise LoadError(
            f"pretrained={pretrained!s}: cannot read a transformers config ({e}). Pass a local directory "
            "saved with save_pretrained (config.json inside) or a model id in the local HF cache."
        ) from None


def add_family_argument(parser) -> None:
    """``--family`` for every command that loads a model (one declaration)."""
    parser.add_argument("--family", default=None, help=FAMILY_HELP)


HEAD_LIST_SYNTAX = "LAYER:HEAD pairs separated by ';' (e.g. 1:0;2:3)"


def parse_head_list(text: str, *, what: str = "heads=") -> list[tuple[int, int]]:
    """Parse an explicit head list given as text, the one syntax of every entry point:
    ``"1:0;2:3"`` (``;`` between pairs, so it fits lm-eval's comma-separated ``--model_args``; on a
    command line ``,`` and spaces are accepted too), or a Python/JSON literal ``"[(1, 0), (2, 3)]"``.
    ``what`` names the argument in the error (``heads=``, ``--heads ``)."""
    import ast
    import re

    t = text.strip()
    try:
        if ":" in t:
            parts = [p for p in re.split(r"[;,+\s]+", t) if p]
            out = []
            for part in parts:
                layer, head = part.split(":")
                out.append((int(layer), int(head)))
            return out
        value = ast.literal_eval(t)
        return [tuple(int(x) for x in pair) for pair in value]
    except (ValueError, SyntaxError, TypeError):
        raise LoadError(
            f"{what}{text!r} is neither a selection rule ({', '.join(HEAD_RULES)}) nor a head list; "
            f"write heads as {HEAD_LIST_SYNTAX}"
        ) from None


#: selection rules of control sets: a spec whose saved selection was made by one of these is a control file
CONTROL_RULES = ("bottom", "random", "layer_matched_random")


def _check_control_file(spec, heads: str, sel) -> None:
    """A control file (a spec whose saved selection is e.g. ``select --rule random``) used with a rule
    that re-ranks its scores would silently give other heads (the top ones for heads=top): refused."""
    stored = spec.rule.get("rule")
    if stored not in CONTROL_RULES or sorted(sel.heads) == sorted(spec.heads):
        return
    params = ", ".join(f"{k}={v}" for k, v in spec.rule.items() if k in ("frac", "k", "seed") and v is not None)
    raise LoadError(
        f"the head spec {spec.source or ''} holds a saved '{stored}' selection ({len(spec.heads)} heads"
        f"{', ' + params if params else ''}: a control set, e.g. from `core-eval select --rule {stored}`), but "
        f"heads={heads} re-ranks its scores and ignores that selection (it would give other heads). "
        "Use heads=spec to apply the saved selection, or pass the scored spec itself for a rule.")


def resolve_heads(
    shape: ModelShape,
    *,
    spec=None,
    heads=None,
    frac: float | None = None,
    k: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
) -> tuple[list[tuple[int, int]], dict]:
    """Turn the user's head arguments into ``[(layer, head), ...]`` and a selection record.

    ``heads`` is a rule name (``HEAD_RULES``; rules other than ``none`` read ``spec``'s RAM scores,
    ``spec`` takes the spec's own selection) or an explicit list of ``(layer, head)`` pairs.
    ``None`` means the spec's selection when a spec is given, else no heads.
    """
    if heads is None:
        heads = "spec" if spec is not None else "none"
    if isinstance(heads, str) and heads not in HEAD_RULES:
        heads = parse_head_list(heads)
    if not isinstance(heads, str):
        if frac is not None or k is not None or threshold is not None:
            raise LoadError("an explicit head list takes no frac, k or threshold")
        chosen = check_heads(heads, shape)
        return chosen, {"rule": "explicit", "n": len(chosen)}
    if heads == "none":
        return [], {"rule": "none"}
    if spec is None:
        raise LoadError(f"heads={heads} needs a head spec (head_spec=PATH) to rank heads by")
    if heads == "spec":
        if frac is not None or k is not None or threshold is not None:
            raise LoadError("heads=spec uses the spec's own selection; drop frac/k/threshold or name a rule")
        return check_heads(spec.heads, shape), {"from_spec": True, **spec.rule}
    if heads != "threshold" and frac is None and k is None:
        frac = 0.05
    sel = spec.with_selection(heads, frac=frac, k=k, seed=seed, threshold=threshold)
    _check_control_file(spec, heads, sel)
    return check_heads(sel.heads, shape), {**sel.rule, "n": len(sel.heads)}


@dataclass
class Plan:
    """A validated intervention for one checkpoint, made before any weights load.

    :func:`plan` builds it from user arguments (cheap: config and spec files only);
    :meth:`apply` installs it on the loaded model. Harness wrappers use the two halves around
    their own ``from_pretrained``; :func:`load` chains them.
    """

    pretrained: str
    shape: ModelShape
    family: Any
    heads: list[tuple[int, int]]
    selection: dict
    variant: Variant
    spec: Any = None
    spec_path: Path | None = None
    means_probes: str = "grid_needle"
    means_n: int = 16
    revision: str | None = None
    means_record: dict | None = None  # the means file chosen at plan time and how it was computed

    @property
    def needs_means(self) -> bool:
        return self.variant.name == "mean" and bool(self.heads) and self.variant.config.get("means") is None

    def apply(self, model, processor=None) -> Intervention:
        """Install on ``model`` (computing head means first if ``mean`` has none)."""
        means_record = None
        if self.needs_means:
            if processor is None:
                raise LoadError("mean ablation without a means file needs the processor to compute head means")
            means_record = _compute_default_means(model, processor, self.variant, self.spec_path,
                                                  self.means_probes, self.means_n, self.pretrained)
        elif self.means_record is not None:
            means_record = dict(self.means_record)
        provenance = {
            "model": {"name_or_path": self.pretrained, "revision": self.revision,
                      "architecture": type(model).__name__},
            "selection": self.selection,
            "spec": None if self.spec is None else {
                "path": str(Path(self.spec_path).resolve()) if self.spec_path else None, "hash": self.spec.content_hash()},
        }
        if means_record:
            provenance["means"] = means_record
        bind_family(model, self.family)
        if processor is not None:
            bind_family(processor, self.family)
        return apply_intervention(model, self.heads, self.variant, provenance=provenance)


def plan(
    pretrained: str | os.PathLike,
    *,
    spec: str | os.PathLike | Any = None,
    heads=None,
    ablation: str | Variant | None = None,
    sparse: str | None = None,
    frac: float | None = None,
    k: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
    variant_options: dict | None = None,
    means: str | os.PathLike | None = None,
    means_probes: str = "grid_needle",
    means_n: int = 16,
    revision: str | None = None,
    family: Any = None,
    allow_foreign_spec: bool = False,
    **options,
) -> Plan:
    """Validate the intervention arguments against the checkpoint's config (no weights read).

    See :func:`load` for the arguments; ``**options`` are the chosen variant's options by name
    (``factor=0.25`` for a variant declaring ``factor``), like ``variant_options``.
    """
    from core_eval.spec import HeadSpecError, load_head_spec

    args = core_args(spec=spec, heads=heads, ablation=ablation, sparse=sparse, frac=frac, k=k, seed=seed,
                     threshold=threshold, variant_options=variant_options, means=means, means_probes=means_probes,
                     means_n=means_n, family=family, allow_foreign_spec=allow_foreign_spec, **options)
    spec, heads, frac, k, seed, threshold = args.head_spec, args.heads, args.frac, args.k, args.seed, args.threshold
    variant_options, means, means_probes, means_n = args.variant_options, args.means, args.means_probes, args.means_n

    config = load_config(pretrained, **({"revision": revision} if revision else {}))
    try:
        family = family_for_config(config, family)
        check_requirements(family, config=config)
    except UnsupportedArchitectureError as e:
        raise UnsupportedArchitectureError(f"pretrained={pretrained}: {e}") from None
    shape = shape_from_config(config, family)

    spec_path = None
    if spec is not None and not hasattr(spec, "heads"):
        spec_path = Path(spec)
        if not spec_path.is_file():
            raise LoadError(f"head_spec={spec_path} does not exist")
        spec = load_head_spec(spec_path, shape=shape)
    if spec is not None:
        try:
            spec.check_shape(shape)
        except HeadSpecError as e:
            raise LoadError(f"head spec {spec_path or ''} does not fit pretrained={pretrained}: {e}") from None
        _check_spec_identity(spec, spec_path, pretrained, config, family, allow_foreign_spec)

    chosen, selection = resolve_heads(shape, spec=spec, heads=heads, frac=frac, k=k, seed=seed, threshold=threshold)
    variant = _make_variant(ablation, sparse, variant_options)
    chosen = _honour_kv_policy(variant, spec, shape, chosen, variant_options)
    variant.check(shape, chosen)
    p = Plan(str(pretrained), shape, family, chosen, selection, variant, spec, spec_path,
             means_probes, means_n, revision)
    if p.needs_means:
        from core_eval.means import head_means_metadata, means_path_for

        cached = None if spec_path is None else means_path_for(spec_path)
        if means is None and cached is not None and cached.is_file():
            # reuse only means computed for this checkpoint on the same probes (else recompute)
            meta = head_means_metadata(cached, shape=shape)
            if (meta.get("probes"), meta.get("n"), meta.get("model", str(pretrained))) == \
                    (means_probes, str(means_n), str(pretrained)):
                means, p.means_record = cached, {**meta, "path": str(cached)}
        if means is not None:
            if not Path(means).is_file():
                raise LoadError(f"means={means} does not exist")
            variant.config["means"] = str(means)
    m = variant.config.get("means")
    if variant.name == "mean" and isinstance(m, (str, Path)) and p.means_record is None:
        from core_eval.means import head_means_metadata

        p.means_record = {**head_means_metadata(m, shape=shape), "path": str(m)}  # a given file: how it was computed
    return p


def core_args(*, spec=None, variant_options=None, **kwargs) -> CoreArgs:
    """The Python API's keyword arguments as a validated :class:`~core_eval.options.CoreArgs`:
    the one validation every entry point shares (types, ranges, variant and its options).
    Keywords that are not fields are the chosen variant's options by name."""
    fields_ = {k: v for k, v in kwargs.items() if k in CoreArgs.__dataclass_fields__}
    named = {k: v for k, v in kwargs.items() if k not in fields_}
    both = sorted(set(named) & set(variant_options or {}))
    if both:
        raise ModelArgsError(f"variant option(s) {both} given both by name and in variant_options; give them once")
    return CoreArgs(head_spec=spec, variant_options={**(variant_options or {}), **named}, **fields_)


def _check_spec_identity(spec, spec_path, pretrained, config, family, allow: bool) -> None:
    """Shape is not identity: refuse a spec recorded for another family / architecture unless allowed."""
    diffs = spec.identity_mismatch(family=family.name, model_type=getattr(config, "model_type", None),
                                   architectures=tuple(getattr(config, "architectures", None) or ()))
    if not diffs:
        return
    what = (f"head spec {spec_path or spec.source or '<head spec>'} was recorded for another model than "
            f"pretrained={pretrained} (same shape, but {'; '.join(diffs)})")
    if allow:
        import warnings

        warnings.warn(f"{what}; used anyway (allow_foreign_spec)", stacklevel=3)
        return
    raise LoadError(f"{what}. Score this model (core-eval score), or pass allow_foreign_spec=True "
                    "(lm-eval / VLMEvalKit: allow_foreign_spec=true) if its heads really correspond")


def _honour_kv_policy(variant: Variant, spec, shape: ModelShape, chosen, options):
    """Sparse variants take the spec's ``kv_policy`` unless ``kv_policy`` was given as an option.

    ``mean`` (a KV budget of ``ceil(heads / groups)`` ranked by the mean score of each KV group's query
    heads) needs the spec's selection score: it is resolved here into whole KV groups, every query head
    of a chosen KV head, which the variant then keeps full. Returns the (possibly expanded) heads.
    """
    if variant.kind != "sparse" or "kv_policy" not in variant.config:
        return chosen
    if spec is not None and "kv_policy" not in (options or {}):
        variant.config["kv_policy"] = spec.kv_policy
    variant.kv_policy_source = "option" if "kv_policy" in (options or {}) else "spec" if spec is not None else "default"
    if variant.config["kv_policy"] != "mean":
        return chosen
    from core_eval.spec import HeadSpecError, kv_to_query_heads, to_kv_heads

    score = None if spec is None else spec.scores.get(spec.selection.get("score"))
    try:
        return kv_to_query_heads(to_kv_heads(chosen, shape, "mean", scores=score), shape)
    except HeadSpecError as e:
        raise LoadError(f"kv_policy=mean: {e}. Use kv_policy=any or all, or a head spec with a selection score") from None


def _make_variant(ablation, sparse, options) -> Variant:
    """The variant: an ablation (default ``zero``) or a hybrid sparse pattern, not both."""
    if isinstance(ablation, Variant):
        return ablation
    if ablation is not None and sparse is not None:
        raise LoadError(
            f"ablation={ablation} and sparse={sparse} were both given; an intervention is either an ablation "
            "of the named heads or hybrid sparse attention that keeps them full. Run them separately."
        )
    variant = make_variant(sparse or ablation or "zero", **dict(options or {}))
    if sparse is not None and variant.kind != "sparse":
        raise LoadError(f"sparse={sparse} is an {variant.kind} variant; sparse patterns: streaming, text_only")
    if ablation is not None and variant.kind == "sparse":
        raise LoadError(f"ablation={ablation} is a sparse pattern; pass it as sparse={ablation}")
    return variant


def load(
    pretrained: str | os.PathLike,
    *,
    spec: str | os.PathLike | Any = None,
    heads=None,
    ablation: str | Variant | None = None,
    sparse: str | None = None,
    frac: float | None = None,
    k: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
    variant_options: dict | None = None,
    means: str | os.PathLike | None = None,
    means_probes: str = "grid_needle",
    means_n: int = 16,
    dtype: Any = None,
    device: str | None = None,
    revision: str | None = None,
    attn_implementation: str = "sdpa",
    load_processor: bool = True,
    family: Any = None,
    allow_foreign_spec: bool = False,
    **from_pretrained_kwargs,
) -> Loaded:
    """Load a supported model and processor and apply a head set with a mask variant.

    Args:
        pretrained: local directory or cached model id.
        spec: head-spec path (core-head-spec/v1, Retrieval Head JSON or DuoAttention TSV) or object.
        heads: selection rule name, ``"spec"``, ``"none"`` or explicit ``[(layer, head), ...]``.
        ablation: variant name (``zero`` (default), ``mean``, ``uniform``, ``visual_knockout``, a
            registered name) or ``"pkg.module:ClassName"``, or a :class:`Variant` instance.
        sparse: hybrid sparse attention instead of an ablation (``streaming`` or ``text_only``):
            the selected heads are the *full* (CoRe) heads, all others get the sparse pattern;
            ``variant_options`` may set ``sink``, ``window``, ``kv_policy``.
        frac / k / seed / threshold: selection size and seed for rule names (default frac 0.05).
        variant_options: options for the variant; they may also be given by name
            (``load(..., ablation="half", factor=0.25)``): a keyword the chosen variant declares
            goes to the variant, any other goes to ``from_pretrained``.
        means: head-means file for ``mean`` (default: ``<spec>.means.safetensors``, computed on
            ``means_n`` generated ``means_probes`` samples when missing).
        family: the model family (a ``Family``, a registered name or ``"pkg.module:obj"``);
            default: the registered family of the config's ``model_type``.
        allow_foreign_spec: use a spec recorded for another family / architecture of the same shape
            (default: refused, since shape is not identity; with it: a warning).
        dtype, device, revision, attn_implementation, **from_pretrained_kwargs: passed on.

    Returns a :class:`Loaded` whose ``summary`` records what was applied.
    """
    vcls = CoreArgs(ablation=ablation, sparse=sparse).variant_class() if not isinstance(ablation, Variant) else None
    named = {k: from_pretrained_kwargs.pop(k) for k in list(from_pretrained_kwargs)
             if vcls is not None and k in vcls.options}  # the variant's options by name; the rest is transformers'
    p = plan(pretrained, spec=spec, heads=heads, ablation=ablation, sparse=sparse, frac=frac, k=k, seed=seed,
             threshold=threshold, variant_options=variant_options, means=means,
             means_probes=means_probes, means_n=means_n, revision=revision, family=family,
             allow_foreign_spec=allow_foreign_spec, **named)
    model, processor = _from_pretrained(
        pretrained, family=p.family, dtype=dtype, device=device, revision=revision,
        attn_implementation=attn_implementation, load_processor=load_processor or p.needs_means,
        **from_pretrained_kwargs,
    )
    intervention = p.apply(model, processor)
    return Loaded(model, processor, intervention, p.spec, intervention.summary())


def load_family_processor(pretrained, family, *, revision=None):
    """The checkpoint's processor (tokenizer for text families), checked against the family's
    ``requires`` (no weights read)."""
    import transformers

    pauto = transformers.AutoTokenizer if family.text_config is None else transformers.AutoProcessor
    processor = pauto.from_pretrained(str(pretrained), **({"revision": revision} if revision else {}))
    try:
        check_requirements(family, processor=processor)
    except UnsupportedArchitectureError as e:
        raise UnsupportedArchitectureError(f"pretrained={pretrained}: {e}") from None
    bind_family(processor, family)
    return processor


def _from_pretrained(pretrained, *, family, dtype, device, revision, attn_implementation, load_processor, **kwargs):
    import transformers

    processor = load_family_processor(pretrained, family, revision=revision) if load_processor else None
    auto = transformers.AutoModelForCausalLM if family.text_config is None else transformers.AutoModelForImageTextToText
    kw = dict(kwargs)
    if revision:
        kw["revision"] = revision
    if dtype is not None:
        kw["dtype"] = dtype
    if device is not None:
        kw["device_map"] = device
    model = auto.from_pretrained(str(pretrained), attn_implementation=attn_implementation, **kw).eval()
    bind_family(model, family)
    return model, processor


def _compute_default_means(model, processor, variant, spec_path, probes_name, n, pretrained):
    """Compute head means on generated probes; cache beside the spec when there is one (with
    the checkpoint and probes they were computed on: another checkpoint or probe set recomputes)."""
    from core_eval.means import compute_head_means, means_path_for, save_head_means
    from core_eval.probes import generate, probe_set_hash
    from core_eval.prompting import iter_batches

    samples = generate(probes_name, n, seed=0)
    means = compute_head_means(model, iter_batches(processor, samples, batch_size=4))
    record = {"probes": probes_name, "n": n, "probe_hash": probe_set_hash(samples), "model": str(pretrained)}
    if spec_path is not None:
        path = save_head_means(means_path_for(spec_path), means, {k: str(v) for k, v in record.items()})
        record["path"] = str(path)
    variant.config["means"] = means
    return record
