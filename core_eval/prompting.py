"""Probe samples -> model inputs, through the processor's own chat template.

A sample is anything with ``images`` (list of PIL images), ``question`` and ``answer``, and
optionally ``videos`` (:class:`core_eval.probes.Video`). Image and video placeholders come from the
chat template (``{"type": "image"}`` then ``{"type": "video"}`` entries: images first), so every
family gets its own visual tokens exactly as in real use.

Videos reach the processor as the sample's frames, already sampled (the probe readers sample them
and record the kept source frames): ``do_sample_frames=False``, so no processor resamples, and one
``VideoMetadata`` per video with ``fps = Video.fps`` and ``frames_indices = start * fps + k``, so
processors that write timestamps (Qwen3-VL's ``<t seconds>``, GLM's) or derive a frame rate
(Qwen2.5-VL's ``second_per_grid_ts``) see frame ``k`` at ``start + k / fps`` seconds.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence


def is_text_only(processor) -> bool:
    """A bare tokenizer (text model) rather than a multimodal processor."""
    return not hasattr(processor, "image_processor")


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def _videos(sample) -> list:
    return list(getattr(sample, "videos", None) or [])


def messages_for(sample, *, with_images: bool = True) -> list[dict]:
    """One user turn: the sample's images, then its videos, then its question."""
    if not with_images:
        return [{"role": "user", "content": sample.question}]
    content = ([{"type": "image"} for _ in sample.images] + [{"type": "video"} for _ in _videos(sample)]
               + [{"type": "text", "text": sample.question}])
    return [{"role": "user", "content": content}]


def video_metadata(video):
    """The ``transformers.video_utils.VideoMetadata`` of a :class:`~core_eval.probes.Video` as the processor
    must see it: every frame kept (no resampling), frame ``k`` at ``start + k / fps`` seconds."""
    import numpy as np
    from transformers.video_utils import VideoMetadata

    n = len(video.frames)
    w, h = video.size
    return VideoMetadata(total_num_frames=n, fps=float(video.fps), width=w, height=h, duration=n / video.fps,
                         frames_indices=np.asarray(video.start * video.fps + np.arange(n), dtype=np.float64))


def video_kwargs(processor, samples: Sequence) -> dict:
    """Processor kwargs for the samples' videos (none when no sample has one): ``videos`` (each a list of
    frames, samples in order), ``video_metadata`` and ``do_sample_frames=False``."""
    videos = [v for s in samples for v in _videos(s)]
    if not videos:
        return {}
    if getattr(processor, "video_processor", None) is None:
        from core_eval.adapters import bound_family
        from core_eval.adapters.regions import families_with_video_rule

        fam = bound_family(processor)
        with_video = families_with_video_rule()
        raise ValueError(
            f"sample {getattr(samples[0], 'id', 0)!r} has a video, but this {type(processor).__name__}"
            f"{f' (family {fam.name})' if fam else ''} has no video processor: score video probes on a family "
            f"whose processor takes video ({', '.join(with_video)})"
        )
    return {"videos": [list(v.frames) for v in videos], "video_metadata": [video_metadata(v) for v in videos],
            "do_sample_frames": False}


def prompt_text(processor, sample) -> str:
    """The chat-formatted prompt, ending with the generation prompt."""
    text_only = is_text_only(processor)
    messages = messages_for(sample, with_images=not text_only)
    templ = processor if not text_only else _tokenizer(processor)
    if getattr(templ, "chat_template", None) or getattr(_tokenizer(processor), "chat_template", None):
        return templ.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return sample.question


def _family_teacher_forcing(processor):
    """The family's own teacher-forcing contract (``Family.teacher_forcing``), if it has one."""
    from core_eval.adapters import bound_family

    family = bound_family(processor)
    return None if family is None else family.teacher_forcing


