"""Causal check of a RAM ranking: what each head does to the gold answer when it is ablated.

Attention mass is correlational. This module measures, per LM head ``(layer, head)``, the drop in
the teacher-forced log-probability of the gold answer (and in greedy accuracy) when that head
*alone* is ablated, in two ways:

* **exact** (:func:`exact_effects`): one forward pass per head per batch, with the product's own
  ablation (:func:`core_eval.intervene.apply_intervention`, ``zero`` or ``mean``) installed for
  that head only, against one clean pass. Cost: ``(n_heads + 1)`` passes per batch, so run it on
  small models or on a subset (:func:`causal_subset`: the top-N by RAM plus a seeded random
  sample of the rest).
* **attribution patching** (:func:`attribution_effects`): all heads from one forward + backward
  pass per batch. With ``z`` a head's slice of the ``o_proj`` input ``(B, T, H, D)`` and ``g`` the
  gradient of the summed gold log-probability with respect to it, the first-order estimate of the
  log-prob *drop* is ``-(g . (z_ablated - z))`` summed over positions and ``D``, where
  ``z_ablated`` is ``0`` (``zero``) or the head's mean output (``mean``). The gradient is captured
  by an ``o_proj`` forward pre-hook that adds a zero leaf tensor to the input (the model is not
  edited; parameters are frozen for the pass and restored afterwards).

Sign convention everywhere: **positive = ablating the head hurts the gold answer**
(``logprob_drop = logprob(clean) - logprob(ablated)``, ``acc_drop = acc(clean) - acc(ablated)``),
averaged over samples.

:func:`compare` reports the Spearman rank correlation between RAM and an effect and the heads where
the two rankings disagree most; :func:`add_causal_to_spec` writes the effects into a head spec.

Spec representation of a partial (subset) measurement: head-spec scores must be finite, so heads
that were not measured are stored as ``0.0`` and a 0/1 array ``causal_measured`` (1 = measured)
says which entries are real. ``spec.extra["causal"]["measured_mask"]`` names the mask and the
arrays it applies to; :func:`causal_scores` reads an array back with ``NaN`` at unmeasured heads.
Attribution arrays are always dense (every head is estimated) and need no mask.

Array names: ``causal_logprob_drop``, ``causal_logprob_drop_std`` (std over samples),
``causal_acc_drop``, ``causal_measured`` (exact); ``attribution_logprob_drop`` (attribution).
The ablation mode, probes, probe hash and sample count go to ``spec.extra["causal"]["exact"]`` and
``["attribution"]``.

Modules: :mod:`.answers` (gold-answer scoring), :mod:`.effects` (exact and attribution effects,
head subsets), :mod:`.agreement` (rank agreement with RAM), :mod:`.spec_arrays` (how effects are
stored in a spec), :mod:`.run` (:func:`run_causal`, the whole check as a Python function) and
:mod:`.cli` (``core-eval causal``, a thin argparse layer over it).
"""

from __future__ import annotations

from .agreement import Comparison, _rankdata, compare, spearman  # noqa: F401 (_rankdata: compat)
from .answers import answer_scores, gold_logprob, greedy_correct
from .cli import add_causal_parser, causal_main
from .effects import (MODES, ExactEffects, _ram_name, attribution_effects, causal_subset, exact_effects,  # noqa: F401
                      parse_subset)
from .run import METHODS, CausalRun, run_causal
from .spec_arrays import (ATTRIBUTION_LOGPROB, EXACT_ACC, EXACT_LOGPROB, EXACT_LOGPROB_STD, MEASURED,
                          UNMEASURED_FILL, add_causal_to_spec, causal_scores)

__all__ = [
    "ATTRIBUTION_LOGPROB", "EXACT_ACC", "EXACT_LOGPROB", "EXACT_LOGPROB_STD", "MEASURED", "METHODS", "MODES",
    "UNMEASURED_FILL", "CausalRun", "Comparison", "ExactEffects", "add_causal_parser", "add_causal_to_spec",
    "answer_scores", "attribution_effects", "causal_main", "causal_scores", "causal_subset", "compare",
    "exact_effects", "gold_logprob", "greedy_correct", "parse_subset", "run_causal", "spearman",
]
