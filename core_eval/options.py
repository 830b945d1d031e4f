"""The intervention arguments: declared once, as the fields of :class:`CoreArgs`.

Every entry point derives its argument table, help and validation from this dataclass (as kvpress
declares a press's options as dataclass fields with help in the field metadata):

* lm-eval ``core_hf`` (``core_eval/integrations/lm_eval.py``) and the VLMEvalKit model
  (``core_eval/integrations/vlmeval/``): ``KEY=VALUE`` model arguments;
* ``core_eval.load`` / ``core_eval.plan`` (``core_eval/loading.py``): keyword arguments;
* the ``core-eval`` command line (:func:`add_arguments`).

Besides the fields, the **chosen variant's own options** pass through by name: ``ablation=half,
factor=0.25`` gives ``factor`` to the ``half`` variant, ``sparse=streaming,window=64`` gives
``window`` to ``streaming`` (a variant declares them in its ``options``). An argument that is
neither a field, an option of the chosen variant nor the harness's own is an error that lists all
valid ones, raised before any weights load.

Harness-free: nothing here imports a harness (only the variant registry, to read options).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

from core_eval.masks import Variant, VariantError, available_variants, get_variant


class LoadError(ValueError):
    """Bad arguments to :func:`core_eval.load` / :func:`core_eval.plan` (raised before any weights are read)."""


class ModelArgsError(LoadError, VariantError):
    """A bad intervention / model argument (raised before any weights load)."""


def _arg(typ: type, default, help_: str, *, objects: bool = False):
    """A :class:`CoreArgs` field: ``typ`` for text values, ``help_`` for every table and help text;
    ``objects``: the Python API may also pass a non-text object (a HeadSpec, a head list, ...)."""
    return field(default=default, metadata={"type": typ, "help": help_, "objects": objects})


HEAD_RULES = ("top", "bottom", "random", "layer_matched_random", "threshold", "spec", "none")
FAMILY_HELP = ("model family: a registered name (core-eval families), or pkg.module:obj for a family defined "
               "outside core_eval (default: the family of the config's model_type)")


@dataclass
class CoreArgs:
    """The intervention arguments shared by every entry point (one field = one argument)."""

    head_spec: Any = _arg(str, None, "head-spec file (core-head-spec/v1, Retrieval Head JSON, DuoAttention TSV)",
                          objects=True)
    heads: Any = _arg(str, None, "top | bottom | random | layer_matched_random | threshold | spec | none, or an "
                                 "explicit list L:H;L:H (heads=spec applies the spec's own saved selection)",
                      objects=True)
    frac: float | None = _arg(float, None, "fraction of all heads for the rule (default 0.05)")
    k: int | None = _arg(int, None, "number of heads for the rule (instead of frac)")
    threshold: float | None = _arg(float, None, "score threshold for heads=threshold")
    seed: int = _arg(int, 0, "seed for random selections")
    ablation: Any = _arg(str, None, "zero | mean | uniform | visual_knockout | a registered name "
                                    "(core-eval variants) | pkg.module:Class", objects=True)
    sparse: str | None = _arg(str, None, "hybrid sparse attention: streaming | text_only (the selected heads "
                                         "stay full)")
    means: Any = _arg(str, None, "head-means file for ablation=mean", objects=True)
    means_probes: str = _arg(str, "grid_needle", "probe family the means of ablation=mean are computed on when "
                                                 "no means file is given")
    means_n: int = _arg(int, 16, "number of probes those means are computed on")
    family: Any = _arg(str, None, FAMILY_HELP, objects=True)
    allow_foreign_spec: bool = _arg(bool, False, "use a head spec recorded for another family / architecture "
                                                 "of the same shape")
    #: options of the chosen variant (``sink``, ``window``, ``factor``, ...), by name
    variant_options: dict = field(default_factory=dict, metadata={"internal": True})

    def __post_init__(self):
        for f in arg_fields():
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), f.metadata["type"], f.metadata["help"],
                                         objects=f.metadata["objects"]))
        if self.frac is not None and not (math.isfinite(self.frac) and 0.0 < self.frac <= 1.0):
            raise ModelArgsError(f"frac={self.frac!r} is not a fraction in (0, 1]: pass e.g. frac=0.05 "
                                 "(5% of all heads); for no heads use heads=none")
        if self.k is not None and self.k < 0:
            raise ModelArgsError(f"k={self.k!r} is not a head count: pass an integer >= 0")
        if self.frac is not None and self.k is not None:
            raise ModelArgsError("give exactly one of frac and k (both were given): frac=0.05 for 5% of all heads, "
                                 "or k=20 for 20 heads")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ModelArgsError(f"threshold={self.threshold!r} must be a finite number")
        if self.means_n < 1:
            raise ModelArgsError(f"means_n={self.means_n} must be >= 1")
        if self.ablation is not None and self.sparse is not None:
            raise ModelArgsError(
                f"ablation={self.ablation} and sparse={self.sparse} were both given; an intervention is either an "
                "ablation of the named heads or hybrid sparse attention that keeps them full. Run them separately.")
        self.variant_options = dict(self.variant_options or {})
        if self.variant_options:
            self.variant_options = check_variant_options(self.variant_class(), self.variant_options)

    # ------------------------------------------------------------------ the variant

    @property
    def variant_name(self) -> str:
        v = self.sparse or self.ablation or "zero"
        return v.name if isinstance(v, Variant) else str(v)

    def variant_class(self) -> type[Variant]:
        """The chosen variant's class (registered name, entry point or ``pkg.module:Class``)."""
        v = self.sparse or self.ablation or "zero"
        if isinstance(v, Variant):
            return type(v)
        try:
            return get_variant(v)
        except VariantError as e:
            raise ModelArgsError(str(e)) from None

    # ------------------------------------------------------------------ from / to dicts

    @classmethod
    def split(cls, args: dict, *, harness: Iterable[str] | None = None, where: str = "core_eval",
              harness_help: dict | None = None, harness_name: str = "the harness",
              noun: str = "model_args") -> tuple["CoreArgs", dict]:
        """``(CoreArgs, rest)`` from a flat argument dict: fields, then the chosen variant's options
        by name; ``rest`` is what is left (the harness's). With ``harness`` (the names the harness
        accepts), anything left that it does not accept is a :class:`ModelArgsError` listing all
        valid names. Validates everything that needs no config (types, ranges, variant, options)."""
        names = field_names()
        core = cls(**{k: v for k, v in args.items() if k in names})
        vcls = core.variant_class()
        rest = {k: v for k, v in args.items() if k not in names}
        vopts = {k: rest.pop(k) for k in list(rest) if k in vcls.options}
        if vopts:
            core.variant_options = check_variant_options(vcls, vopts)
        if harness is not None:
            unknown = sorted(set(rest) - set(harness))
            if unknown:
                raise ModelArgsError(unknown_message(where, unknown, vcls, harness, harness_help, harness_name, noun))
        return core, rest

    def given(self) -> dict:
        """The arguments that differ from their defaults, flat (fields + variant options)."""
        out = {f.name: getattr(self, f.name) for f in arg_fields() if getattr(self, f.name) != f.default}
        return {**out, **self.variant_options}

    def plan_kwargs(self) -> dict:
        """Keyword arguments of :func:`core_eval.loading.plan`."""
        return {"spec": self.head_spec, "heads": self.heads, "ablation": self.ablation, "sparse": self.sparse,
                "frac": self.frac, "k": self.k, "threshold": self.threshold, "seed": self.seed,
                "means": self.means, "means_probes": self.means_probes, "means_n": self.means_n,
                "family": self.family, "allow_foreign_spec": self.allow_foreign_spec,
                "variant_options": dict(self.variant_options) or None}


