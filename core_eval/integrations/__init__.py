"""Harness integrations (lm-eval, VLMEvalKit). Nothing in core mechanics imports these."""
