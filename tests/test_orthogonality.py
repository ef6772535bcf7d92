"Property tests for the chunked orthogonality penalty and OrtSAE (notebook 02_orthogonality has the walk-through)."
import pytest, torch
from hypothesis import given, settings, strategies as st
from ortsae.orthogonality import (full_penalty, chunked_penalty, chunked_penalty_autograd, random_partition,
                                  nearest_neighbours, check_chunk_size, OrtSAE, OrtMatryoshkaSAE)
from ortsae.sae import load_sae

dims = st.integers(2, 12)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(2, 60), d=dims, seed=st.integers(0, 10**6), tile=st.integers(1, 64))
def test_one_chunk_equals_full(m, d, seed, tile):
    W = torch.randn(m, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(chunked_penalty(W, chunk_size=m, tile=tile), full_penalty(W), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(4, 80), d=dims, seed=st.integers(0, 10**6), data=st.data())
def test_fast_equals_autograd_value_and_gradient(m, d, seed, data):
    chunk = data.draw(st.integers(2, m))
    try:
        chunks = random_partition(m, chunk, torch.Generator().manual_seed(seed))
    except ValueError:
        return  # a chunk size that leaves single-feature chunks is refused (tested below)
    W = torch.randn(m, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    W1, W2 = W.clone().requires_grad_(), W.clone().requires_grad_()
    a = chunked_penalty(W1, chunks=chunks, tile=data.draw(st.integers(1, 32)))
    b = chunked_penalty_autograd(W2, chunks)
    a.backward(); b.backward()
    assert torch.allclose(a, b, atol=1e-12) and torch.allclose(W1.grad, W2.grad, atol=1e-12)


def test_gradcheck():
    W = torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    ch = random_partition(16, 8, torch.Generator().manual_seed(3))
    assert torch.autograd.gradcheck(lambda w: chunked_penalty(w, chunks=ch, tile=5), (W,))


def test_zero_row_is_finite():
    W = torch.randn(10, 4); W[[2, 7]] = 0; W.requires_grad_()
    p = chunked_penalty(W, chunk_size=10)
    p.backward()
    assert torch.isfinite(p) and torch.isfinite(W.grad).all()


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 200), data=st.data())
def test_partition_covers_every_feature_once(m, data):
    cs = data.draw(st.integers(2, m))
    try:
        parts = random_partition(m, cs, torch.Generator().manual_seed(0))
    except ValueError as e:
        assert "chunks of 1 feature" in str(e); return
    K = -(-m // cs)
    assert len(parts) == K and torch.equal(torch.cat(parts).sort().values, torch.arange(m))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1 and min(map(len, parts)) >= 2


def test_partition_is_fresh_each_call():
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(torch.cat(random_partition(100, 10, g)), torch.cat(random_partition(100, 10, g)))


def test_nearest_neighbours_matches_bruteforce():
    W = torch.randn(57, 5)
    C = torch.nn.functional.normalize(W, dim=1) @ torch.nn.functional.normalize(W, dim=1).T
    C.fill_diagonal_(-2)
    assert torch.equal(nearest_neighbours(W, tile=8), C.argmax(1))


@pytest.mark.parametrize("m,cs,msg", [(10, 1, "must be an integer >= 2"), (10, 11, "larger than the dictionary"),
                                      (3, 2, "chunks of 1 feature"), (10, 2.5, "must be an integer")])
def test_bad_chunk_sizes(m, cs, msg):
    with pytest.raises(ValueError, match=msg):
        check_chunk_size(m, cs)


@pytest.mark.parametrize("kw,msg", [(dict(gamma=-1), "gamma=-1"), (dict(gamma=float("nan")), "gamma=nan"),
                                    (dict(every=0), "every=0"), (dict(chunk_size=65), "chunk_size=65")])
def test_ortsae_bad_settings(kw, msg):
    with pytest.raises(ValueError, match=msg):
        OrtSAE(8, 64, k=3, **kw)


def test_ortsae_loss_adds_gamma_penalty():
    sae = OrtSAE(8, 64, k=3, gamma=0.5, chunk_size=16)
    out = sae.loss(torch.randn(16, 8))
    assert torch.allclose(out["loss"], out["mse"] + sae.aux_coef * out["aux"] + 0.5 * out["ortho"], atol=1e-6)


def test_ortsae_checkpoint_resumes_partitions(tmp_path):
    a = OrtSAE(8, 64, k=3, chunk_size=16, penalty_seed=5)
    for _ in range(3): a.loss(torch.randn(16, 8))
    torch.save(a.state_dict(), tmp_path / "ckpt.pt")
    b = OrtSAE(8, 64, k=3, chunk_size=16, penalty_seed=5)
    b.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    assert b.n_steps == 3 and torch.equal(a.rng.get_state(), b.rng.get_state())


def test_ort_matryoshka_saves_as_its_class(tmp_path):
    s = OrtMatryoshkaSAE(8, 64, k=3, group_sizes=[16, 16, 32], gamma=0.1, chunk_size=32, every=5)
    s.encode(torch.randn(32, 8))
    s.save(tmp_path)
    back = load_sae(tmp_path)
    assert type(back) is OrtMatryoshkaSAE and back.config() == s.config()


def test_penalty_gradient_is_bit_reproducible():
    "Needed for bit-identical resume: the same W gives the same gradient, every time (d large enough to go parallel)."
    W = torch.nn.functional.normalize(torch.randn(2048, 576, generator=torch.Generator().manual_seed(0)), dim=1)
    grads = []
    for _ in range(4):
        Wi = W.clone().requires_grad_()
        chunked_penalty(Wi, 512, torch.Generator().manual_seed(1)).backward()
        grads.append(Wi.grad)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


@settings(max_examples=30, deadline=None)
@given(m=st.integers(4, 60), d=dims, seed=st.integers(0, 10**6), absolute=st.booleans(),
       margin=st.one_of(st.none(), st.floats(0, 0.9)), data=st.data())
def test_variants_fast_equal_autograd(m, d, seed, absolute, margin, data):
    chunk = data.draw(st.integers(2, m))
    try:
        chunks = random_partition(m, chunk, torch.Generator().manual_seed(seed))
    except ValueError:
        return
    W = torch.randn(m, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    W1, W2 = W.clone().requires_grad_(), W.clone().requires_grad_()
    a = chunked_penalty(W1, chunks=chunks, tile=data.draw(st.integers(1, 32)), margin=margin, absolute=absolute)
    b = chunked_penalty_autograd(W2, chunks, margin=margin, absolute=absolute)
    a.backward(); b.backward()
    assert torch.allclose(a, b, atol=1e-12) and torch.allclose(W1.grad, W2.grad, atol=1e-12)


def test_margin_never_exceeds_paper_penalty():
    W = torch.randn(100, 8)
    paper = chunked_penalty(W, chunk_size=100)
    assert chunked_penalty(W, chunk_size=100, margin=0.2) < paper
    assert chunked_penalty(W, chunk_size=100, margin=0.0) <= paper + 1e-7
    assert chunked_penalty(W, chunk_size=100, absolute=True) >= paper - 1e-7


@settings(max_examples=30, deadline=None)
@given(m=st.integers(4, 80), seed=st.integers(0, 10**6), world=st.integers(1, 5), data=st.data())
def test_shards_add_up_to_the_penalty(m, seed, world, data):
    chunk = data.draw(st.integers(2, m))
    try:
        chunks = random_partition(m, chunk, torch.Generator().manual_seed(seed))
    except ValueError:
        return
    W = torch.randn(m, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    full = chunked_penalty(W, chunks=chunks)
    g_full, = torch.autograd.grad(full, W)
    parts = [chunked_penalty(W, chunks=chunks, shard=(r, world)) for r in range(world)]
    g_parts = sum(torch.autograd.grad(p, W)[0] for p in parts)
    assert torch.allclose(sum(parts), full, atol=1e-12) and torch.allclose(g_parts, g_full, atol=1e-12)


# ---- chapter 03's certified low-precision search: the fp32 search's neighbours, bit for bit (issue 29) ----
from ortsae.orthogonality import certified_search, search_dtype, _update_best, cosine_matrix


@torch.no_grad()
def _reference_search(Wn, tile, absolute):
    "The fp32 symmetric search as it was before the certified search (column maxima by `C.max(0)`)."
    best = torch.full((len(Wn),), float("-inf"), dtype=Wn.dtype)
    arg = torch.zeros(len(Wn), dtype=torch.long)
    for a in range(0, len(Wn), tile):
        for b in range(a, len(Wn), tile):
            C = Wn[a:a + tile] @ Wn[b:b + tile].T
            if absolute: C = C.abs_()
            if a == b: C.fill_diagonal_(float("-inf"))
            _update_best(best, arg, slice(a, a + tile), *C.max(1), b)
            if a != b: _update_best(best, arg, slice(b, b + tile), *C.max(0), a)
    return arg


def _adversarial(kind, m, d, seed, eps):
    "Unit rows: random, with duplicated rows, with near-duplicates at distance `eps`, or all near one direction."
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, d, generator=g)
    if kind == "duplicates": W[m // 2:] = W[:m - m // 2].clone()
    if kind == "near": W[m // 2:] = W[:m - m // 2].clone() + eps * torch.randn(m - m // 2, d, generator=g)
    if kind == "cone": W = W[:1] + eps * W                             # every pair nearly tied
    if kind == "grid": W = torch.randint(-1, 2, (m, d), generator=g).float() + (torch.arange(d) == 0)   # exact ties
    return torch.nn.functional.normalize(W, dim=1)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["random", "duplicates", "near", "cone", "grid"]), m=st.integers(2, 400),
       d=st.integers(2, 96), seed=st.integers(0, 10**6), eps=st.sampled_from([1e-7, 1e-5, 1e-3, 1e-1]),
       tile=st.integers(2, 300), absolute=st.booleans(), dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_certified_search_is_the_fp32_search(kind, m, d, seed, eps, tile, absolute, dtype):
    Wn = _adversarial(kind, m, d, seed, eps)
    assert torch.equal(certified_search(Wn, tile, absolute, dtype), _reference_search(Wn, tile, absolute))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(4, 120), d=st.integers(2, 16), seed=st.integers(0, 10**6), zero=st.booleans(),
       absolute=st.booleans(), search=st.sampled_from(["auto", "fp32", "bf16", "fp16"]))
def test_every_search_gives_the_same_penalty_and_gradient(m, d, seed, zero, absolute, search):
    "Same neighbours, so the same loss and gradient bit for bit, zero rows (Eq. 3's guard) included."
    W = torch.randn(m, d, generator=torch.Generator().manual_seed(seed))
    if zero: W[1] = 0
    chunks = random_partition(m, max(2, (m + 1) // 2), torch.Generator().manual_seed(seed))   # two chunks of 2+
    W1, W2 = W.clone().requires_grad_(), W.clone().requires_grad_()
    a = chunked_penalty(W1, chunks=chunks, tile=16, absolute=absolute, search=search)
    b = chunked_penalty(W2, chunks=chunks, tile=16, absolute=absolute, search="fp32")
    a.backward(); b.backward()
    assert torch.equal(a, b) and torch.equal(W1.grad, W2.grad)


def test_guarded_rows_take_the_guarded_search_whatever_is_asked():
    W = torch.randn(50, 8); W[3] = 1e-6
    want = cosine_matrix(W, W).fill_diagonal_(float("-inf")).argmax(1)
    for s in ("auto", "fp32", "bf16", "fp16"): assert torch.equal(nearest_neighbours(W, tile=7, search=s), want)


def test_trained_like_decoder_with_many_candidates():
    "A decoder the penalty has flattened (many neighbours at nearly the same cosine): still the fp32 search's answer."
    W = torch.nn.Parameter(torch.randn(1500, 24, generator=torch.Generator().manual_seed(0)))
    opt = torch.optim.Adam([W], lr=0.02)
    for _ in range(150):
        opt.zero_grad(); chunked_penalty(W, chunk_size=1500, search="fp32").backward(); opt.step()
    Wn = torch.nn.functional.normalize(W.detach(), dim=1)
    stats = {}
    assert torch.equal(certified_search(Wn, 256, False, torch.bfloat16, stats), _reference_search(Wn, 256, False))
    assert stats["pairs"] > 3 * stats["rows"]                           # the case the certificate finds hard


def test_search_dtype_choices():
    assert search_dtype("fp32", "cpu", 10**6) is None and search_dtype("bf16", "cpu", 2) is torch.bfloat16
    assert search_dtype("auto", "cpu", 100) is None                     # too small to pay
    with pytest.raises(ValueError, match="search='tf32'"): search_dtype("tf32", "cpu", 100)
    with pytest.raises(ValueError, match="search='x'"): OrtSAE(8, 16, k=2, search="x")
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")                    # fp32 products are not fp32 any more
        assert search_dtype("auto", "cpu", 10**6) is None
    finally: torch.set_float32_matmul_precision(old)


def test_small_gathered_products_are_not_trusted():
    "A review's counterexample: a 3x1 product's entry depends on where the row sits (MKL); the tiles decide instead."
    g = torch.Generator().manual_seed(127); W = torch.randn(19, 96, generator=g)
    K, P = (int(torch.randint(0, 18, (1,), generator=g)) for _ in range(2))
    W[18] = W[K]; W[P] = W[K] + 1e-2 * torch.randn(96, generator=g)
    Wn = torch.nn.functional.normalize(W, dim=1)
    for dt in (torch.bfloat16, torch.float16): assert torch.equal(certified_search(Wn, 3, False, dt), _reference_search(Wn, 3, False))


def test_fp32_that_is_not_fp32_gets_no_certificate():
    "With fp32 products in bf16 (CPU 'medium'), the search the certificate must match is not fp32: it steps aside."
    Wn = torch.nn.functional.normalize(torch.randn(600, 96, generator=torch.Generator().manual_seed(0)), dim=1)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        for dt in (torch.bfloat16, torch.float16):
            assert torch.equal(certified_search(Wn, 128, False, dt), _reference_search(Wn, 128, False))
            assert torch.equal(nearest_neighbours(Wn, 128, search="bf16"), _reference_search(Wn, 128, False))
    finally: torch.set_float32_matmul_precision(old)


def test_newer_precision_settings_do_not_break_auto():
    "torch's per-backend fp32_precision settings make get_float32_matmul_precision() raise; 'auto' must still run."
    code = ("import torch; from ortsae.orthogonality import chunked_penalty; torch.backends.cuda.matmul.fp32_precision = 'tf32'; "
            "W = torch.randn(4096, 16); a = chunked_penalty(W, chunk_size=4096); b = chunked_penalty(W, chunk_size=4096, search='fp32'); "
            "assert torch.equal(a, b); print('ok')")
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-500:]


def test_degenerate_decoder_gives_up_cheaply():
    "Every pair nearly tied: too many candidates, so the certified search hands over to fp32 (same answer, bounded memory)."
    W = torch.randn(1, 24) + 1e-3 * torch.randn(3000, 24, generator=torch.Generator().manual_seed(0))
    Wn = torch.nn.functional.normalize(W, dim=1); stats = {}
    assert torch.equal(certified_search(Wn, 512, False, torch.bfloat16, stats), _reference_search(Wn, 512, False))
    assert stats["tied"] == 3000
