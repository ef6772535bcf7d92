"Synthetic ground truth: generator statistics, oracle scores and bad input (notebook 05_synthetic has the walk-through)."
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from ortsae.synthetic import SyntheticData, match_latents, absorption, detection_scores, composed, ground_truth_metrics
from ortsae.sae import BatchTopKSAE


@settings(max_examples=25, deadline=None)
@given(N=st.integers(20, 120), d=st.integers(4, 32), P=st.integers(0, 4), K=st.integers(0, 4), exclusive=st.booleans(),
       p_child=st.floats(0, 1), l0=st.floats(0.5, 6), corr=st.floats(0, 0.9), seed=st.integers(0, 10**6))
def test_generator_respects_hierarchy_and_seed(N, d, P, K, exclusive, p_child, l0, corr, seed):
    data = SyntheticData(N, d, P, K, exclusive, p_child, l0, corr=corr, seed=seed)
    x, c = data.sample(500, torch.Generator().manual_seed(seed))
    assert x.shape == (500, d) and c.shape == (500, N) and (c >= 0).all()
    on = c > 0
    kids = data.parent_of >= 0
    assert not (on[:, kids] & ~on[:, data.parent_of[kids]]).any()                    # no child without its parent
    if exclusive and K and P: assert on[:, P:P * (1 + K)].view(500, P, K).sum(-1).max() <= 1
    assert torch.allclose(data.probs[data.parent_of < 0].sum() + data.probs[kids].sum(), torch.tensor(l0), atol=1e-3) \
        or (data.probs == 1).any()                                                     # mean L0 as asked (unless clipped)
    assert torch.equal(data.sample(7, torch.Generator().manual_seed(1))[0], data.sample(7, torch.Generator().manual_seed(1))[0])


def test_oracle_scores_perfectly():
    data = SyntheticData(seed=3)
    x, c = data.sample(5000, torch.Generator().manual_seed(0))
    latent, cos = match_latents(data.D, data.D)
    assert torch.allclose(cos, torch.ones(len(cos))) and torch.equal(latent, torch.arange(data.N))
    assert absorption(c, c, latent, data) == dict(absorption=0.0, parent_recall=1.0)
    assert detection_scores(c, c, latent)["f1"].min() == 1 and not composed(data.D, data.D).any()


def test_built_absorption_is_measured_exactly():
    data = SyntheticData(seed=1, p_child=1.0)
    _, c = data.sample(8000, torch.Generator().manual_seed(2))
    acts = c.clone()
    for p in range(data.P):                                                            # every parent absorbed by child 0
        acts[c[:, data.P + p * data.K] > 0, p] = 0
    res = absorption(acts, c, torch.arange(data.N), data)
    expected = sum(((c[:, data.P + p * data.K] > 0).sum() / (c[:, p] > 0).sum()).item() for p in range(data.P)) / data.P
    assert abs(res["absorption"] - expected) < 1e-9 and abs(res["parent_recall"] - (1 - expected)) < 1e-9


def test_an_sae_with_the_true_decoder_scores_mcc_one():
    data = SyntheticData(64, 16, 2, 2, seed=0)
    sae = BatchTopKSAE(16, 64, k=2)
    with torch.no_grad(): sae.W_dec.copy_(data.D); sae.W_enc.copy_(data.D.T); sae.threshold.fill_(0.1)
    m = ground_truth_metrics(sae, data, n=2000)
    assert abs(m["mcc"] - 1) < 1e-5 and m["uniqueness"] == 1 and abs(m["true_mean_cos_sim"] - m["mean_cos_sim"]) < 1e-5


@pytest.mark.parametrize("kw, msg", [(dict(n_features=10, n_parents=4, n_children=3), "more than n_features=10"),
                                     (dict(p_child=-0.1), "p_child=-0.1"), (dict(d=0), "d=0"),
                                     (dict(mean_l0=0), "mean_l0=0"), (dict(corr=2), "corr=2"), (dict(n_features=2.5), "n_features=2.5")])
def test_bad_settings_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")): SyntheticData(**kw)


def test_synthetic_activations_have_the_real_runs_scale():
    "E||x||^2 = d, as chapter 00 scales real activations; codes are unscaled and x is exactly scale * codes @ D."
    import torch
    from ortsae.synthetic import SyntheticData
    for kw in (dict(), dict(n_features=128, d=32, mean_l0=3, noise=0.05)):
        data = SyntheticData(seed=3, **kw)
        x, c = data.sample(30_000, torch.Generator().manual_seed(0))
        assert abs(x.pow(2).sum(1).mean().item() / data.d - 1) < 0.03
        if not kw: assert torch.allclose(x, data.scale * c @ data.D, atol=1e-5)
