"""VLMEvalKit model wrapper: a Hugging Face image-text model with a core_eval intervention.

:class:`CoreVLM` takes the same load-time options as lm-eval's ``core_hf`` (``pretrained``,
``head_spec``, ``heads``, ``frac``/``k``, ``threshold``, ``seed``, ``ablation``, ``means``) plus
``dtype``, ``device``, ``revision``, ``attn_implementation``, ``max_new_tokens`` and
``log_prompts``. The intervention is planned (validated) before weights load and applied right
after; generation is greedy, one sample at a time, through the processor's chat template.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vlmeval.vlm.base import BaseModel

from core_eval._io import atomic_write

from ._common import (DEFAULT_MAX_NEW_TOKENS, make_plan, probe_dataset, run_identity, split_model_args)

RECORD_FILE = "core_eval.json"
PROMPTS_FILE = "core_eval_prompts.jsonl"


def _torch_dtype(dtype):
    if dtype is None or dtype == "auto":
        return dtype
    import torch

    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype (float32, bfloat16, float16, auto)")
    return value


class CoreVLM(BaseModel):
    """``supported_VLM[name] = partial(CoreVLM, pretrained=..., heads=..., ...)``.

    Messages are VLMEvalKit's ``[{"type": "image" | "text", "value": ...}, ...]`` (any number of
    images, interleaved with text in order). They become one user turn of the processor's chat
    template, ``{"type": "image"}`` / ``{"type": "text"}`` entries in message order (what
    lm-eval's ``hf-multimodal --apply_chat_template`` builds for the probe tasks).
    """

    INTERLEAVE = True
    allowed_types = ["text", "image"]
    is_api = False

    def __init__(self, pretrained=None, *, record_dir=None, run_name=None, use_vllm=False, **kwargs):
        super().__init__()
        core, load = split_model_args({"pretrained": pretrained, **kwargs})
        self.core_args, self.load_args = core, load
        self.core_plan = make_plan(load["pretrained"], core)  # fails here, before any weights load
        import torch

        from core_eval.loading import _from_pretrained

        device = load.get("device") or ("cuda" if torch.cuda.is_available() else None)
        self.model, self.processor = _from_pretrained(
            load["pretrained"], family=self.core_plan.family, dtype=_torch_dtype(load.get("dtype")),
            device=device, revision=load.get("revision"),
            attn_implementation=load.get("attn_implementation") or "sdpa", load_processor=True)
        self.core_intervention = self.core_plan.apply(self.model, self.processor)
        print(self.core_intervention.one_line(), file=sys.stderr, flush=True)  # once, at start
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.text_only = not hasattr(self.processor, "image_processor")
        self.max_new_tokens = load.get("max_new_tokens")
        self.log_prompts = bool(load.get("log_prompts"))
        self.record_dir = Path(record_dir) if record_dir else None
        self.core_summary = {**self.core_intervention.summary(),
                             "model_args": {**core, **{k: v for k, v in load.items() if v is not None}}}
        self.record = {
            "name": run_name,
            "harness": "vlmeval",
            "identity": run_identity(self.core_plan, core, load),
            "core_eval": self.core_summary,
            "generation": {"do_sample": False,
                           "max_new_tokens": self.max_new_tokens or "per dataset (probe task max_gen_toks, "
                                                                     f"else {DEFAULT_MAX_NEW_TOKENS})"},
            "device": str(self.model.device), "dtype": str(self.model.dtype),
        }
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.record_dir / RECORD_FILE, json.dumps(self.record, indent=2, default=str))

    # ------------------------------------------------------------------ prompt + generation

    def generation_settings(self, dataset: str | None) -> tuple[int, tuple[str, ...]]:
        """``(max_new_tokens, stop strings)``: a core probe dataset's lm-eval ``generation_kwargs``
        (``max_gen_toks``, ``until``), else :data:`DEFAULT_MAX_NEW_TOKENS` and no stop string;
        ``max_new_tokens=`` in the model args overrides the budget."""
        spec = probe_dataset(dataset) if dataset else None
        budget, until = (spec.max_gen_toks, spec.until) if spec else (DEFAULT_MAX_NEW_TOKENS, ())
        return (self.max_new_tokens or budget), until

    def build_inputs(self, message):
        """``(prompt text, processor inputs)`` for one VLMEvalKit message."""
        from PIL import Image

        images, content = [], []
        for item in message:
            if item["type"] == "image":
                with Image.open(item["value"]) as im:
                    images.append(im.convert("RGB"))
                content.append({"type": "image"})
            else:
                content.append({"type": "text", "text": str(item["value"])})
        if images and self.text_only:
            raise ValueError(f"{self.load_args['pretrained']} is a text-only model but the prompt has images")
        tok = self.tokenizer
        if self.text_only:
            messages = [{"role": "user", "content": "".join(c["text"] for c in content)}]
        else:
            messages = [{"role": "user", "content": content}]
        templ = self.processor if getattr(self.processor, "chat_template", None) else None
        if templ is None and getattr(tok, "chat_template", None):
            templ = tok
        if templ is not None:
            prompt = templ.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:  # no chat template: the model's image token where each image goes
            image_token = getattr(self.processor, "image_token", "<image>")
            prompt = "".join(image_token if c["type"] == "image" else c["text"] for c in content)
        kwargs = dict(return_tensors="pt")
        if tok.bos_token is not None and prompt.startswith(tok.bos_token):
            kwargs["add_special_tokens"] = False  # the template wrote BOS (as core_eval.prompting)
        if self.text_only:
            inputs = tok([prompt], **kwargs)
        else:
            inputs = self.processor(text=[prompt], images=images or None, **kwargs)
        if self.text_only:
            return prompt, inputs.to(self.model.device)
        return prompt, inputs.to(self.model.device, self.model.dtype)  # floats only, as lm-eval

    def generate_inner(self, message, dataset=None):
        import torch

        prompt, inputs = self.build_inputs(message)
        max_new, until = self.generation_settings(dataset)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new, do_sample=False, use_cache=True,
                                      pad_token_id=self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for stop in until:  # lm-eval cuts the generation at its `until` strings the same way
            if stop:
                text = text.split(stop)[0]
        if self.log_prompts and self.record_dir is not None:
            with open(self.record_dir / PROMPTS_FILE, "a") as f:
                f.write(json.dumps({"dataset": dataset, "prompt": prompt, "prediction": text}) + "\n")
        return text
