"""Every metric against an independent reference: NumPy or plain-Python transcriptions of the definitions, brute force,
and planted cases whose answer is known. (SAEBench's own absorption code is compared in bench/vs_saebench.py.)"""
import math
import numpy as np, pytest, torch
from hypothesis import given, settings, strategies as st
from ortsae.sae import BatchTopKSAE
from ortsae.metrics import (core_metrics, ce_kl_scores, mean_cos_sim, unique_fraction, composition_rate,
                            absorption_scores, calibrate_threshold, bootstrap_ci, random_decoder, geometry_metrics)


def _sae(d=12, m=48, k=3, seed=0):
    sae = BatchTopKSAE(d, m, k=k, seed=seed)
    sae.encode(torch.randn(256, d, generator=torch.Generator().manual_seed(seed)))   # sets a threshold
    return sae.eval()


def _cos(A, B):
    A = A / np.linalg.norm(A, axis=1, keepdims=True); B = B / np.linalg.norm(B, axis=1, keepdims=True)
    return A @ B.T


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 300), bs=st.integers(1, 120), seed=st.integers(0, 99))
def test_legacy_ev_is_the_mean_per_token_ratio_against_each_batch_mean(n, bs, seed):
    g = torch.Generator().manual_seed(seed)
    sae, x = _sae(), torch.randn(n, 12, generator=g) * 2 + 1
    got = core_metrics(sae, x, batch_size=bs)["explained_variance_legacy"]
    with torch.no_grad(): xh = sae(x).double().numpy()
    X, terms = x.double().numpy(), []
    for s in range(0, n, bs):                       # SAEBench's legacy formula, one batch at a time
        xb, hb = X[s:s + bs], xh[s:s + bs]
        terms += list(1 - ((xb - hb) ** 2).sum(1) / np.maximum(((xb - xb.mean(0)) ** 2).sum(1), 1e-12))
    assert got == pytest.approx(np.mean(terms), rel=1e-4, abs=1e-4)


def test_ce_and_kl_scores_match_a_numpy_computation(tiny):
    toks = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(2))
    hook, fn = "blocks.1.hook_resid_post", lambda a: 0.6 * a + 0.1

    class Half(torch.nn.Module):
        d_in = 64
        def forward(self, x): return fn(x)
    r = ce_kl_scores(tiny, Half(), toks, hook)
    with torch.no_grad():
        clean = tiny(toks).double().numpy()
        spliced = tiny.run_with_hooks(toks, fwd_hooks=[(hook, lambda a, hook: fn(a))]).double().numpy()
        zero = tiny.run_with_hooks(toks, fwd_hooks=[(hook, lambda a, hook: torch.zeros_like(a))]).double().numpy()
    logsm = lambda z: z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    T = toks.numpy()
    ce = lambda z: -np.mean(np.take_along_axis(logsm(z)[:, :-1], T[:, 1:, None], -1))
    kl = lambda z: np.mean((np.exp(logsm(clean)) * (logsm(clean) - logsm(z))).sum(-1))
    assert r["ce_score"] == pytest.approx((ce(zero) - ce(spliced)) / (ce(zero) - ce(clean)), rel=1e-4)
    assert r["kl_score"] == pytest.approx((kl(zero) - kl(spliced)) / kl(zero), rel=1e-4)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 60), d=st.integers(2, 10), seed=st.integers(0, 999), chunk=st.integers(1, 70))
def test_mean_cos_sim_matches_numpy(m, d, seed, chunk):
    W = torch.randn(m, d, generator=torch.Generator().manual_seed(seed))
    C = _cos(W.double().numpy(), W.double().numpy()); np.fill_diagonal(C, -np.inf)
    assert mean_cos_sim(W, chunk=chunk) == pytest.approx(C.max(1).mean(), abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 50), n=st.integers(1, 50), d=st.integers(2, 6), t=st.floats(0.05, 0.95), seed=st.integers(0, 999))
def test_unique_fraction_matches_brute_force(m, n, d, t, seed):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(m, d, generator=g), torch.randn(n, d, generator=g)
    a, b = A.double().numpy(), B.double().numpy()
    cos = _cos(a, b)
    brute = np.mean([(row < t).all() for row in cos])
    near = np.abs(cos.max(1) - t) < 1e-6                               # a row whose best cosine is within float error of t
    got = unique_fraction(A, B, threshold=t, chunk=7)
    assert abs(got - brute) <= near.sum() / m + 1e-6                    # 1e-6: the fraction is a float32 mean


def test_composition_rate_planted_and_invariant_to_row_scale():
    g = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(24, 64, generator=g), dim=1)
    idx = torch.stack([torch.randperm(24, generator=g)[:2] for _ in range(96)])
    composed = atoms[idx].sum(1)                                        # every row: a sum of 2 of 24 atoms
    c_comp, c_rand = composition_rate(composed, steps=600), composition_rate(torch.randn(96, 64, generator=g), steps=600)
    assert c_comp > 0.8 and c_rand < 0.5 and c_comp > c_rand + 0.3
    assert composition_rate(composed * 8.0, steps=600) == c_comp        # rows are normalised (x8 is exact in floats)


def test_random_decoder_baselines_are_chance_level():
    W = random_decoder(512, 64)
    g = geometry_metrics(W, composition_steps=200)
    # nearest-neighbour cosine of random directions ~ sqrt(2 ln m / d) (order of magnitude)
    assert 0.5 * math.sqrt(2 * math.log(512) / 64) < g["mean_cos_sim"] < 1.5 * math.sqrt(2 * math.log(512) / 64)
    assert random_decoder(512, 64).equal(W)                                 # seeded: the same baseline every time
    # in 576 dims, 256 random directions are nearly all "unique" against 256 others (max cos ~0.14 < 0.2)
    assert unique_fraction(random_decoder(256, 576), random_decoder(256, 576, seed=1)) > 0.9


