"Property, invariant and bad-input tests for ortsae.sae (the notebook 01_sae has the walk-through)."
import json, math
import pytest, torch
from hypothesis import given, settings, strategies as st
from ortsae.sae import BatchTopKSAE, MatryoshkaSAE, batch_topk, load_sae, geometric_median
import ortsae.fast   # the sparse training step (chapter 02)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 32), m=st.integers(2, 64), data=st.data())
def test_batch_topk_keeps_exactly_Bk(B, m, data):
    k = data.draw(st.integers(1, m))
    pre = torch.rand(B, m) + 0.01                      # all positive, distinct almost surely
    acts = batch_topk(pre, k)
    assert (acts > 0).sum() == B * k
    kept, dropped = pre[acts > 0], pre[acts == 0]
    assert dropped.numel() == 0 or kept.min() >= dropped.max()   # the largest ones, over the whole batch
    assert torch.equal(acts[acts > 0], kept)


def test_training_encode_keeps_Bk_and_sets_threshold():
    sae = BatchTopKSAE(8, 32, k=3)
    acts = sae.encode(torch.randn(64, 8) * 3)
    assert (acts > 0).sum() == 64 * 3
    assert sae.threshold > 0


def _toy(n, seed, d=24, n_feats=64, active=3):
    g = torch.Generator().manual_seed(seed)
    F = torch.nn.functional.normalize(torch.randn(n_feats, d, generator=torch.Generator().manual_seed(7)), dim=1)
    idx = torch.rand(n, n_feats, generator=g).topk(active, dim=1).indices
    return torch.zeros(n, n_feats).scatter(1, idx, torch.rand(n, active, generator=g) + 0.5) @ F * 2.7


def _train(sae, steps=600, B=256, lr=5e-3):
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    sae.init_b_dec(_toy(512, -1))
    for step in range(steps):
        out = sae.loss(_toy(B, step))
        opt.zero_grad(); out["loss"].backward(); sae.remove_parallel_grad(); opt.step(); sae.normalize_decoder()
    return sae


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return _train(BatchTopKSAE(24, 96, k=4, k_aux=16, dead_after=4096))


def test_threshold_mode_reproduces_training_l0(trained):
    held_out = _toy(8192, 10**7)
    trained.eval()
    try:
        l0 = (trained.encode(held_out) > 0).sum(1).float().mean().item()
    finally:
        trained.train()
    assert abs(l0 - trained.k) <= 0.1 * trained.k, f"inference L0 {l0:.2f} vs k={trained.k}"


def test_decoder_rows_stay_unit_norm(trained):
    assert torch.allclose(trained.W_dec.norm(dim=1), torch.ones(96), atol=1e-5)


def test_remove_parallel_grad_is_tangent():
    sae = BatchTopKSAE(8, 32, k=3)
    sae.loss(torch.randn(16, 8))["loss"].backward()
    sae.remove_parallel_grad()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-6


def test_aux_only_touches_dead_latents():
    sae = BatchTopKSAE(8, 32, k=3, k_aux=4)
    dead = torch.zeros(32, dtype=torch.bool); dead[[1, 5, 9, 20]] = True
    sae.since_fired[dead] = 10**9
    out = sae.loss(torch.randn(16, 8))
    sae.zero_grad(); out["aux"].backward()
    assert out["aux"] > 0
    assert sae.W_dec.grad[~dead].abs().max() == 0 and sae.W_enc.grad[:, ~dead].abs().max() == 0
    assert sae.b_enc.grad[~dead].abs().max() == 0


def test_no_dead_no_aux():
    sae = BatchTopKSAE(8, 32, k=3)
    assert sae.loss(torch.randn(16, 8))["aux"] == 0


def test_dead_counter_counts_tokens():
    sae = BatchTopKSAE(8, 32, k=1)
    acts = sae.encode(torch.randn(10, 8))
    fired = (acts > 0).any(0)
    assert (sae.since_fired[fired] == 0).all() and (sae.since_fired[~fired] == 10).all()


def test_matryoshka_prefix_losses_average():
    sae = MatryoshkaSAE(8, 32, k=3, group_sizes=[4, 4, 8, 16])
    x = torch.randn(16, 8)
    out = sae.loss(x)
    acts = batch_topk(sae.pre_acts(x), 3)
    mses = [((acts[:, :e] @ sae.W_dec[:e] + sae.b_dec - x) ** 2).mean() for e in (4, 8, 16, 32)]
    assert torch.allclose(out["mse"], torch.stack(mses).mean(), atol=1e-6)
    assert torch.allclose(out["mse_full"], mses[-1], atol=1e-6)


def test_geometric_median_of_symmetric_points_is_centre():
    pts = torch.tensor([[1., 0.], [-1., 0.], [0., 1.], [0., -1.]]) + torch.tensor([3., 4.])
    assert torch.allclose(geometric_median(pts), torch.tensor([3., 4.]), atol=1e-5)


