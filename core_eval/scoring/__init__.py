"""RAM scoring (ram-v1), CoRe head selection and the causal check of a ranking.

* :mod:`.capture`: the attention patch that measures attention mass on the target region for the
  needed query rows only, next to the normal SDPA call (outputs unchanged).
* :mod:`.ram`: the scoring loop (batches, checkpoints, resume, multi-process) -> head spec.
* :mod:`.causal`: per-head ablation effects on the gold answer (exact and attribution patching).
"""
