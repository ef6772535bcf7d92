"The SynthSAEBench-style world (chapter 11, sections 4-6): the generator's invariants, metrics on planted cases, bad input, resume and the CLI."
import json, math
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from ortsae.synthetic import (SynthWorld, make_world, forest, compensation, zipf_probabilities, check_world, tree_absorption,
                              latent_detection, mcc, world_config, world_experiment, claim_verdict, seeds_needed, detectable,
                              relative_differences, world_metrics)
from ortsae.cli import main


def _world(n_roots, branching, depth, extra, d, seed, scale_children=True):
    n = n_roots * sum(branching**l for l in range(depth + 1)) + extra
    return SynthWorld(n_features=n, d=d, n_roots=n_roots, branching=branching, depth=depth, corr_rank=4, p_max=0.3,
                      p_min=1e-3, ortho_steps=2, scale_children=scale_children, seed=seed)


@settings(max_examples=25, deadline=None)
@given(n_roots=st.integers(0, 4), branching=st.integers(2, 4), depth=st.integers(1, 3), extra=st.integers(1, 40),
       d=st.integers(4, 24), seed=st.integers(0, 10**6), scale=st.booleans())
def test_world_invariants(n_roots, branching, depth, extra, d, seed, scale):
    w = _world(n_roots, branching, depth, extra, d, seed, scale)
    x, a = w.sample(600, torch.Generator().manual_seed(seed))
    assert x.shape == (600, d) and a.shape == (600, w.N) and (a >= 0).all() and torch.isfinite(x).all()
    on, kid = a > 0, w.parent >= 0
    assert not (on[:, kid] & ~on[:, w.parent[kid]]).any()                       # no child without its parent
    for sib in w.groups: assert on[:, sib].sum(-1).max() <= 1                     # siblings exclude each other
    assert torch.allclose(x, w.scale * (a @ w.D + w.bias), atol=1e-4)
    x2, a2 = w.sample(600, torch.Generator().manual_seed(seed))
    assert torch.equal(x, x2) and torch.equal(a, a2)                              # a seed gives the same samples
    assert torch.allclose(w.D.norm(dim=1), torch.ones(w.N), atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(n_roots=st.integers(1, 30), branching=st.integers(2, 5), depth=st.integers(1, 3))
def test_forest_matches_a_breadth_first_reference(n_roots, branching, depth):
    n = n_roots * sum(branching**l for l in range(depth + 1))
    parent, level = forest(n + 3, n_roots, branching, depth)
    ref_parent, ref_level, frontier, nxt = [-1] * (n + 3), [-1] * (n + 3), list(range(n_roots)), n_roots   # plain Python
    for r in frontier: ref_level[r] = 0
    for lv in range(1, depth + 1):
        new = []
        for p in frontier:
            for _ in range(branching): ref_parent[nxt], ref_level[nxt] = p, lv; new.append(nxt); nxt += 1
        frontier = new
    assert parent.tolist() == ref_parent and level.tolist() == ref_level


@settings(max_examples=30, deadline=None)
@given(p=st.lists(st.floats(0.01, 0.5), min_size=5, max_size=5))
def test_compensation_formula(p):
    p = torch.tensor(p); parent = torch.tensor([-1, 0, 0, 0, -1])
    f = compensation(p, parent)
    for i in (1, 2, 3):
        others = sum(p[j] for j in (1, 2, 3) if j != i)
        assert math.isclose(f[i].item(), (1 + others / p[0]) / p[0], rel_tol=1e-5)
    assert f[0] == 1 and f[4] == 1


def test_zipf_endpoints_and_monotone():
    p = zipf_probabilities(1000, 0.5, 0.4, 5e-4)
    assert math.isclose(p[0].item(), 0.4, rel_tol=1e-6) and math.isclose(p[-1].item(), 5e-4, rel_tol=1e-4) and (p.diff() < 0).all()


@pytest.mark.parametrize("args, msg", [
    ((100, 8, 2, 4, 3, 0.5, 0.4, 5e-4, 4, 0.1), "need 170 features, more than n_features=100"),
    ((4096, 8, 2, 4, 3, 0.5, 0.4, 1.5, 4, 0.1), "need 0 < p_min < p_max <= 1"),
    ((4096, 8, 2, 4, 3, 0.5, 0.0, 0.0, 4, 0.1), "need 0 < p_min < p_max <= 1"),
    ((4096, 8, 2, 4, 3, float("nan"), 0.4, 5e-4, 4, 0.1), "exponent=nan must be a positive number"),
    ((4096, 8, 2, 4, 3, 0.5, 0.4, 5e-4, 30, 0.2), "correlated variance and must be in \\[0, 1\\)"),
    ((4096, 8, -1, 4, 3, 0.5, 0.4, 5e-4, 4, 0.1), "n_roots=-1"),
    ((4096, 8.5, 2, 4, 3, 0.5, 0.4, 5e-4, 4, 0.1), "d=8.5 must be a positive integer"),
])
def test_bad_worlds_are_refused(args, msg):
    with pytest.raises(ValueError, match=msg): check_world(*args)
    with pytest.raises(ValueError, match=msg): SynthWorld(*args[:8], corr_rank=args[8], corr_scale=args[9])


def test_l0_above_the_dictionary_is_refused():
    with pytest.raises(ValueError, match="L0 must be below the dictionary size"): world_config(width=64, k=64)
    with pytest.raises(ValueError, match="L0 must be below the dictionary size"): world_config(width=64, k=0)
    with pytest.raises(ValueError, match="Unknown world"): make_world("no-such-world")


def test_metrics_on_planted_cases():
    w = make_world("tiny", seed=2)
    x, a = w.sample(20_000, torch.Generator().manual_seed(0))
    ident = torch.arange(w.N)
    assert tree_absorption(a, a, ident, w)["absorption"] == 0.0                # the oracle absorbs nothing
    planted = a.clone()
    for sib in w.groups: planted[:, w.parent[sib[:, 0]]] *= ~(a[:, sib] > 0).any(-1)
    r = tree_absorption(planted, a, ident, w)
    assert r["absorption"] == 1.0 and r["miss"] == 0.0                          # silent exactly when a child is on
    assert latent_detection(a, a, w.D, w.D) == dict(precision=1.0, recall=1.0, f1=1.0)
    assert math.isclose(mcc(w.D[torch.randperm(w.N)][:100], w.D), 1.0, rel_tol=1e-6)   # a narrow, shuffled subset of the truth


def test_verdicts_and_power():
    assert seeds_needed(1.0, 1.0) == 10 and seeds_needed(1.0, 3.0) <= 4
    assert detectable(1.0, 10) == pytest.approx(1.0, abs=0.1)
    assert claim_verdict((-0.5, -0.8, -0.2), paper=-0.65) == "reproduced"
    assert claim_verdict((-0.5, -0.8, -0.2), paper=-0.65, control=False) == "not testable here"
    assert claim_verdict((0.001, -0.002, 0.004), margin=0.01).startswith("reproduced")
    d = relative_differences({"BatchTopK": [dict(a=1.0), dict(a=2.0)], "X": [dict(a=0.5), dict(a=1.0)]}, "a")["X"]
    assert d[0] == pytest.approx(-0.5) and d[1] == pytest.approx(-0.5)          # every seed halves it: no spread


def test_experiment_resumes_bit_identical(tmp_path):
    w = make_world("tiny")
    cfg = world_config(width=32, k=3, seeds=2, steps=12)
    full = world_experiment(w, cfg, tmp_path / "full", evals=3, n_eval=1024, progress=False)
    real, calls = w.sample, []
    def stop(n, g=None):
        calls.append(n)
        if len(calls) == 7: raise KeyboardInterrupt                            # after the checkpoint at step 4
        return real(n, g)
    w.sample = stop
    with pytest.raises(KeyboardInterrupt): world_experiment(w, cfg, tmp_path / "cut", evals=3, n_eval=1024, progress=False)
    w.sample = real
    assert json.loads((tmp_path / "cut" / "history.json").read_text())[-1]["step"] == 4
    resumed = world_experiment(w, cfg, tmp_path / "cut", evals=3, n_eval=1024, progress=False)
    assert json.dumps(resumed) == json.dumps(full)
    with pytest.raises(ValueError, match="belongs to a different run"):         # another config, same folder: refused
        world_experiment(w, world_config(width=32, k=3, seeds=2, steps=24), tmp_path / "cut", evals=3, n_eval=1024, progress=False)


def test_cli_synth(tmp_path, capsys):
    argv = ["synth", "--world", "tiny", "--width", "32", "--k", "3", "--seeds", "2", "--steps", "8", "--evals", "1",
            "--eval-samples", "1024", "--out", str(tmp_path), "--device", "cpu"]
    assert main(argv) == 0
    assert "Positive control" in capsys.readouterr().out and (tmp_path / "report.md").exists()
    assert main(["synth", "--steps", "-3"]) == 2                  # refused while parsing
    assert "--steps: -3: use an integer >= 1" in capsys.readouterr().err
    assert main(["synth", "--world", "tiny", "--width", "32", "--k", "40"]) == 2
    assert "L0 must be below the dictionary size" in capsys.readouterr().err
    (tmp_path / "world.json").write_text('{"world": "cpu", "seed": 0}')
    assert main(argv) == 2 and "use another folder for another world" in capsys.readouterr().err