@pytest.mark.parametrize("cls,kw", [(BatchTopKSAE, {}), (MatryoshkaSAE, {"group_sizes": [8, 8, 16]})])
def test_save_load_round_trip_is_exact(tmp_path, trained, cls, kw):
    sae = cls(24, 32, k=4, **kw) if cls is MatryoshkaSAE else trained
    sae.encode(torch.randn(64, 24))  # set a threshold
    sae.save(tmp_path, metadata={"model_name": "toy", "hook_name": "blocks.0.hook_resid_post"})
    back = load_sae(tmp_path)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    assert type(back) is cls and back.config() == sae.config()
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    back.save(tmp_path / "again")
    assert (tmp_path / "again" / "sae_weights.safetensors").read_bytes() == (tmp_path / "sae_weights.safetensors").read_bytes()


def test_folded_scale_gives_raw_activation_sae(tmp_path, trained):
    s = 0.123
    trained.save(tmp_path, scale=s)
    back, x = load_sae(tmp_path), _toy(256, 99) / s
    trained.eval()
    try:
        assert torch.allclose(back(x), trained(s * x) / s, rtol=1e-4, atol=1e-4)
        from safetensors.torch import load_file
        w = load_file(str(tmp_path / "sae_weights.safetensors"))
        assert w["W_enc"].shape == (24, 96) and w["W_dec"].shape == (96, 24) and w["threshold"].shape == (96,)
    finally:
        trained.train()


def test_inference_before_training_is_an_error():
    sae = BatchTopKSAE(8, 32, k=3).eval()
    with pytest.raises(RuntimeError, match="No inference threshold"):
        sae.encode(torch.randn(2, 8))


@pytest.mark.parametrize("kw,msg", [
    (dict(d_in=8, d_sae=32, k=33), "k=33 is larger than the dictionary"),
    (dict(d_in=8, d_sae=32, k=0), "k=0 must be a positive integer"),
    (dict(d_in=0, d_sae=32, k=3), "d_in=0"),
    (dict(d_in=8, d_sae=32, k=3, k_aux=0), "k_aux=0"),
])
def test_bad_sizes(kw, msg):
    with pytest.raises(ValueError, match=msg):
        BatchTopKSAE(**kw)


def test_bad_groups():
    with pytest.raises(ValueError, match="sum to d_sae=32"):
        MatryoshkaSAE(8, 32, 3, group_sizes=[16, 8])


@pytest.mark.parametrize("x,msg", [
    (torch.randn(4, 7), r"shape \(batch, 8\), got \(4, 7\)"),
    (torch.tensor([[float("nan")] * 8]), "NaN/inf"),
    (torch.tensor([[float("inf")] * 8]), "NaN/inf"),
])
def test_bad_activations(x, msg):
    sae = BatchTopKSAE(8, 32, k=3)
    with pytest.raises(ValueError, match=msg):
        sae.loss(x)


def test_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json is missing"):
        load_sae(tmp_path)


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 40), m=st.integers(2, 300), seed=st.integers(0, 10**6), shift=st.floats(-3, 3), data=st.data())
def test_exact_batch_topk_selects_what_the_sort_selects(B, m, seed, shift, data):
    from ortsae.fast import exact_batch_topk
    k = data.draw(st.integers(1, m))
    g = torch.Generator().manual_seed(seed)
    pre = torch.relu(torch.randn(B, m, generator=g) + shift)
    if data.draw(st.booleans()): pre[0] += 5                      # one token holding many of the largest values
    idx = exact_batch_topk(pre, k)
    assert len(idx) == B * k and bool((idx[1:] > idx[:-1]).all())  # sorted, distinct
    kept, ref = torch.zeros(pre.numel()).index_copy_(0, idx, pre.flatten()[idx]).view_as(pre), batch_topk(pre, k)
    assert torch.equal(kept.flatten().sort().values, ref.flatten().sort().values)   # the same kept values, always
    pos = pre[pre > 0]
    if pos.unique().numel() == pos.numel():                                          # no ties: the same positions too
        assert torch.equal(kept, ref)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 12), m=st.integers(8, 96), B=st.integers(1, 48), seed=st.integers(0, 10**6),
       matryoshka=st.booleans(), n_dead=st.integers(0, 8), data=st.data())
def test_fast_step_equals_plain_step(d, m, B, seed, matryoshka, n_dead, data):
    k = data.draw(st.integers(1, m // 2))
    kw = dict(k=k, k_aux=data.draw(st.integers(1, m)), seed=seed)
    make = (lambda: MatryoshkaSAE(d, m, group_sizes=[m // 4, m // 4, m - 2 * (m // 4)], **kw)) if matryoshka \
        else (lambda: BatchTopKSAE(d, m, **kw))
    a, b = make(), make()
    a.fast, b.fast = False, True
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(seed)) * 2
    for s in (a, b):
        s.init_b_dec(x); s.since_fired[:n_dead] = 10**9
    la, lb = a.loss(x), b.loss(x)
    for key in la: assert torch.allclose(la[key], lb[key], rtol=1e-4, atol=1e-5), key
    la["loss"].backward(); lb["loss"].backward()
    for p, q in zip(a.parameters(), b.parameters()): assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-5)
    assert torch.equal(a.since_fired, b.since_fired) and torch.equal(a.threshold, b.threshold)
