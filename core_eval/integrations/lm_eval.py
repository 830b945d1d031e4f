"""lm-eval model ``core_hf``: lm-eval's own ``hf`` / ``hf-multimodal`` plus a core_eval intervention.

``lm_eval --model core_hf --model_args pretrained=DIR,head_spec=spec.json,heads=top,frac=0.05,ablation=zero``

Our arguments (the fields of :class:`core_eval.options.CoreArgs`, plus the chosen variant's own
options by name, e.g. ``ablation=half,factor=0.25`` or ``sparse=streaming,window=64``) are removed before lm-eval's ``HFLM`` sees the rest (which it
would pass on to ``from_pretrained``); an argument neither we nor lm-eval's HF models know is an
error listing the valid ones. The intervention is validated (config, spec, heads, variant) before
any weights load, applied right after, and recorded in the results JSON ``config["core_eval"]``.
Tasks whose hub dataset this machine cannot reach are refused before weights too
(:mod:`core_eval.integrations.task_data`).
Image-text checkpoints get ``hf-multimodal`` (images through ``generate_until``; text-only
requests fall back to ``hf``), text checkpoints get ``hf``.
"""

from __future__ import annotations

import inspect
import sys

from lm_eval.api.model import LM
from lm_eval.models.hf_vlms import HFMultimodalLM
from lm_eval.models.huggingface import HFLM

from core_eval.integrations.run_names import intervention_tag
from core_eval.integrations.task_data import check_requested_task_data
from core_eval.options import ModelArgsError, make_plan, split_core_args

# from_pretrained keywords commonly passed through lm-eval's model_args.
_FROM_PRETRAINED = {
    "attn_implementation", "device_map", "low_cpu_mem_usage", "local_files_only", "cache_dir", "token",
    "use_safetensors", "load_in_8bit", "load_in_4bit", "bnb_4bit_compute_dtype", "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant", "quantization_config", "variant", "image_token_index",
}


def _params(fn) -> set[str]:
    return {n for n, p in inspect.signature(fn).parameters.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def harness_args() -> set[str]:
    """Arguments lm-eval's HF models accept."""
    return (_params(HFLM.__init__) | _params(HFMultimodalLM.__init__) | _params(HFLM._create_model)
            | _FROM_PRETRAINED)


def split_args(kwargs: dict) -> tuple[dict, dict]:
    """Separate and type-check our arguments (and the chosen variant's options); reject unknown
    ones, listing every valid name. Returns (core, harness)."""
    core, rest = split_core_args(kwargs, harness=harness_args(), where="core_hf",
                                 harness_name="lm-eval's hf / hf-multimodal")
    if "pretrained" not in rest:
        raise ModelArgsError("core_hf: model_args needs pretrained=PATH_OR_ID")
    return core, rest


class _CoreMixin:
    """Loads through lm-eval's HF class, then applies the planned intervention."""

    def __init__(self, pretrained, *, core_plan, core_args: dict, **kwargs):
        self._core_plan = core_plan
        self._core_args = core_args
        super().__init__(pretrained=pretrained, **kwargs)
        self._enable_cpu_data_parallel()
        processor = getattr(self, "processor", None) or self.tokenizer
        self.core_intervention = core_plan.apply(self._model, processor)
        self.core_summary = {**self.core_intervention.summary(), "model_args": dict(core_args)}
        if getattr(self, "_rank", 0) == 0:
            print(self.core_intervention.one_line(), file=sys.stderr, flush=True)  # once, at start

    def _enable_cpu_data_parallel(self) -> None:
        """``accelerate launch -m lm_eval`` on CPU processes: split the data across ranks.

        lm-eval 0.4.13's ``HFLM`` turns on data parallelism only when it counts more than one GPU,
        so CPU processes would each evaluate every document. The accelerator (gloo) is already
        set up by ``HFLM``; we only give each process its rank.
        """
        acc = getattr(self, "accelerator", None)
        if acc is not None and acc.num_processes > 1 and self._world_size == 1 and acc.device.type == "cpu":
            self._rank = acc.process_index
            self._world_size = acc.num_processes

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["core_eval"] = self.core_summary
        return info


class CoreTextLM(_CoreMixin, HFLM):
    """``core_hf`` for text-only checkpoints (loglikelihood and generation)."""


class CoreMultimodalLM(_CoreMixin, HFMultimodalLM):
    """``core_hf`` for image-text checkpoints."""


class CoreHFLM(LM):
    """The registered ``core_hf`` entry: validates, then builds the right HF wrapper.

    ``CoreHFLM(pretrained=..., head_spec=..., heads=..., ...)`` returns a :class:`CoreTextLM` or
    :class:`CoreMultimodalLM`, depending on the checkpoint's family.
    """

    def __new__(cls, pretrained=None, **kwargs):
        if pretrained is not None:
            kwargs["pretrained"] = pretrained
        core, rest = split_args(kwargs)
        pretrained = rest.pop("pretrained")
        p = make_plan(pretrained, core)
        check_requested_task_data()  # lm-eval loads tasks only after the model: check their data first
        impl = CoreTextLM if p.family.text_config is None else CoreMultimodalLM
        lm = impl(pretrained, core_plan=p, core_args=core, **rest)
        name_run_folders(intervention_tag(p, seed=core.get("seed", 0)))
        return lm


_RUN_TAG: list[str] = []  # the tag of the core_hf model built last in this process


def name_run_folders(tag: str) -> None:
    """Make lm-eval write this run into ``OUTPUT_PATH/<model>__<tag>/`` (``baseline`` for
    ``heads=none``), as ``core-vlmeval`` names its folders, so runs of one model with different
    interventions do not share a folder.

    lm-eval 0.4.13 names the folder from ``pretrained`` alone (``GeneralConfigTracker
    .model_name_sanitized``) and gives models no say; the first ``core_hf`` model of a process
    wraps ``EvaluationTracker.save_results_aggregated`` / ``save_results_samples`` to add the tag
    (both write into the same folder).
    """
    from lm_eval.loggers.evaluation_tracker import EvaluationTracker

    _RUN_TAG[:] = [tag]
    for method in ("save_results_aggregated", "save_results_samples"):
        original = getattr(EvaluationTracker, method)
        if getattr(original, "_core_eval", False):
            continue

        def tagged(self, *args, _original=original, **kwargs):
            tracker = self.general_config_tracker
            name = str(tracker.model_name_sanitized)
            if _RUN_TAG and not name.endswith(f"__{_RUN_TAG[0]}"):
                tracker.model_name_sanitized = f"{name}__{_RUN_TAG[0]}"
            return _original(self, *args, **kwargs)

        tagged._core_eval = True
        setattr(EvaluationTracker, method, tagged)
