"Metric definitions checked against direct computations, and the bad-input paths of evaluation."
import json
import numpy as np, pytest, torch
from hypothesis import given, settings, strategies as st
from ortsae.sae import BatchTopKSAE
from ortsae.activations import write_shards
from ortsae.train import make_config
from ortsae.metrics import (core_metrics, ce_kl_scores, mean_cos_sim, max_cosines, clustering_coefficient,
                            unique_fraction, absorption_scores, letter_data, evaluate_run, table1)


def _sae(d=16, m=64, k=4, seed=0):
    sae = BatchTopKSAE(d, m, k=k, seed=seed)
    sae.encode(torch.randn(256, d, generator=torch.Generator().manual_seed(seed)))   # sets a threshold
    return sae.eval()


def test_core_metrics_match_numpy():
    sae, x = _sae(), torch.randn(500, 16) * 2 + 1
    m = core_metrics(sae, x, batch_size=77)
    with torch.no_grad(): f, xh = sae.encode(x).numpy(), sae(x).numpy().astype(np.float64)
    X = x.numpy().astype(np.float64)
    assert np.isclose(m["mse"], ((X - xh) ** 2).mean(), rtol=1e-5)
    assert np.isclose(m["explained_variance"], 1 - ((X - xh) ** 2).sum(1).mean() / ((X - X.mean(0)) ** 2).sum(1).mean(), rtol=1e-5)
    assert np.isclose(m["l0"], (f > 0).sum(1).mean()) and np.isclose(m["dead_frac"], ((f > 0).sum(0) == 0).mean())
    assert np.isclose(m["dense_frac"], ((f > 0).mean(0) > 0.1).mean())


def test_correct_ev_does_not_depend_on_batch_size_but_legacy_does():
    sae, x = _sae(), torch.randn(1000, 16) * 3 + torch.linspace(-2, 2, 1000)[:, None]
    a, b = core_metrics(sae, x, batch_size=50), core_metrics(sae, x, batch_size=1000)
    assert abs(a["explained_variance"] - b["explained_variance"]) < 1e-6 and abs(a["mse"] - b["mse"]) < 1e-6 * b["mse"]
    assert abs(a["explained_variance_legacy"] - b["explained_variance_legacy"]) > 1e-4


def test_mean_cos_sim_extremes():
    assert abs(mean_cos_sim(torch.eye(10))) < 1e-7
    assert abs(mean_cos_sim(torch.eye(10).repeat(2, 1)) - 1) < 1e-6


@settings(max_examples=25, deadline=None)
@given(m=st.integers(3, 40), d=st.integers(2, 6), t=st.floats(0.0, 0.9), seed=st.integers(0, 999), chunk=st.integers(1, 50))
def test_clustering_matches_brute_force(m, d, t, seed, chunk):
    W = torch.randn(m, d, generator=torch.Generator().manual_seed(seed))
    A = (torch.nn.functional.normalize(W, dim=1) @ torch.nn.functional.normalize(W, dim=1).T > t).double().fill_diagonal_(0)
    deg = A.sum(1); triples = (deg * (deg - 1)).sum()
    want = (torch.trace(A @ A @ A) / triples).item() if triples > 0 else 0.0
    c, density = clustering_coefficient(W, t, chunk=chunk)
    assert abs(c - want) < 1e-6 and abs(density - A.sum().item() / (m * (m - 1))) < 1e-9


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 50), n=st.integers(1, 50), seed=st.integers(0, 999), chunk=st.integers(1, 64))
def test_max_cosines_cross(m, n, seed, chunk):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(m, 5, generator=g), torch.randn(n, 5, generator=g)
    want = (torch.nn.functional.normalize(A, dim=1) @ torch.nn.functional.normalize(B, dim=1).T).max(1).values
    assert torch.allclose(max_cosines(A, B, chunk), want, atol=1e-6)
    assert unique_fraction(A, B) == (want < 0.2).float().mean().item()


class _Fixed(torch.nn.Module):
    def __init__(self, d, fn): super().__init__(); self.d_in, self.fn = d, fn
    def forward(self, x): return self.fn(x)