def _absorption_reference(a, x, W, p, main, cos_min=0.1, top=3, share=0.4, full_cos=0.025):
    "SAEBench's per-word recipe transcribed in plain Python (one token)."
    p = p / np.linalg.norm(p)
    c = [float(np.dot(w, p) / np.linalg.norm(w)) for w in W]
    pi = [float(a[i] * np.dot(W[i], p)) for i in range(len(W))]
    P, M = float(np.dot(x, p)), sum(pi[i] for i in main)
    absorbers = sorted((pi[i] for i in range(len(W)) if i not in main and c[i] >= cos_min and pi[i] > 0), reverse=True)[:top]
    A = sum(absorbers)
    if M >= P or A / P < share: frac = 0.0
    elif M <= 0: frac = 1.0
    else: u = min(A, P - M); frac = min(max(u / (u + M), 0.0), 1.0)
    j = int(np.argmax(pi))
    full = all(abs(a[i]) < 1e-8 for i in main) and c[j] >= full_cos and P > 0 and pi[j] / P >= share
    return frac, full


@settings(max_examples=40, deadline=None)
@given(m=st.integers(3, 12), d=st.integers(2, 6), n_main=st.integers(1, 2), seed=st.integers(0, 10_000))
def test_absorption_scores_match_a_plain_python_transcription(m, d, n_main, seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, d)); p = rng.normal(size=d)
    W[: m // 2] += 2 * p                                               # some latents aligned with the probe
    acts = rng.exponential(size=(20, m)) * (rng.random((20, m)) < 0.4)
    acts[:5, :n_main] = 0                                              # main latents silent on some tokens
    x = acts @ W + 0.3 * rng.normal(size=(20, d)) + 0.5 * p            # positive projection mostly
    main = list(range(n_main))
    frac, full = absorption_scores(torch.tensor(acts), torch.tensor(x), torch.tensor(W), torch.tensor(p), main)
    for t in range(20):
        if abs(np.dot(x[t], p / np.linalg.norm(p))) < 1e-6: continue  # P ~ 0: the ratio is undefined
        rf, rfull = _absorption_reference(acts[t], x[t], W, p, main)
        assert frac[t].item() == pytest.approx(rf, abs=1e-6) and bool(full[t]) == rfull, t


@settings(max_examples=20, deadline=None)
@given(n=st.integers(10, 200), k=st.integers(1, 8), seed=st.integers(0, 999))
def test_calibrated_threshold_gives_l0_k_by_brute_force(n, k, seed):
    sae = _sae(k=k, seed=seed % 5)
    x = torch.randn(n, 12, generator=torch.Generator().manual_seed(seed))
    t = calibrate_threshold(sae, x)
    with torch.no_grad(): pre = sae.pre_acts(x).numpy()
    assert (pre > t).sum() == n * k                                   # continuous values: no ties
    assert core_metrics(sae, x)["l0"] == pytest.approx(k)


def test_calibration_refuses_an_impossible_target():
    with pytest.raises(ValueError, match="target L0"): calibrate_threshold(_sae(), torch.randn(10, 12), target=48)


def test_bootstrap_interval_matches_numpy_resampling():
    rng = np.random.default_rng(0)
    groups = [torch.tensor(rng.random(n)) for n in (5, 40, 200)]
    lo, hi = bootstrap_ci(groups, n_boot=4000)
    # numpy reference: the same statistic, resampled independently; the intervals agree to Monte-Carlo error
    ref = [np.mean([rng.choice(g.numpy(), len(g)).mean() for g in groups]) for _ in range(4000)]
    assert lo == pytest.approx(np.quantile(ref, 0.025), abs=0.01) and hi == pytest.approx(np.quantile(ref, 0.975), abs=0.01)


def test_saebench_recipe_does_not_depend_on_where_the_scale_is_folded():
    """SAEBench's SAEs have unit-norm decoder rows; ortsae folds the activation scale into them. The same SAE in either form
    (activations / n, decoder rows x n) gets the same absorption under recipe='saebench' (its L1 ranking is not scale-free)."""
    from ortsae.metrics import letter_probes, first_letter_absorption
    g = torch.Generator().manual_seed(0)
    F = torch.nn.functional.normalize(torch.randn(26, 24, generator=g), dim=1)
    y = torch.randint(0, 26, (600,), generator=g)
    x = F[y] * 3 + 0.5 * torch.randn(600, 24, generator=g)                # letters with a direction each, plus noise
    sae = BatchTopKSAE(24, 96, k=4, seed=1); sae.train(); sae.loss(x); sae.eval()
    folded = BatchTopKSAE(24, 96, k=4, seed=1).eval()
    n = 5.0                                                               # the scale folded into the decoder rows
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "b_dec"): getattr(folded, name).copy_(getattr(sae, name))
        folded.W_enc.div_(n); folded.b_enc.div_(n); folded.W_dec.copy_(sae.W_dec * n); folded.threshold.copy_(sae.threshold / n)
    data = letter_probes(x, y, 480, min_probe_f1=0.0, min_letters=0, recipe="saebench")
    a = first_letter_absorption(sae, data, centre=False, recipe="saebench", n_boot=20)
    b = first_letter_absorption(folded, data, centre=False, recipe="saebench", n_boot=20)
    assert {l: v["main_latents"] for l, v in a["letters"].items()} == {l: v["main_latents"] for l, v in b["letters"].items()}
    assert a["mean_absorption"] == pytest.approx(b["mean_absorption"], abs=1e-5)
