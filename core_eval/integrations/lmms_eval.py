"""lmms-eval model ``core``: one of lmms-eval's own HF-based models plus a core_eval intervention.

``lmms-eval --model core --model_args pretrained=DIR,base=qwen2_5_vl,head_spec=S,heads=top,frac=0.05``

lmms-eval (0.7.3) finds the model through the ``lmms_eval.models`` entry point
(:func:`manifests`), so a plain ``pip install`` is enough. ``base=`` picks the lmms-eval class
that loads and runs the checkpoint (:data:`BASES`; by default from the config's ``model_type``);
its requests (images, videos, multi-round) go through that class unchanged, so ``heads=none``
gives exactly that model's outputs. Our arguments are the same as lm-eval's ``core_hf`` (the
fields of :class:`core_eval.options.CoreArgs`, plus the chosen variant's own options by name): they
are removed and validated (config, spec, heads,
variant) before any weights load; an argument neither we nor the base class know is an error
listing both. The intervention is applied to the base's ``_model`` right after it loads.

Recording: lmms-eval 0.7.3 builds ``results["config"]`` itself and has no model hook for it (its
``get_model_info`` call is commented out), so the first ``core`` model wraps
:meth:`EvaluationTracker.save_results_aggregated` to add ``config["core_eval"]`` (the
intervention summary) to the results JSON it writes, and to name the run folder
``<model>__<tag>`` after the intervention (the tag ``core_hf`` and ``core-vlmeval`` use);
:func:`record` adds the summary to results returned by ``simple_evaluate`` in Python.
"""

from __future__ import annotations

import functools
import importlib
import inspect

from lmms_eval.api.model import lmms

from core_eval.integrations.run_names import intervention_tag
from core_eval.options import ModelArgsError, make_plan, split_core_args

#: ``base=`` name -> lmms-eval class (``module:Class``). OneVision / LLaVA(-NeXT) HF checkpoints
#: run through lmms-eval's ``llava_hf`` (its ``llava_onevision`` model needs the LLaVA-NeXT repo);
#: ``auto`` is core_eval's generic ``AutoModelForImageTextToText`` model (lmms-eval's own,
#: ``chat/huggingface.py``, loads image-text checkpoints as ``AutoModel``: see
#: :mod:`core_eval.integrations.lmms_eval_auto`).
BASES = {
    "qwen2_5_vl": "lmms_eval.models.simple.qwen2_5_vl:Qwen2_5_VL",
    "qwen2_vl": "lmms_eval.models.simple.qwen2_vl:Qwen2_VL",
    "qwen3_vl": "lmms_eval.models.simple.qwen3_vl:Qwen3_VL",
    "llava_hf": "lmms_eval.models.simple.llava_hf:LlavaHf",
    "llava_onevision": "lmms_eval.models.simple.llava_hf:LlavaHf",
    "auto": "core_eval.integrations.lmms_eval_auto:AutoVLM",
}
#: config ``model_type`` -> default ``base``.
DEFAULT_BASE = {
    "qwen2_5_vl": "qwen2_5_vl", "qwen2_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl",
    "llava": "llava_hf", "llava_next": "llava_hf", "llava_onevision": "llava_onevision",
}
#: Keys lmms-eval itself passes to every model (``create_from_arg_string``'s additional config).
_HARNESS_KEYS = {"batch_size", "max_batch_size", "device"}
_LIVE: list[dict] = []  # summaries of the core models built in this process (for the results JSON)
_TAGS: list[str] = []  # the run-folder tag of the core model built last


