"""Chapter 10's feature tools: the streaming top-k against brute force for any chunking (hypothesis), histograms that
add up, the batched NNLS against SciPy, the decomposition of planted composites, GPU-like conditions (a default device
other than the data's) and bad input."""
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from ortsae.features import (topk_merge, empty_stats, update_stats, nnls, nn_omp, decompose, decomposition_summary,
                             neighbours, load_features, save_features, EDGES)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), m=st.integers(1, 7), k=st.integers(1, 6), chunk=st.integers(1, 64), seed=st.integers(0, 999))
def test_streaming_topk_equals_sorting_everything(n, m, k, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(n, m, generator=g) * (torch.rand(n, m, generator=g) < 0.3)
    acts += torch.arange(n * m).reshape(n, m) * 1e-7                      # no ties: the top indices are well defined
    st_ = empty_stats(m, k)
    for s in range(0, n, chunk): update_stats(st_, acts[s:s + chunk], torch.arange(s, min(s + chunk, n)))
    kk = min(k, n); ref = acts.T.sort(dim=1, descending=True)
    torch.testing.assert_close(st_["top_vals"][:, :kk], ref.values[:, :kk])
    assert torch.equal(st_["top_idx"][:, :kk], ref.indices[:, :kk])
    assert torch.equal(st_["fires"], (acts > 0).sum(0)) and torch.equal(st_["hist"].sum(1), st_["fires"])


def test_histogram_bins_follow_the_edges():
    st_ = empty_stats(1, 2); v = torch.tensor([[1e-3], [0.5], [0.5], [2e4]])
    update_stats(st_, v, torch.arange(4))
    b = int(torch.bucketize(torch.tensor(0.5), EDGES))
    assert st_["hist"][0, 0] == 1 and st_["hist"][0, b] == 2 and st_["hist"][0, -1] == 1   # below, inside, above the range


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 9999), t=st.integers(1, 4))
def test_nnls_matches_scipy(seed, t):
    from scipy.optimize import nnls as scipy_nnls
    g = torch.Generator().manual_seed(seed)
    A, y = torch.randn(24, t, generator=g, dtype=torch.float64), torch.randn(24, generator=g, dtype=torch.float64)
    x = nnls((A.T @ A)[None], (A.T @ y)[None], torch.ones(1, t, dtype=torch.bool))[0]
    torch.testing.assert_close(x, torch.from_numpy(scipy_nnls(A.numpy(), y.numpy())[0]), atol=1e-6, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 9999), n_atoms=st.integers(2, 3))
def test_planted_composites_are_recovered(seed, n_atoms):
    g = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(128, 64, generator=g), dim=1)
    idx = torch.randperm(128, generator=g)[:n_atoms]; c = 0.3 + torch.rand(n_atoms, generator=g)
    d = decompose((c @ atoms[idx])[None], atoms, cos_min=0.999)     # exact: every planted atom is needed
    assert d["composite"].item() and set(d["atoms"][0][d["atoms"][0] >= 0].tolist()) == set(idx.tolist())
    got = dict(zip(d["atoms"][0].tolist(), d["coefs"][0].tolist()))
    want = c / (c @ atoms[idx]).norm()
    for i, w in zip(idx.tolist(), want.tolist()): assert got[i] == pytest.approx(w, abs=1e-5)


def test_random_targets_rarely_decompose_and_summary_adds_up():
    g = torch.Generator().manual_seed(0)
    s = decomposition_summary(decompose(torch.randn(200, 64, generator=g), torch.randn(256, 64, generator=g)))
    assert s["composite"] == 0 and s["single"] == 0 and s["neither"] == 1 and s["n"] == 200


def test_a_default_device_other_than_the_data_changes_nothing():
    g = torch.Generator().manual_seed(1)
    atoms, targets = F.normalize(torch.randn(40, 16, generator=g), dim=1), torch.randn(10, 16, generator=g)
    acts = torch.rand(50, 5, generator=g)
    ref = nn_omp(targets, atoms), topk_merge(torch.full((5, 3), -1.0), torch.full((5, 3), -1), acts, torch.arange(50))
    with torch.device("meta"):
        got = nn_omp(targets, atoms), topk_merge(torch.full((5, 3), -1.0, device="cpu"), torch.full((5, 3), -1, device="cpu"), acts, torch.arange(50, device="cpu"))
    for a, b in zip([*ref[0], *ref[1]], [*got[0], *got[1]]): torch.testing.assert_close(a, b)


def test_bad_input_gets_clear_errors(tmp_path):
    W = torch.randn(8, 4)
    with pytest.raises(IndexError, match="out of range"): neighbours(W, 8)
    with pytest.raises(ValueError, match="different models"): neighbours(W, 0, torch.randn(3, 5))
    with pytest.raises(ValueError, match="same model"): nn_omp(W, torch.randn(3, 5))
    (tmp_path / "f.pt").write_text("not a pass")
    with pytest.raises(ValueError, match="run the pass again"): load_features(tmp_path / "f.pt")
    fp = dict(stats={}, tokens=torch.zeros(1, 4, dtype=torch.long), n_tokens=3)
    assert load_features(save_features(fp, tmp_path / "ok.pt"))["n_tokens"] == 3
