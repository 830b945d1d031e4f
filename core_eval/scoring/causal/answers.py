"""Gold-answer scoring: the teacher-forced log-probability of the gold answer and greedy correctness,
from one forward pass that keeps only the answer rows' logits."""

from __future__ import annotations

from typing import Sequence

import torch

def _to_device(inputs, model) -> dict:
    """Move tensors to the model's device; floating tensors (pixel values) to its dtype."""
    dtype = getattr(model, "dtype", None)
    out = {}
    for k, v in dict(inputs).items():
        if isinstance(v, torch.Tensor):
            v = v.to(model.device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def _answer_logits(model, inputs: dict, answer_mask: torch.Tensor):
    """Forward pass keeping only the logits of the rows that predict answer tokens (and after).

    Returns ``(logits (B, K-1, V), targets (B, K-1), mask (B, K-1))``: row ``i`` predicts
    ``targets[:, i]``, which is an answer token where ``mask`` is True.
    """
    ids = inputs["input_ids"]
    T = ids.shape[1]
    has = answer_mask.any(1)
    if not bool(has.all()):
        raise ValueError("every row needs at least one answer token (answer_mask is empty for some row)")
    first = int(answer_mask.float().argmax(1).min())
    if first < 1:
        raise ValueError("an answer token at position 0 has no row predicting it")
    K = T - first + 1  # rows first-1 .. T-1
    try:
        logits = model(**inputs, logits_to_keep=K).logits
    except TypeError:  # a model class without logits_to_keep
        logits = model(**inputs).logits
    logits = logits[:, -K:]
    targets = ids[:, T - K + 1:]
    mask = answer_mask[:, T - K + 1:].to(targets.device)
    return logits[:, :-1], targets, mask


def _scores_from_logits(logits, targets, mask):
    """(sum of answer-token log-probs (B,), every answer row's argmax is the gold token (B,))."""
    work = torch.promote_types(logits.dtype, torch.float32)
    logp = torch.log_softmax(logits.to(work), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    total = (logp * mask.to(logp.dtype)).sum(1)
    hit = (logits.argmax(-1) == targets) | ~mask
    return total, hit.all(1)


def answer_scores(model, inputs, answer_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gold log-prob ``(B,)`` float64 and greedy correctness ``(B,)`` bool from one teacher-forced pass.

    ``inputs``/``answer_mask`` as from :func:`core_eval.prompting.encode_teacher_forced`.
    """
    with torch.no_grad():
        logits, targets, mask = _answer_logits(model, _to_device(inputs, model), answer_mask)
        total, correct = _scores_from_logits(logits, targets, mask)
    return total.double().cpu(), correct.cpu()


def gold_logprob(model, inputs, answer_mask: torch.Tensor) -> torch.Tensor:
    """Sum over the answer tokens of ``log p(gold token | prefix)`` (teacher forced), ``(B,)`` float64."""
    return answer_scores(model, inputs, answer_mask)[0]


def greedy_correct(model, inputs, answer_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the argmax at every answer row equals the gold token, i.e. greedy decoding from
    the prompt would produce the gold answer's tokens."""
    return answer_scores(model, inputs, answer_mask)[1]


def _encode_batches(processor, samples: Sequence, batch_size: int) -> list[tuple[dict, torch.Tensor]]:
    from core_eval.prompting import encode_teacher_forced

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not samples:
        raise ValueError("no samples given")
    out = []
    for i in range(0, len(samples), batch_size):
        inputs, amask, _ = encode_teacher_forced(processor, list(samples[i:i + batch_size]))
        out.append((dict(inputs), amask))
    return out