def test_ce_kl_identity_and_zero(tiny):
    toks = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    ident = ce_kl_scores(tiny, _Fixed(64, lambda x: x), toks, "blocks.1.hook_resid_post")
    zero = ce_kl_scores(tiny, _Fixed(64, torch.zeros_like), toks, "blocks.1.hook_resid_post")
    assert abs(ident["ce_score"] - 1) < 1e-5 and abs(ident["kl_score"] - 1) < 1e-5 and abs(ident["kl_sae"]) < 1e-6
    assert abs(zero["ce_score"]) < 1e-5 and abs(zero["kl_score"]) < 1e-5


def test_ce_kl_keeps_bos_positions(tiny):
    toks = torch.randint(3, 256, (2, 16)); toks[:, 0] = 1
    kept = ce_kl_scores(tiny, _Fixed(64, torch.zeros_like), toks, "blocks.1.hook_resid_post", keep_ids=[1])
    assert kept["ce_sae"] == pytest.approx(kept["ce_zero"])


def test_sae_width_must_match_hook(tiny):
    with pytest.raises(ValueError, match="reads 32-dimensional activations"):
        ce_kl_scores(tiny, _Fixed(32, lambda x: x), torch.zeros(1, 4, dtype=torch.long), "blocks.0.hook_resid_post")


def test_absorption_hand_built():
    g = torch.Generator().manual_seed(3)
    p, own, other = torch.nn.functional.normalize(torch.randn(3, 24, generator=g), dim=1)
    own, other = [torch.nn.functional.normalize(v - (v @ p) * p, dim=0) for v in (own, other)]  # orthogonal to p
    W = torch.stack([p, torch.nn.functional.normalize(p + own, dim=0), other])
    acts = torch.tensor([[1.5, 0.0, 0.3], [0.0, 1.5, 0.3]])     # main latent fires / only the absorber fires
    frac, full = absorption_scores(acts, acts @ W, W, p, main=[0])
    assert frac.tolist() == [0.0, 1.0] and full.tolist() == [False, True]
    # without an absorbing latent (the child's decoder has no letter component) nothing is absorbed
    W2 = torch.stack([p, own, other])
    frac2, full2 = absorption_scores(acts, acts @ W2, W2, p, main=[0])
    assert frac2[1] == 0 and not full2[1]


def test_too_few_letters_is_a_clear_error(smol):
    with pytest.raises(ValueError, match=r"letters have a ground-truth probe F1 > 0.6 \(need 26\)"):
        letter_data(smol, "blocks.2.hook_resid_post", n_words=150, min_letters=26)