def arg_fields():
    """The :class:`CoreArgs` fields that are user arguments (in declaration order)."""
    return [f for f in fields(CoreArgs) if not f.metadata.get("internal")]


def field_names() -> set[str]:
    return {f.name for f in arg_fields()}


def args_table() -> dict[str, tuple[type, str]]:
    """``{name: (type, help)}`` of the intervention arguments (derived from :class:`CoreArgs`)."""
    return {f.name: (f.metadata["type"], f.metadata["help"]) for f in arg_fields()}


def variant_options_table() -> dict[str, tuple[list[str], str]]:
    """``{option: ([variants declaring it], help)}`` over every installed variant."""
    out: dict[str, tuple[list[str], str]] = {}
    for name in available_variants():
        try:
            cls = get_variant(name)
        except VariantError:
            continue
        for opt, (_, _, help_) in cls.options.items():
            if opt in field_names():
                continue
            out.setdefault(opt, ([], help_))[0].append(name)
    return out


def unknown_message(where, unknown, vcls, harness, harness_help, harness_name, noun="model_args") -> str:
    """The error for unknown arguments: every valid name, grouped by who takes it."""
    ours = ", ".join(f"{k} ({h})" for k, (_, h) in args_table().items())
    own = {k: v for k, v in vcls.options.items() if k not in field_names()}
    vtext = (", ".join(f"{k} ({h})" for k, (_, _, h) in own.items()) if own else "none")
    others = {k: v for k, v in variant_options_table().items() if k not in own}
    otext = ", ".join(f"{k} ({'/'.join(vs)}: {h})" for k, (vs, h) in others.items())
    wrong = [u for u in unknown if u in others]
    hint = ""
    if wrong:
        hint = " " + "; ".join(f"{u} is an option of {', '.join(others[u][0])}, not of {vcls.name!r}"
                               for u in wrong) + " (choose that variant with ablation= or sparse=, or drop it)."
    if harness_help:
        htext = "; ".join(f"{k} ({h})" for k, h in harness_help.items())
    else:
        htext = ", ".join(sorted(harness))
    return (f"{where}: unknown {noun} {unknown}.{hint} core_eval arguments: {ours}. Options of variant "
            f"{vcls.name!r}: {vtext}." + (f" Options of other variants: {otext}." if otext else "")
            + f" {harness_name} arguments: {htext}.")


