"""``base=auto`` of lmms-eval's ``core`` model: any ``AutoModelForImageTextToText`` checkpoint.

lmms-eval 0.7.3's own generic model (``chat/huggingface.py``) picks its auto class with
``config.model_type in AutoModelForImageTextToText._model_mapping.keys()``: those keys are
config classes, not strings, so every image-text checkpoint falls through to ``AutoModel`` (no
LM head) and cannot generate. This class loads through core_eval (the family's processor and
``AutoModelForImageTextToText``) and builds prompts as core_eval's scoring does
(:mod:`core_eval.prompting`: the processor's own chat template, images, then videos, then the
text), one request at a time, greedy unless the task asks to sample.

Requests: ``generate_until`` (images as PIL, videos as file paths, ``max_num_frames`` frames
sampled uniformly), ``loglikelihood`` (the continuation's summed log-probability after the
chat-formatted context, and whether it is the greedy continuation) and
``generate_until_multi_round`` (refused: lmms-eval's own HF classes do not implement it either).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from lmms_eval.api.model import lmms
from tqdm import tqdm

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class _Request:
    """What :mod:`core_eval.prompting` reads of a sample."""

    question: str
    images: list = field(default_factory=list)
    videos: list = field(default_factory=list)
    answer: str = ""
    id: str = "request"


def read_video(path: str, max_frames: int):
    """``path`` as a :class:`core_eval.probes.Video` of at most ``max_frames`` uniformly sampled frames."""
    import numpy as np
    from PIL import Image
    from transformers.video_utils import load_video

    from core_eval.probes.readers.video import pick_video_backend
    from core_eval.probes.types import Video

    seen = {}

    def uniform(metadata, **kw):
        seen["m"] = metadata
        n = int(metadata.total_num_frames)
        return np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int)).tolist()

    frames, _ = load_video(path, backend=pick_video_backend(), sample_indices_fn=uniform)
    m = seen["m"]
    step = max(1.0, (int(m.total_num_frames) - 1) / max(1, len(frames) - 1)) if len(frames) > 1 else 1.0
    return Video([Image.fromarray(f).convert("RGB") for f in frames], fps=float(m.fps or 1.0) / step)


class AutoVLM(lmms):
    """A generic lmms-eval simple model over ``AutoModelForImageTextToText``."""

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str | None = None, revision: str | None = None,
                 attn_implementation: str = "sdpa", max_num_frames: int = 32, batch_size: int = 1,
                 max_batch_size: int | None = None, family=None):
        super().__init__()
        from core_eval.adapters.base import family_for_config
        from core_eval.loading import _from_pretrained, load_config

        if int(batch_size) != 1:
            raise ValueError("core base=auto runs one request at a time: use --batch_size 1")
        family = family_for_config(load_config(pretrained, revision=revision), family)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model, self.processor = _from_pretrained(
            pretrained, family=family, dtype=getattr(torch, dtype) if dtype else None, device=device,
            revision=revision, attn_implementation=attn_implementation, load_processor=True)
        self._device = self._model.device
        self.max_num_frames = int(max_num_frames)
        self._rank, self._world_size = 0, 1

    @property
    def model(self):
        return self._model

    def _request(self, context: str, visuals) -> _Request:
        req = _Request(question=context.replace("<image>", "").strip())
        for v in visuals or []:
            if isinstance(v, str) and v.lower().endswith(VIDEO_SUFFIXES):
                req.videos.append(read_video(v, self.max_num_frames))
            elif hasattr(v, "convert"):
                req.images.append(v.convert("RGB"))
            else:
                raise ValueError(f"core base=auto: cannot read visual {v!r} (PIL images and video files only)")
        return req

    def _visuals(self, doc_to_visual, doc_id, task, split):
        return doc_to_visual(self.task_dict[task][split][doc_id])

    def generate_until(self, requests) -> list[str]:
        from core_eval.prompting import encode

        out = []
        for inst in tqdm(requests, desc="Model Responding", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = inst.args
            inputs = encode(self.processor, [self._request(context, self._visuals(doc_to_visual, doc_id, task, split))])
            inputs = {k: v.to(self._device) if hasattr(v, "to") else v for k, v in inputs.items()}
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            sample = bool(kw.get("do_sample")) or float(kw.get("temperature") or 0) > 0
            tok = getattr(self.processor, "tokenizer", self.processor)
            with torch.no_grad():
                ids = self._model.generate(**inputs, max_new_tokens=int(kw.get("max_new_tokens", 128)), do_sample=sample,
                                           pad_token_id=tok.pad_token_id or tok.eos_token_id,
                                           **({"temperature": float(kw["temperature"])} if sample and kw.get("temperature")
                                              else {}))
            text = tok.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for term in until:
                if term:
                    text = text.split(term)[0]
            out.append(text)
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        from core_eval.prompting import encode

        out = []
        for inst in tqdm(requests, desc="Model Responding", disable=self.rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = inst.args
            req = self._request(context, self._visuals(doc_to_visual, doc_id, task, split))
            prompt = encode(self.processor, [req])
            req.answer = continuation
            full = encode(self.processor, [req], with_answer=True)
            n_prompt = prompt["input_ids"].shape[1]
            inputs = {k: v.to(self._device) if hasattr(v, "to") else v for k, v in full.items()}
            with torch.no_grad():
                logits = self._model(**inputs).logits[0].float()
            target = inputs["input_ids"][0, n_prompt:]
            logp = torch.log_softmax(logits[n_prompt - 1:-1], dim=-1)
            out.append((float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())))
        return out

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("core base=auto does not run multi-round generation (nor do lmms-eval's own HF "
                                  "classes); use a single-round task")