def _trained_run(tmp_path, rows=6000, total=2048):
    "A tiny run trained on cached random activations (shards of 2,000 rows; column 0 marks the shard), and the cache."
    from ortsae.train import train
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 16, generator=g); x[:, 0] = torch.arange(rows) // 2000      # the shard each row sits in
    write_shards(iter([x]), tmp_path / "acts", shard_rows=2000)
    cfg = make_config("smoke", source=f"shards:{tmp_path / 'acts'}", d_sae=64, k=4, k_aux=8, batch_size=256, buffer_size=512,
                      total_tokens=total, chunk_size=64, n_scale=256, warmup_steps=1, log_every=4, checkpoint_every=4,
                      saes=["batchtopk", "ortsae"])
    train(cfg, tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_eval_uses_only_activations_training_never_read(tmp_path):
    from ortsae.metrics import _heldout
    from ortsae.train import TrainConfig
    run = _trained_run(tmp_path)        # 8 steps of 256 = 2,048 rows: the first shard (2,000) and part of the second
    acts, model, held = _heldout(TrainConfig.load(run / "config.json"), run, 10_000, "cpu")
    assert model is None and held["skipped_chunks"] == 2 and held["chunks"] == 1
    assert (acts[:, 0] == 2).all() and len(acts) == 2000               # only the third shard: never read by training
    res = evaluate_run(run, n_tokens=10_000, absorption_words=0, composition_steps=10, plot=False)
    assert res["heldout"] == held == json.loads((run / "metrics.json").read_text())["heldout"]


def test_eval_refuses_a_run_that_read_its_whole_source(tmp_path):
    run = _trained_run(tmp_path, rows=4000, total=256 * 40)           # the corpus runs out before 40 steps
    assert json.loads((run / "summary.json").read_text())["steps"] < 40
    with pytest.raises(ValueError, match="No held-out activations: training read all 2 chunks"):
        evaluate_run(run, absorption_words=0, composition_steps=10, plot=False)


def test_eval_on_a_live_stream_keeps_the_whole_model_for_ce_kl(tmp_path):
    from dataclasses import asdict
    from ortsae.metrics import _heldout
    cfg = make_config("smoke", model_batch=2, ctx_len=32)
    (tmp_path / "saes").mkdir(); cfg.save(tmp_path / "config.json")
    torch.save({"cfg": asdict(cfg), "buffer": {"n_chunks": 3, "exhausted": False}}, tmp_path / "checkpoint.pt")
    acts, model, held = _heldout(cfg, tmp_path, 100, "cpu")
    assert model.cfg.n_layers == 30 and acts.shape == (100, 576) and held["skipped_chunks"] == 3   # not cut at the hook


def test_eval_refuses_when_training_read_every_activation(tmp_path):
    run = _trained_run(tmp_path, rows=2000, total=1536)          # one shard, all of it read into the buffer
    with pytest.raises(ValueError, match="No held-out activations: training read all 1 chunks"):
        evaluate_run(run, absorption_words=0, composition_steps=10, plot=False)


def test_eval_without_a_checkpoint_cannot_tell_held_out(tmp_path):
    run = _trained_run(tmp_path)
    (run / "checkpoint.pt").unlink()
    with pytest.raises(FileNotFoundError, match="can't tell held-out tokens"):
        evaluate_run(run, absorption_words=0, composition_steps=10, plot=False)


def test_eval_calibrates_l0_to_k_and_saves_the_threshold(tmp_path):
    from ortsae.sae import load_sae
    run = _trained_run(tmp_path)
    res = evaluate_run(run, absorption_words=0, composition_steps=10, plot=False)
    for name, r in res["saes"].items():
        assert r["k"] == 4 and abs(r["l0"] - 4) <= 0.02 * 4, (name, r["l0"])
        back = load_sae(run / "saes" / name)
        assert back.threshold.item() == pytest.approx(r["threshold"])
        info = json.loads((run / "saes" / name / "cfg.json").read_text())["ortsae"]["threshold_calibration"]
        assert info["target_l0"] == 4 and info["trained_threshold"] == pytest.approx(r["threshold_trained"])
    again = evaluate_run(run, absorption_words=0, composition_steps=10, plot=False, calibrate=False)
    for name, r in again["saes"].items():                       # the trained threshold is restored, not the calibrated one
        assert r["threshold"] == r["threshold_trained"] == pytest.approx(res["saes"][name]["threshold_trained"])
    assert "random decoder" in table1(res) and res["random_decoder"]["mean_cos_sim"] > 0
    assert 0 <= res["saes"]["ortsae"]["unique_vs_batchtopk"] <= 1 and 0 <= res["random_decoder"]["unique_vs_batchtopk"] <= 1


def test_eval_refuses_sae_without_live_latents(tmp_path):
    from ortsae.sae import load_sae
    run = _trained_run(tmp_path)
    for name in ("batchtopk", "ortsae"):
        sae = load_sae(run / "saes" / name); sae.threshold.fill_(1e9); sae.save(run / "saes" / name)   # nothing can fire
    with pytest.raises(ValueError, match="no live latents"):
        evaluate_run(run, absorption_words=0, composition_steps=10, plot=False, calibrate=False)


def test_eval_needs_trained_saes(tmp_path):
    with pytest.raises(FileNotFoundError, match="No trained SAEs"):
        evaluate_run(tmp_path)