def check_variant_options(vcls: type[Variant], options: dict) -> dict:
    """Type-check ``options`` against the variant's declared ``options`` (unknown ones refused)."""
    unknown = sorted(set(options) - set(vcls.options))
    if unknown:
        valid = ", ".join(f"{k} ({h})" for k, (_, _, h) in vcls.options.items()) or "none"
        raise ModelArgsError(f"variant {vcls.name!r} got unknown option(s) {unknown}; its options: {valid}")
    out = {}
    for key, value in options.items():
        typ, _default, help_ = vcls.options[key]
        out[key] = coerce(key, value, typ, help_, objects=typ is object) if typ in (bool, int, float, str) else value
    return out


def coerce(key: str, value, typ: type, help_: str, *, objects: bool = False):
    """``value`` (often a string from a command line) as ``typ``, or a :class:`ModelArgsError`.

    Strict: ``k=2.5`` is refused (never truncated to 2), as is ``frac=true``; ``objects=True`` lets
    non-text objects through unchanged (the Python API's HeadSpec, head list, Variant, tensor)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if typ is str:
            return text
        if typ is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ModelArgsError(f"{key}={value!r} is not a valid bool ({help_})")
        try:
            return typ(text)
        except (TypeError, ValueError):
            raise ModelArgsError(f"{key}={value!r} is not a valid {typ.__name__} ({help_})") from None
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif typ is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif typ is str and not objects:
        if isinstance(value, (numbers.Number, bool)):
            raise ModelArgsError(f"{key}={value!r} is not a valid str ({help_})")
        return str(value)
    if objects:
        return value
    raise ModelArgsError(f"{key}={value!r} is not a valid {typ.__name__} ({help_})")


# ----------------------------------------------------------------------------- compatible function API

class _Table(dict):
    """Read-only view of :func:`args_table` (kept for callers of the former ``CORE_ARGS`` dict)."""


CORE_ARGS: dict[str, tuple[type, str]] = _Table(args_table())


def split_core_args(args: dict, *, harness: Iterable[str] | None = None, where: str = "core_eval",
                    harness_help: dict | None = None, harness_name: str = "the harness",
                    noun: str = "model_args") -> tuple[dict, dict]:
    """``(core, rest)``: validated intervention arguments (fields + the variant's options, flat) and
    the rest; see :meth:`CoreArgs.split`."""
    core, rest = CoreArgs.split(args, harness=harness, where=where, harness_help=harness_help,
                                harness_name=harness_name, noun=noun)
    given = {k: v for k, v in core.given().items() if k in args}
    return given, rest


def parse_core_args(args: dict) -> dict:
    """Type-check the intervention arguments of ``args`` (fields and the chosen variant's options);
    other keys are ignored. Returns them typed, flat."""
    return split_core_args(args)[0]


def make_plan(pretrained, core: dict | CoreArgs):
    """``core_eval.plan`` from parsed arguments (validates config, family, spec, heads, variant, and
    the processor fields the family reads: all before any weights load)."""
    from core_eval.loading import load_family_processor, plan

    if not isinstance(core, CoreArgs):
        core = CoreArgs.split(dict(core))[0]
    p = plan(pretrained, **core.plan_kwargs())
    if any(r.startswith("processor.") for r in p.family.requires):
        load_family_processor(pretrained, p.family)  # the harness loads its own copy after this
    return p


def help_text(sep: str = "; ") -> str:
    """One line of every argument with its help, plus where variant options come from."""
    opts = ", ".join(f"{k} ({'/'.join(vs)})" for k, (vs, _) in variant_options_table().items())
    return (sep.join(f"{k}: {h}" for k, (_, h) in args_table().items())
            + f"{sep}and the chosen variant's options by name ({opts}; `core-eval variants` lists them)")


def add_arguments(parser, names: Iterable[str], *, flags: dict | None = None, defaults: dict | None = None) -> None:
    """Add ``--name`` options for the given :class:`CoreArgs` fields to an argparse parser (types and
    help from the dataclass; ``flags`` renames, e.g. ``{"head_spec": "--spec"}``)."""
    table = {f.name: f for f in arg_fields()}
    for name in names:
        f = table[name]
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        default = (defaults or {}).get(name, f.default)
        typ = f.metadata["type"]
        if typ is bool:
            parser.add_argument(flag, dest=name, action="store_true", help=f.metadata["help"])
        else:
            parser.add_argument(flag, dest=name, type=typ, default=default, help=f.metadata["help"])
