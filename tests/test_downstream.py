"""Chapter 09's downstream evaluations: the pooled ablation identity and the probe against brute force and scikit-learn
on random inputs (hypothesis), the SCR score against a direct recomputation, GPU-like conditions (autocast, a default
device other than the data's), the data cache (corrupt files rebuilt, loading runs no code) and bad input."""
import json
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, strategies as st
from ortsae.sae import BatchTopKSAE
from ortsae.downstream import (segment_mean, pooled_codes, ablate, fit_probe, accuracy, node_effects, top_latents, scr_setup,
                               scr_scores, tpp_setup, tpp_scores, class_splits, sparse_probing, downstream_metrics,
                               load_downstream_data, _data_cache, biographies, SCR_PAIRS)


def world(n=300, d=16, tokens=4, seed=0):
    "Texts of `tokens` tokens: profession along e0, gender along e1 (stronger), noise."
    g = torch.Generator().manual_seed(seed)
    p, s = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    x = 0.6 * torch.randn(n, tokens, d, generator=g); x[..., 0] += (2 * p - 1)[:, None]; x[..., 1] += 1.5 * (2 * s - 1)[:, None]
    acts, off = x.reshape(-1, d).half(), torch.arange(0, n * tokens + 1, tokens)
    return dict(acts=acts, offsets=off, pooled=segment_mean(acts.float(), off), texts=[""] * n,
                labels=dict(profession=p, gender=s), classes=dict(profession=["nurse", "professor"], gender=["female", "male"]))


def sae_for(d=16, m=48, seed=0, threshold=0.2):
    sae = BatchTopKSAE(d, m, k=4, seed=seed).eval().requires_grad_(False); sae.threshold.fill_(threshold); return sae


@settings(max_examples=30, deadline=None)
@given(lens=st.lists(st.integers(0, 5), min_size=1, max_size=8), d=st.integers(1, 6), seed=st.integers(0, 999))
def test_segment_mean_matches_a_loop(lens, d, seed):
    x = torch.randn(sum(lens), d, generator=torch.Generator().manual_seed(seed))
    off = torch.tensor([0] + lens).cumsum(0)
    ref = torch.stack([x[a:b].mean(0) if b > a else torch.zeros(d) for a, b in zip(off[:-1], off[1:])])
    torch.testing.assert_close(segment_mean(x, off), ref)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 999), n_ablate=st.integers(0, 48))
def test_pooled_ablation_equals_token_by_token_ablation(seed, n_ablate):
    "x - mean_t(sum_S f_tj d_j) is what SAEBench computes: re-encode, zero S, decode, add the SAE's error, pool."
    w, sae = world(60, seed=seed), sae_for(seed=seed)
    S = torch.randperm(48, generator=torch.Generator().manual_seed(seed))[:n_ablate]
    f = sae.encode(w["acts"].float()); err = w["acts"].float() - sae.decode(f); f[:, S] = 0
    torch.testing.assert_close(ablate(w["pooled"], pooled_codes(sae, w), sae.W_dec, S),
                               segment_mean(sae.decode(f) + err, w["offsets"]), atol=1e-4, rtol=1e-4)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 999), C=st.sampled_from([0.01, 0.3, 3.0]))
def test_probe_matches_scikit_learn(seed, C):
    from sklearn.linear_model import LogisticRegression
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 7, generator=g) * torch.rand(7, generator=g) * 5 + torch.randn(7, generator=g)
    y = ((x[:, 0] + torch.randn(120, generator=g)) > x[:, 0].median()).long()
    w, b = fit_probe(x, y, C)                                   # raw features, as SAEBench fits its probes
    clf = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(x.double().numpy(), y.numpy())
    torch.testing.assert_close(w.double(), torch.from_numpy(clf.coef_[0]), atol=2e-4, rtol=2e-4)
    assert b == pytest.approx(float(clf.intercept_[0]), abs=2e-4)
    assert accuracy((w, b), x, y) == pytest.approx(clf.score(x.double().numpy(), y.numpy()), abs=1 / 120)