def encode(processor, samples: Sequence, *, with_answer: bool = False, padding_side: str = "left"):
    """Processor outputs (``BatchFeature``) for a batch of samples, padded on ``padding_side``.

    ``with_answer`` appends each gold answer after the prompt (teacher forcing; a family with its
    own contract, such as PaliGemma's ``suffix``, uses it). Like
    ``ProcessorMixin.apply_chat_template``, no second BOS is added when the template wrote one.
    """
    forced = _family_teacher_forcing(processor) if with_answer else None
    if forced is not None:
        return forced(processor, samples, padding_side=padding_side)[0]
    texts = [prompt_text(processor, s) + (s.answer if with_answer else "") for s in samples]
    tok = _tokenizer(processor)
    kwargs = dict(padding=True, padding_side=padding_side, return_tensors="pt")
    if tok.bos_token is not None and texts[0].startswith(tok.bos_token):
        kwargs["add_special_tokens"] = False
    if is_text_only(processor):
        return tok(texts, **kwargs)
    images = [list(s.images) for s in samples]
    if any(images):
        kwargs["images"] = images
    kwargs.update(video_kwargs(processor, samples))
    try:
        out = processor(text=texts, **kwargs)
    except ValueError as e:
        counts = sorted({len(v) for v in kwargs.get("videos", [])})
        if len(counts) < 2 or "stack" not in str(e):
            raise
        raise ValueError(
            f"this {type(processor).__name__} stacks the videos of a batch, and the batch's videos have {counts} "
            "frames: score with --batch-size 1, or give every video the same number of frames"
        ) from e
    out.pop("labels", None)  # PaliGemma's processor adds training labels: not a model input here
    return out


def iter_batches(processor, samples: Iterable, *, batch_size: int = 8, **kwargs) -> Iterator[dict]:
    """Yield :func:`encode` outputs for consecutive chunks of ``samples``."""
    chunk: list = []
    for s in samples:
        chunk.append(s)
        if len(chunk) == batch_size:
            yield dict(encode(processor, chunk, **kwargs))
            chunk = []
    if chunk:
        yield dict(encode(processor, chunk, **kwargs))


def encode_teacher_forced(processor, samples: Sequence, *, padding_side: str = "left"):
    """Prompt + gold answer, with the answer's token positions.

    Returns ``(inputs, answer_mask, prompt_len)``: ``answer_mask`` is ``(B, T)`` bool, True on the
    answer tokens; ``prompt_len`` ``(B,)`` is the index of each row's first answer token. The
    query row that predicts answer token ``t`` is ``t - 1``. Raises if joint tokenization changed
    the prompt's tokens (the answer must start at a token boundary). A family whose processor
    takes the answer separately (``Family.teacher_forcing``) goes through its own contract.
    """
    import torch

    forced = _family_teacher_forcing(processor)
    if forced is not None:
        return forced(processor, samples, padding_side=padding_side)

    full = encode(processor, samples, with_answer=True, padding_side=padding_side)
    prompt = encode(processor, samples, with_answer=False, padding_side=padding_side)
    ids, mask = full["input_ids"], full["attention_mask"].bool()
    p_ids, p_mask = prompt["input_ids"], prompt["attention_mask"].bool()
    B, T = ids.shape
    answer_mask = torch.zeros(B, T, dtype=torch.bool)
    starts = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        real = mask[b].nonzero().flatten()
        p_real = p_ids[b][p_mask[b]]
        n_prompt = p_real.numel()
        if not torch.equal(ids[b, real[:n_prompt]], p_real) or real.numel() <= n_prompt:
            raise ValueError(
                f"sample {getattr(samples[b], 'id', b)}: the gold answer {samples[b].answer!r} does not start at a "
                "token boundary after the prompt (or is empty), so answer rows cannot be located"
            )
        if padding_side == "left":
            start = T - (real.numel() - n_prompt)
        else:
            start = int(real[n_prompt])
        answer_mask[b, start : int(real[-1]) + 1] = True
        starts[b] = start
    return full, answer_mask, starts


def key_rows(processor, input_ids, starts, samples: Sequence):
    """``(B, R)`` positions of the tokens of each sample's question key
    (:func:`~core_eval.probes.families.question_key`): its last occurrence before the answer
    (``starts``, from :func:`encode_teacher_forced`), ``-1`` padded. The key is looked up as it
    tokenizes alone and with a leading space (BPE tokenizers merge the space into the word);
    raises when neither occurs, rather than scoring other rows."""
    import torch

    from core_eval.probes.families import question_key

    tok = getattr(processor, "tokenizer", processor)
    rows = []
    for b, s in enumerate(samples):
        key = question_key(s)
        ids = input_ids[b, : int(starts[b])].tolist()
        found = None
        for text in (key, " " + key):
            k = tok(text, add_special_tokens=False)["input_ids"]
            hits = [p for p in range(len(ids) - len(k), -1, -1) if ids[p : p + len(k)] == k]
            if k and hits and (found is None or hits[0] > found[0]):
                found = (hits[0], len(k))
        if found is None:
            raise ValueError(f"sample {getattr(s, 'id', b)}: the tokens of its key {key!r} do not occur in the "
                             "prompt as the key tokenizes alone or after a space, so its key rows cannot be located")
        rows.append(list(range(found[0], found[0] + found[1])))
    R = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (R - len(r)) for r in rows], dtype=torch.long)
