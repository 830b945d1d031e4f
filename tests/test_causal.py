"""Causal check of the RAM ranking (core_eval.scoring.causal).

Oracles written here, independent of the product code:
- gold log-prob: full logits (no ``logits_to_keep``), log_softmax and a plain loop over answer tokens;
- single-head ablation: weight surgery on ``o_proj`` (zeroed input columns; for ``mean`` the
  columns' contribution of the mean moved into the bias);
- attribution patching: finite differences of a scaled ablation (``clean * (1 - eps)``, or a step
  ``eps`` towards the mean) in float64 -- the gradient oracle.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings

import numpy as np
import pytest
import torch

import core_eval
from core_eval.adapters import adapter_for
from core_eval.probes import generate, probe_set_hash
from core_eval.prompting import encode, encode_teacher_forced
from core_eval.scoring import causal
from core_eval.scoring.causal import (
    ATTRIBUTION_LOGPROB, EXACT_ACC, EXACT_LOGPROB, MEASURED, add_causal_to_spec, attribution_effects,
    causal_scores, causal_subset, compare, exact_effects, gold_logprob, greedy_correct, spearman,
)
from core_eval.spec import load_head_spec, spec_from_scores

PROBE_KNOBS = dict(grid=3, image_size=96)


def _samples(n=4, seed=0):
    return generate("grid_needle", n, seed=seed, **PROBE_KNOBS)


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = core_eval.load(str(path), heads="none")
    return loaded.model, loaded.processor


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run several times faster on one thread (no OpenMP spin/contention); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def llava_strong(tiny_dir):
    """Tiny llava with init std 0.1: single heads move the gold log-prob by up to a few nats."""
    return _load(tiny_dir("llava", init_std=0.1))


# ---------------------------------------------------------------------------- oracles


def _oracle_scores(model, inputs, answer_mask):
    """Per-row gold log-prob and greedy correctness from the full logits, one token at a time."""
    with torch.no_grad():
        logits = model(**inputs).logits.double()
    ids = inputs["input_ids"]
    lp, ok = [], []
    for b in range(ids.shape[0]):
        total, correct = 0.0, True
        for t in answer_mask[b].nonzero().flatten().tolist():
            row = torch.log_softmax(logits[b, t - 1], -1)
            total += float(row[ids[b, t]])
            correct &= int(logits[b, t - 1].argmax()) == int(ids[b, t])
        lp.append(total)
        ok.append(correct)
    return np.array(lp), np.array(ok)


class _Surgery:
    """Ablate one head by editing o_proj's weights (zero its input columns; for mean, fold the
    mean output into the bias). Restores the weights on exit."""

    def __init__(self, model, layer, head, mean=None):
        self.ad = adapter_for(model)
        self.lin = self.ad.o_proj(layer)
        D = self.ad.shape.head_dim
        self.cols = slice(head * D, (head + 1) * D)
        self.mean = mean

    def __enter__(self):
        self.w = self.lin.weight.data.clone()
        self.b = self.lin.bias
        W = self.lin.weight.data
        if self.mean is not None:
            extra = W[:, self.cols] @ self.mean.to(W.dtype)
            old = self.b.data if self.b is not None else torch.zeros_like(extra)
            self.lin.bias = torch.nn.Parameter(old + extra, requires_grad=False)
        W[:, self.cols] = 0
        return self

    def __exit__(self, *exc):
        self.lin.weight.data.copy_(self.w)
        self.lin.bias = self.b


# ---------------------------------------------------------------------------- gold answer scores


def test_gold_logprob_matches_full_logits_oracle(llava_strong):
    model, proc = llava_strong
    inputs, amask, _ = encode_teacher_forced(proc, _samples(4))
    want_lp, want_ok = _oracle_scores(model, inputs, amask)
    got = gold_logprob(model, inputs, amask)
    assert got.shape == (4,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want_lp, rtol=1e-5, atol=1e-4)
    assert (want_lp < -1).all()  # a random model: the answer is far from certain
    np.testing.assert_array_equal(greedy_correct(model, inputs, amask).numpy(), want_ok)


def test_greedy_correct_is_greedy_decoding(llava_strong):
    """The model's own greedy continuation, teacher forced, is 'correct'; one changed token is not.

    A left-padded batch whose rows have answers of different lengths (3 and 2 tokens), so rows
    that are not answer rows must be ignored."""
    model, proc = llava_strong
    prompt = encode(proc, _samples(2))
    with torch.no_grad():
        seq = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    T0 = prompt["input_ids"].shape[1]
    assert seq.shape[1] == T0 + 3
    eos = model.generation_config.eos_token_id
    assert not torch.isin(seq[:, T0:], torch.tensor(eos if isinstance(eos, list) else [eos])).any()
    inputs = dict(prompt)
    inputs["input_ids"] = seq
    inputs["attention_mask"] = torch.cat([prompt["attention_mask"], torch.ones(2, 3, dtype=torch.long)], 1)
    amask = torch.zeros_like(seq, dtype=torch.bool)
    amask[0, T0:] = True
    amask[1, T0 + 1:] = True  # row 1: the first generated token counts as prompt
    assert greedy_correct(model, inputs, amask).tolist() == [True, True]
    vocab = model.config.text_config.vocab_size
    for (row, pos), want in (((1, -1), [True, False]), ((0, T0), [False, True])):
        bad = seq.clone()
        bad[row, pos] = (bad[row, pos] + 1) % vocab
        inputs["input_ids"] = bad
        assert greedy_correct(model, inputs, amask).tolist() == want, (row, pos)
    np.testing.assert_allclose(gold_logprob(model, dict(inputs, input_ids=seq), amask).numpy(),
                               _oracle_scores(model, dict(inputs, input_ids=seq), amask)[0], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------- exact effects


def test_exact_effect_equals_weight_surgery(llava_strong):
    model, proc = llava_strong
    samples = _samples(4)
    heads = [(0, 1), (1, 2), (2, 3)]
    ex = exact_effects(model, proc, samples, heads, "zero", batch_size=3, progress=False)
    inputs, amask, _ = encode_teacher_forced(proc, samples)
    base_lp, base_ok = _oracle_scores(model, inputs, amask)
    np.testing.assert_allclose(ex.baseline_logprob, base_lp, rtol=1e-5, atol=1e-4)
    for j, (l, h) in enumerate(heads):
        with _Surgery(model, l, h):
            lp, ok = _oracle_scores(model, inputs, amask)
        np.testing.assert_allclose(ex.ablated_logprob[:, j], lp, rtol=1e-5, atol=1e-4)
        assert ex.logprob_drop[l, h] == pytest.approx((base_lp - lp).mean(), abs=1e-4)
        assert ex.acc_drop[l, h] == pytest.approx(base_ok.mean() - ok.mean())
    # the surgery is undone and really changed something
    np.testing.assert_allclose(_oracle_scores(model, inputs, amask)[0], base_lp, rtol=0, atol=0)
    assert np.abs(ex.logprob_drop[ex.measured]).max() > 0.05
    assert ex.measured.sum() == 3 and np.isnan(ex.logprob_drop[0, 0]) and np.isnan(ex.acc_drop[0, 0])
    frame = ex.to_frame()
    assert list(zip(frame.layer, frame["head"])) == heads


def test_exact_mean_effect_equals_weight_surgery(llava_strong):
    from core_eval.means import compute_head_means
    from core_eval.prompting import iter_batches

    model, proc = llava_strong
    samples = _samples(3)
    means = compute_head_means(model, iter_batches(proc, _samples(4, seed=5), batch_size=4), progress=False)
    heads = [(1, 0), (2, 2)]
    ex = exact_effects(model, proc, samples, heads, "mean", means=means, progress=False)
    inputs, amask, _ = encode_teacher_forced(proc, samples)
    base_lp, _ = _oracle_scores(model, inputs, amask)
    for j, (l, h) in enumerate(heads):
        with _Surgery(model, l, h, mean=means[l, h]):
            lp, _ = _oracle_scores(model, inputs, amask)
        np.testing.assert_allclose(ex.ablated_logprob[:, j], lp, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="needs head means"):
        exact_effects(model, proc, samples, heads, "mean", progress=False)


# ---------------------------------------------------------------------------- attribution patching


def _scaled_drop(model, inputs, amask, base, layer, head, eps, target=None):
    """Mean exact drop when head (layer, head) is moved a fraction ``eps`` towards ``target``
    (0 when None): ablated = clean + eps * (target - clean)."""
    ad = adapter_for(model)
    s = ad.shape

    def hook(module, args):
        x = args[0].view(*args[0].shape[:-1], s.num_heads, s.head_dim).clone()
        tgt = 0.0 if target is None else target.to(x.dtype)
        x[:, :, head] = x[:, :, head] + eps * (tgt - x[:, :, head])
        return (x.reshape(args[0].shape),)

    handle = ad.o_proj(layer).register_forward_pre_hook(hook)
    try:
        return float((base - gold_logprob(model, inputs, amask).numpy()).mean())
    finally:
        handle.remove()


@pytest.mark.parametrize("family,mode", [("llava", "zero"), ("qwen2_vl", "zero"), ("gemma3", "mean")])
def test_attribution_is_the_derivative_of_the_exact_drop(tiny_dir, family, mode):
    """exact drop(eps) / eps -> attribution as eps -> 0 (float64 model), for every head."""
    from core_eval.means import compute_head_means
    from core_eval.prompting import iter_batches

    model, proc = _load(tiny_dir(family, init_std=0.1))
    model = model.double()
    samples = _samples(2)
    means = None
    if mode == "mean":
        means = compute_head_means(model, iter_batches(proc, _samples(4, seed=5), batch_size=4), progress=False)
    attr = attribution_effects(model, proc, samples, mode, means, progress=False)
    s = adapter_for(model).shape
    assert attr.shape == (s.num_layers, s.num_heads) and np.isfinite(attr).all()
    scale = np.abs(attr).max()
    assert scale > 0.1  # heads matter in this model
    inputs, amask, _ = encode_teacher_forced(proc, samples)
    base = gold_logprob(model, inputs, amask).numpy()
    eps = 1e-3
    for l in range(s.num_layers):
        for h in range(s.num_heads):
            tgt = None if means is None else means[l, h].double()
            up = _scaled_drop(model, inputs, amask, base, l, h, eps, tgt)
            down = _scaled_drop(model, inputs, amask, base, l, h, -eps, tgt)
            central = (up - down) / (2 * eps)
            assert abs(central - attr[l, h]) <= 1e-3 * scale, (l, h, central, attr[l, h])
            assert abs(up / eps - attr[l, h]) <= 2e-3 * scale, (l, h, up / eps, attr[l, h])
    # convergence: the one-sided quotient approaches the attribution as eps shrinks
    l, h = np.unravel_index(np.abs(attr).argmax(), attr.shape)
    tgt = None if means is None else means[l, h].double()
    errs = [abs(_scaled_drop(model, inputs, amask, base, l, h, e, tgt) / e - attr[l, h]) for e in (0.3, 1e-3)]
    assert errs[1] < errs[0] / 5, errs


ATTRIBUTION_FLOORS = [
    # (family, init_std, seed, floor); measured Spearman (attribution vs exact, 8 samples) in the comment
    ("llava", 0.1, 0, 0.6),     # 0.783
    ("qwen2_vl", 0.1, 0, 0.6),  # 0.832
    ("gemma3", 0.1, 0, 0.6),    # 0.972
    ("llava", 0.02, 0, 0.85),   # 0.972 (default init: effects ~0.15 nats, near-linear regime)
]


@pytest.mark.parametrize("family,init_std,seed,floor", ATTRIBUTION_FLOORS)
def test_attribution_agrees_with_exact_ablation(tiny_dir, family, init_std, seed, floor):
    model, proc = _load(tiny_dir(family, seed=seed, init_std=init_std))
    samples = generate("grid_needle", 8, seed=0, **PROBE_KNOBS)
    ex = exact_effects(model, proc, samples, batch_size=8, progress=False)
    attr = attribution_effects(model, proc, samples, batch_size=8, progress=False)
    rho = spearman(ex.logprob_drop, attr)
    print(f"{family} init_std={init_std} seed={seed}: Spearman(attribution, exact) = {rho:.3f}")
    assert np.abs(ex.logprob_drop).max() > 0.1  # effects are not all ~0
    assert rho >= floor
    # batching does not change the attribution
    np.testing.assert_allclose(attribution_effects(model, proc, samples, batch_size=3, progress=False), attr,
                               rtol=1e-4, atol=1e-5)


def test_attribution_leaves_model_untouched(llava_strong):
    model, proc = llava_strong
    flags = [p.requires_grad for p in model.parameters()]
    n_hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    inputs, amask, _ = encode_teacher_forced(proc, _samples(2))
    before = gold_logprob(model, inputs, amask)
    attribution_effects(model, proc, _samples(2), progress=False)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == n_hooks
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(gold_logprob(model, inputs, amask), before)


# ---------------------------------------------------------------------------- statistics


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, size=(3, 7)).astype(float)  # many ties
        b = a + rng.normal(size=a.shape)
        assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
        c = rng.normal(size=40)
        d = rng.normal(size=40)
        assert spearman(c, d) == pytest.approx(spearmanr(c, d).statistic, abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # NaN entries are left out; a constant side has no correlation
    want = spearmanr([1, 2, 4, 5], [1, 2, 3, 5]).statistic
    assert spearman([1, 2, np.nan, 4, 5], [1, 2, 100, 3, 5]) == pytest.approx(want)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_compare_reports_disagreeing_heads_both_ways():
    ram = np.arange(12, dtype=float).reshape(3, 4)  # head (2, 3) highest, (0, 0) lowest
    effect = ram.copy()
    effect[2, 3], effect[0, 0] = -5.0, 50.0  # top RAM head does nothing, bottom RAM head matters most
    rep = compare(ram, effect, top=1)
    assert rep.n == 12
    assert rep.rho == pytest.approx(spearman(ram, effect))
    t = rep.table
    assert len(t) == 2
    hi, lo = t.iloc[0], t.iloc[1]
    assert (hi.kind, hi.layer, hi["head"]) == ("high ram, low effect", 2, 3)
    assert (hi.ram_rank, hi.effect_rank, hi.rank_diff) == (1, 12, 11)
    assert (lo.kind, lo.layer, lo["head"]) == ("low ram, high effect", 0, 0)
    assert lo.rank_diff == -11
    # unmeasured heads (NaN) are ignored
    effect2 = effect.copy()
    effect2[2, 3] = np.nan
    rep2 = compare(ram, effect2, top=3)
    assert rep2.n == 11 and (2, 3) not in set(zip(rep2.table.layer, rep2.table["head"]))
    assert "Spearman(ram, effect)" in rep.format()
    # perfect agreement: nothing to report
    same = compare(ram, ram * 2)
    assert same.rho == pytest.approx(1.0) and len(same.table) == 0


# ---------------------------------------------------------------------------- spec


def _spec(L=3, H=4, seed=0, **kw):
    rng = np.random.default_rng(seed)
    ram = rng.random((L, H))
    return spec_from_scores({"ram": ram, "lift": ram * 2}, {"name": "tiny"}, {"name": "ram-v1"},
                            shape=_shape(L, H), **kw)


def _shape(L, H):
    from core_eval.adapters import ModelShape

    return ModelShape(L, H, H, 16)


def test_add_causal_to_spec_round_trip(tmp_path):
    spec = _spec()
    rng = np.random.default_rng(1)
    exact = rng.normal(size=(3, 4))
    exact[0, :2] = np.nan
    acc = np.where(np.isnan(exact), np.nan, 0.25)
    attr = rng.normal(size=(3, 4))
    meta = {"exact": {"mode": "zero", "n_samples": 8, "probe_hash": "abc"}}
    new = add_causal_to_spec(spec, {EXACT_LOGPROB: exact, EXACT_ACC: acc, ATTRIBUTION_LOGPROB: attr}, meta)
    path = new.write(tmp_path / "spec.json")
    assert "NaN" not in path.read_text()
    back = load_head_spec(path)
    assert back == new
    np.testing.assert_array_equal(back.score(MEASURED), ~np.isnan(exact))
    np.testing.assert_array_equal(back.score(EXACT_LOGPROB), np.nan_to_num(exact, nan=0.0))
    np.testing.assert_array_equal(causal_scores(back, EXACT_LOGPROB), exact)  # NaN restored
    np.testing.assert_array_equal(causal_scores(back, EXACT_ACC), acc)
    np.testing.assert_array_equal(causal_scores(back, ATTRIBUTION_LOGPROB), attr)  # dense: no mask
    np.testing.assert_array_equal(back.score("ram"), spec.score("ram"))
    assert back.heads == spec.heads
    c = back.extra["causal"]
    assert c["exact"] == meta["exact"]
    assert c["measured_mask"]["arrays"] == sorted([EXACT_LOGPROB, EXACT_ACC])
    assert set(c["arrays"]) == {EXACT_LOGPROB, EXACT_ACC, ATTRIBUTION_LOGPROB}
    # a second call merges the metadata and keeps the earlier arrays
    newer = add_causal_to_spec(back, {ATTRIBUTION_LOGPROB: attr * 2}, {"attribution": {"mode": "mean"}})
    assert newer.extra["causal"]["exact"] == meta["exact"]
    assert newer.extra["causal"]["attribution"] == {"mode": "mean"}
    np.testing.assert_array_equal(newer.score(ATTRIBUTION_LOGPROB), attr * 2)
    np.testing.assert_array_equal(newer.score(EXACT_LOGPROB), back.score(EXACT_LOGPROB))


def test_add_causal_to_spec_rejects_bad_input():
    spec = _spec()
    a = np.zeros((3, 4))
    a[0, 0] = np.nan
    b = np.zeros((3, 4))
    b[1, 1] = np.nan
    with pytest.raises(ValueError, match="different heads"):
        add_causal_to_spec(spec, {"x": a, "y": b})
    with pytest.raises(ValueError, match="shape"):
        add_causal_to_spec(spec, {"x": np.zeros((4, 3))})
    measured = np.ones((3, 4), bool)
    with pytest.raises(ValueError, match="NaN at heads marked measured"):
        add_causal_to_spec(spec, {"x": a}, measured=measured)


def test_selection_on_a_replaced_array_is_rederived():
    spec = _spec().with_selection("top", k=2, score="ram")
    spec = add_causal_to_spec(spec, {ATTRIBUTION_LOGPROB: np.arange(12.0).reshape(3, 4)})
    spec = spec.with_selection("top", k=2, score=ATTRIBUTION_LOGPROB, tiebreak=None)
    assert spec.heads == [(2, 2), (2, 3)]
    new = add_causal_to_spec(spec, {ATTRIBUTION_LOGPROB: -np.arange(12.0).reshape(3, 4)})
    assert new.heads == [(0, 0), (0, 1)]


def test_causal_subset():
    spec = _spec(L=4, H=8)
    ram = spec.score("ram")
    heads = causal_subset(spec, top=5, random=6, seed=3)
    assert len(heads) == 11 and len(set(heads)) == 11 and heads == sorted(heads)
    top5 = sorted(zip(*np.unravel_index(np.argsort(-ram, axis=None)[:5], ram.shape)))
    assert set(top5) <= set(heads)
    assert causal_subset(spec, top=5, random=6, seed=3) == heads
    assert causal_subset(spec, top=5, random=6, seed=4) != heads
    assert len(causal_subset(spec, top=30, random=30)) == 32  # clipped to all heads
    assert causal.parse_subset("top50+random50", 1000) == (50, 50)
    assert causal.parse_subset("top7", 1000) == (7, 0)
    assert causal.parse_subset("all", 1000) is None
    assert causal.parse_subset("auto", 12) is None and causal.parse_subset("auto", 1024) == (50, 50)
    with pytest.raises(ValueError, match="--subset"):
        causal.parse_subset("best50", 100)


# ---------------------------------------------------------------------------- CLI


def _cli(argv):
    p = argparse.ArgumentParser(prog="core-eval")
    sub = p.add_subparsers(dest="cmd", required=True)
    causal.add_causal_parser(sub)
    args = p.parse_args(argv)
    return args.fn(args)


def test_cli_end_to_end(tiny_dir, tmp_path, capsys):
    from core_eval.adapters import shape_from_config
    from core_eval.loading import load_config

    model_dir = tiny_dir("llava", init_std=0.1)
    shape = shape_from_config(load_config(model_dir))
    rng = np.random.default_rng(0)
    ram = rng.random((shape.num_layers, shape.num_heads))
    spec = spec_from_scores({"ram": ram}, {"name": str(model_dir)}, {"name": "ram-v1"}, shape=shape, k=2)
    spec_path = spec.write(tmp_path / "spec.json")
    out = tmp_path / "causal.json"
    knobs = json.dumps(PROBE_KNOBS)
    rc = _cli(["causal", "--model", str(model_dir), "--spec", str(spec_path), "--n", "4", "--knobs", knobs,
               "--subset", "top3+random2", "--method", "both", "--batch-size", "4", "--top", "3",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Spearman(ram, logprob_drop) =" in text and "Spearman(ram, attribution) =" in text
    assert "attribution vs exact log-prob drop: Spearman" in text
    assert "high ram, low logprob_drop" in text or "low ram, high logprob_drop" in text
    new = load_head_spec(out)
    assert spec_path.read_text() == spec.to_json()  # input untouched (--out given)
    assert new.heads == spec.heads
    assert int(new.score(MEASURED).sum()) == 5
    measured = set(zip(*np.nonzero(new.score(MEASURED))))
    assert measured == set(causal_subset(spec, 3, 2, seed=0))
    samples = generate("grid_needle", 4, seed=0, **PROBE_KNOBS)
    meta = new.extra["causal"]
    assert meta["exact"]["probe_hash"] == probe_set_hash(samples)
    assert meta["exact"]["mode"] == "zero" and meta["exact"]["n_heads"] == 5
    assert meta["attribution"]["n_samples"] == 4
    # the written values are what the API computes
    model, proc = _load(model_dir)
    attr = attribution_effects(model, proc, samples, batch_size=4, progress=False)
    np.testing.assert_allclose(new.score(ATTRIBUTION_LOGPROB), attr, rtol=1e-5, atol=1e-6)
    l, h = sorted(measured)[0]
    ex = exact_effects(model, proc, samples, [(l, h)], progress=False)
    assert new.score(EXACT_LOGPROB)[l, h] == pytest.approx(ex.logprob_drop[l, h], abs=1e-5)
    assert meta["exact"]["spearman_ram_logprob_drop"] == pytest.approx(
        spearman(ram, causal_scores(new, EXACT_LOGPROB)), abs=1e-9)

    # mean mode with a means file, attribution only, overwriting the spec in place (--in-place: never implicit)
    from core_eval.means import compute_head_means, save_head_means
    from core_eval.prompting import iter_batches

    means = compute_head_means(model, iter_batches(proc, samples, batch_size=4), progress=False)
    mpath = save_head_means(tmp_path / "m.safetensors", means)
    rc = _cli(["causal", "--model", str(model_dir), "--spec", str(out), "--n", "4", "--knobs", knobs,
               "--mode", "mean", "--means", str(mpath), "--method", "attribution", "--no-progress", "--in-place"])
    assert rc == 0
    again = load_head_spec(out)
    assert again.extra["causal"]["attribution"]["mode"] == "mean"
    assert again.extra["causal"]["exact"] == meta["exact"]  # the earlier exact record is kept
    want = attribution_effects(model, proc, samples, "mean", means, progress=False)
    np.testing.assert_allclose(again.score(ATTRIBUTION_LOGPROB), want, rtol=1e-5, atol=1e-6)


def test_cli_rejects_a_spec_of_another_shape(tiny_dir, tmp_path):
    from core_eval.spec import HeadSpecError

    spec = _spec(L=5, H=4)
    path = spec.write(tmp_path / "s.json")
    with pytest.raises(HeadSpecError, match="does not match"):
        _cli(["causal", "--model", str(tiny_dir("llava", init_std=0.1)), "--spec", str(path), "--n", "2",
              "--no-progress", "--out", str(tmp_path / "o.json")])