def test_scr_score_recomputed_by_hand():
    w, sae = world(), sae_for()
    su = scr_setup(w, ("profession", "professor", "nurse"), ("gender", "male", "female"), n_train=30, n_test=30)
    codes = pooled_codes(sae, w); got = scr_scores(codes, sae.W_dec, w, su, ns=(3,))[3]
    eff = node_effects(codes[su["train"]], su["y_train"], su["ablate_probe"][0], sae.W_dec)
    S = eff.argsort(descending=True)[:min(3, int((eff != 0).sum()))]
    xs = w["pooled"][su["test"]] - codes[su["test"]][:, S] @ sae.W_dec[S]
    wb, bb = su["probes"]["biased"]
    acc = ((xs @ wb + bb > 0).long() == su["y_test"]).float().mean().item()
    assert got == pytest.approx((acc - su["original"]) / (su["clean"] - su["original"]), abs=1e-6)


def test_autocast_and_another_default_device_change_nothing():
    "GPU conditions on CPU: reduced-precision autocast and a default device ('meta') other than the data's."
    w, sae = world(), sae_for()
    su = scr_setup(w, ("profession", "professor", "nurse"), ("gender", "male", "female"), n_train=30, n_test=30)
    tp = tpp_setup(w, "profession", ["professor", "nurse"], 40, 20)
    ref = (scr_scores(pooled_codes(sae, w), sae.W_dec, w, su, ns=(2, 5)), tpp_scores(pooled_codes(sae, w), sae.W_dec, w, tp, ns=(2,)))
    with torch.device("meta"):                              # setup too: splits and probes follow their data
        assert scr_setup(w, ("profession", "professor", "nurse"), ("gender", "male", "female"), n_train=30, n_test=30)["acc"] == su["acc"]
        assert tpp_setup(w, "profession", ["professor", "nurse"], 40, 20)["clean"] == tp["clean"]
        got = (scr_scores(pooled_codes(sae, w), sae.W_dec, w, su, ns=(2, 5)), tpp_scores(pooled_codes(sae, w), sae.W_dec, w, tp, ns=(2,)))
    assert got == ref
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = pooled_codes(sae, w)
        scr_scores(codes.float(), sae.W_dec, w, su, ns=(2,))        # runs; values may move by bf16 rounding
        assert fit_probe(w["pooled"], w["labels"]["gender"])[0].dtype == torch.float32


def test_bad_input_gets_clear_errors():
    w, sae = world(), sae_for()
    with pytest.raises(ValueError, match="width 16; the SAE reads 8"): pooled_codes(sae_for(d=8), w)
    with pytest.raises(ValueError, match="SCR needs"): scr_setup(w, ("profession", "professor", "nurse"), ("gender", "male", "female"), n_train=200)
    with pytest.raises(ValueError, match="both labels"): fit_probe(w["pooled"], torch.ones(len(w["pooled"]), dtype=torch.long))
    with pytest.raises(ValueError, match="Lower n_train"): class_splits(w, "gender", ["male"], 1000, 10)
    with pytest.raises(ValueError, match="Unknown evaluations"): downstream_metrics(sae, {}, {}, evals=("ravel",))


def test_data_cache_is_plain_tensors_and_a_corrupt_file_is_rebuilt(tmp_path, monkeypatch):
    import ortsae.downstream as D
    monkeypatch.setattr("ortsae.activations.cache_dir", lambda *p: tmp_path)
    built = []
    monkeypatch.setattr(D, "downstream_data", lambda *a, **k: built.append(1) or dict(sets={}, tasks={}, info=dict(n=1)))
    monkeypatch.setattr("ortsae.activations.load_model_for_hook", lambda *a, **k: None)
    path = _data_cache("m", "h", "standin", "smoke", 0)
    path.write_bytes(b"not a torch file")
    assert load_downstream_data("m", "h", size="smoke", progress=False)["info"] == dict(n=1) and len(built) == 1
    assert load_downstream_data("m", "h", size="smoke", progress=False)["info"] == dict(n=1) and len(built) == 1   # cached
    torch.load(path, weights_only=True)                                             # loads without running code


def test_biographies_cover_the_scr_pairs():
    rows = biographies(3)
    for a, b in SCR_PAIRS:
        for p in (a, b):
            assert {r["gender"] for r in rows if r["profession"] == p} == {"male", "female"}
