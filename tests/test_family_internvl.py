"""InternVL: the internvl3_5 tiny model really carries a Qwen3 LM (per-head q/k RMSNorm), so the matrix
(ablation, RAM capture, sparse attention with its load-time q/k/v/o head permutation) covers it."""

from __future__ import annotations

from core_eval.adapters import adapter_for
from core_eval.testing import load_tiny


def test_internvl3_5_has_a_qwen3_lm_with_q_and_k_norms(tiny_dir):
    model, _ = load_tiny(tiny_dir("internvl3_5"))
    ad = adapter_for(model)
    assert ad.family.name == "internvl" and model.config.model_type == "internvl"
    assert model.config.text_config.model_type == "qwen3"
    attn = ad.attention(0)
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (ad.shape.head_dim,)  # shared by all heads
    assert (ad.shape.num_heads, ad.shape.num_kv_heads) == (4, 2)