def manifests():
    """``lmms_eval.models`` entry point: the ``core`` model (a name of our own; plugins load with
    overwrite on, so a built-in name would replace lmms-eval's model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="core", simple_class_path="core_eval.integrations.lmms_eval.CoreLMMS")]


def base_class(name: str):
    """The lmms-eval class of ``base=name`` (imported now)."""
    if name not in BASES:
        raise ModelArgsError(f"core: base={name!r} is not one of {', '.join(BASES)}")
    module, cls = BASES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _params(cls) -> set[str]:
    return {n for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def split_args(kwargs: dict) -> tuple[dict, str, dict]:
    """``(core args, base name, base args)``: our arguments (and the chosen variant's options)
    validated, and every key neither we nor the base class take refused with both lists."""
    if not kwargs.get("pretrained"):
        raise ModelArgsError("core: model_args needs pretrained=PATH_OR_ID")
    base = kwargs.get("base")
    if base is None:
        from core_eval.loading import load_config

        base = DEFAULT_BASE.get(getattr(load_config(kwargs["pretrained"]), "model_type", None), "auto")
    if base not in BASES:
        raise ModelArgsError(f"core: base={base!r} is not one of {', '.join(BASES)}")
    accepted = _params(base_class(base)) | _HARNESS_KEYS
    core, rest = split_core_args(kwargs, harness=accepted | {"base"}, where="core",
                                 harness_name=f"base={base} ({BASES[base]}) and base ({', '.join(BASES)})")
    rest.pop("base", None)
    return core, base, rest


@functools.cache
def _wrapped(base_cls):
    """``base_cls`` with the intervention applied after its ``__init__`` loads the weights."""

    def __init__(self, *, core_plan, core_args, base_name, **kwargs):
        if base_name == "auto":
            kwargs["family"] = core_plan.family  # a dotted-path family=, already resolved by the plan
        base_cls.__init__(self, **kwargs)
        model = self._model
        processor = getattr(self, "processor", None) or getattr(self, "_image_processor", None)
        self.core_intervention = core_plan.apply(getattr(model, "module", model), processor)
        self.core_summary = {**self.core_intervention.summary(), "harness": "lmms-eval",
                             "base": {"name": base_name, "class": BASES[base_name]}, "model_args": dict(core_args)}
        _LIVE.append(self.core_summary)
        _TAGS[:] = [intervention_tag(core_plan, seed=core_args.get("seed", 0))]
        _record_in_saved_results()

    return type(f"Core{base_cls.__name__}", (base_cls,), {"__init__": __init__, "__module__": __name__})


class CoreLMMS(lmms):
    """The registered ``core`` entry: validates, then builds the wrapped base model.

    ``CoreLMMS(pretrained=..., base=..., head_spec=..., heads=..., ...)`` returns an instance of
    the base lmms-eval class (a subclass made by :func:`_wrapped`): its ``is_simple`` and request
    handling are the base's own.
    """

    is_simple = True

    def __new__(cls, pretrained=None, **kwargs):
        if pretrained is not None:
            kwargs["pretrained"] = pretrained
        core, base, rest = split_args(kwargs)
        p = make_plan(rest["pretrained"], core)  # every check that needs no weights
        return _wrapped(base_class(base))(core_plan=p, core_args=core, base_name=base, **rest)

    def generate_until(self, requests):  # pragma: no cover (never instantiated: __new__ returns the base)
        raise NotImplementedError

    loglikelihood = generate_until_multi_round = generate_until


def record(results: dict) -> dict:
    """``results`` (from ``simple_evaluate``) with ``config["core_eval"]`` of the core model built
    last in this process (unchanged when there is none)."""
    if _LIVE and isinstance(results, dict) and isinstance(results.get("config"), dict):
        results["config"]["core_eval"] = _LIVE[-1]
    return results


def _record_in_saved_results() -> None:
    """Wrap ``EvaluationTracker.save_results_aggregated`` once so the written results JSON holds
    ``config["core_eval"]`` (see the module docstring)."""
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker

    save = EvaluationTracker.save_results_aggregated
    if getattr(save, "_core_eval", False):
        return

    @functools.wraps(save)
    def save_with_core(self, results, *args, **kwargs):
        tracker = self.general_config_tracker  # the samples files follow into the same folder
        name = str(tracker.model_name_sanitized)
        if _TAGS and not name.endswith(f"__{_TAGS[0]}"):
            tracker.model_name_sanitized = f"{name}__{_TAGS[0]}"
        return save(self, record(results), *args, **kwargs)

    save_with_core._core_eval = True
    EvaluationTracker.save_results_aggregated = save_with_core
