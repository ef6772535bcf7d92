"""ortsae's SynthWorld against SAELens' SyntheticModel (SynthSAEBench) on the same recipe, and ortsae's ground-truth
metrics against SAELens' own evaluators on the same SAEs and samples, side by side.

1. Statistics: the same recipe built by SAELens (`SyntheticModelConfig` with Zipfian probabilities, a hierarchy with
   mutually exclusive siblings and compensated probabilities, a rank-25 correlation, the orthogonalised dictionary, the
   recipe's magnitudes and bias) and by `ortsae.synthetic.make_world`. Each side draws its own random dictionary and
   correlations, so the two agree within sampling error, not exactly: the table shows both, and the difference in
   standard errors where one applies.
2. Evaluators: SAEs trained briefly by ortsae on ortsae's world (plus a random one), scored on the same held-out
   samples by SAELens' `mean_correlation_coefficient`, `feature_uniqueness`, `compute_classification_metrics`,
   `DeadLatentsCalculator`, `ShrinkageCalculator`, `ExplainedVarianceCalculator` and by ortsae's `world_metrics`.

SAELens needs transformer-lens < 4, so this runs in the second virtual environment of `.ci/test-tl3` (ortsae is
installed there too); it builds it on first use (a few minutes) and re-runs itself there.

    python bench/vs_synthsaebench.py                 # the CPU world (4,096 features in 192 dims), ~2 min
    python bench/vs_synthsaebench.py --world synthsaebench-16k --no-ortho   # the 16k recipe's sampling (no orthogonalisation: 10 min on CPU)
Prints tables and writes .bench/vs_synthsaebench.json; exits 1 if an evaluator disagrees by more than 1e-4 or a
rate, the mean L0 or the child-given-parent rate differs by more than 4 standard errors.
"""
import argparse, json, math, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".ci" / "venv-tl3"


def in_venv():
    "Re-run this script in the tl3 virtual environment (building it first) unless SAELens imports here."
    try:
        import sae_lens.synthetic  # noqa: F401
        return
    except ImportError:
        pass
    py = VENV / "bin" / "python"
    if not (VENV / ".complete").exists():
        print(f"building {VENV} (SAELens needs transformer-lens < 4; once, a few minutes)", flush=True)
        subprocess.run(["bash", "-c", "set -e; V=.ci/venv-tl3; rm -rf $V; python -m venv $V; "
                        "$V/bin/pip install -q -c .ci/constraints-tl3.txt torch==2.13.0; "
                        "$V/bin/pip install -q -c .ci/constraints-tl3.txt -e '.[dev,offline]' sae-lens; touch $V/.complete"],
                       cwd=ROOT, check=True)
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def saelens_world(recipe: dict, seed: int, ortho: bool):
    "SAELens' SyntheticModel built from the same recipe as ortsae's SynthWorld."
    from sae_lens.synthetic import (SyntheticModel, SyntheticModelConfig, ZipfianFiringProbabilityConfig, HierarchyConfig,
                                    OrthogonalizationConfig, LowRankCorrelationConfig)
    from sae_lens.synthetic.firing_magnitudes import LinearMagnitudeConfig, FoldedNormalMagnitudeConfig
    r = recipe
    cfg = SyntheticModelConfig(
        num_features=r["n_features"], hidden_dim=r["d"],
        firing_probability=ZipfianFiringProbabilityConfig(exponent=r["exponent"], max_prob=r["p_max"], min_prob=r["p_min"]),
        hierarchy=HierarchyConfig(total_root_nodes=r["n_roots"], branching_factor=r["branching"], max_depth=r["depth"],
                                  mutually_exclusive_portion=1.0, compensate_probabilities=True,
                                  scale_children_by_parent=r["scale_children"]),
        orthogonalization=OrthogonalizationConfig(num_steps=r["ortho_steps"], lr=r["ortho_lr"]) if ortho else None,
        correlation=LowRankCorrelationConfig(rank=r["corr_rank"], correlation_scale=r["corr_scale"]),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=r["magnitude"][0], end=r["magnitude"][1]),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=r["magnitude_std"][0], std=r["magnitude_std"][1]),
        bias=r["bias"], seed=seed)
    return SyntheticModel(cfg)


def tree_counts(roots) -> dict:
    "Features in trees, parents with children, sibling groups and leaves of SAELens' hierarchy."
    n = parents = leaves = 0
    stack = list(roots)
    while stack:
        node = stack.pop(); n += 1
        if node.children: parents += 1; stack += node.children
        else: leaves += 1
    return dict(in_trees=n, parents=parents, leaves=leaves)


def statistics(a, parent_of, D, factor, roots) -> dict:
    "The statistics compared: L0, firing curve by rank bins, overlap, sibling and parent-child co-firing, correlated pairs."
    import torch
    from ortsae.synthetic import max_overlap
    on = a > 0
    rate = on.float().mean(0)
    n, N = on.shape
    edges = [0, 8, 32, 128, 512, 2048, 8192, N]
    bins = {f"rate {lo}-{min(hi, N)}": rate[lo:hi].mean().item() for lo, hi in zip(edges, edges[1:]) if lo < N}
    kid = (parent_of >= 0).nonzero().squeeze(1)
    par = parent_of[kid]
    both = (on[:, kid] & on[:, par]).float().sum(0); p_on = on[:, par].float().sum(0)
    child_given_parent = (both / p_on.clamp_min(1))[p_on > 50].mean().item()
    orphans = (on[:, kid] & ~on[:, par]).sum().item()
    sib_pairs = 0
    for p in torch.unique(par)[:2000].tolist():
        s = kid[par == p]
        sib_pairs += ((on[:, s].sum(1) > 1)).sum().item()
    # correlated firing: among the roots (frequent, never gated), the 50 pairs with the largest and the smallest implied
    # correlation f_i . f_j of the low-rank factor; lift = P(both fire) / (p_i p_j), 1 for independent features
    C = factor[roots] @ factor[roots].T; C.fill_diagonal_(float("nan"))
    flat = C.flatten()
    lifts = {}
    for name, idx in (("most", flat.nan_to_num(-9).topk(50).indices), ("least", flat.nan_to_num(9).topk(50, largest=False).indices)):
        i, j = roots[idx // len(roots)], roots[idx % len(roots)]
        lifts[name] = ((on[:, i] & on[:, j]).float().mean(0) / (rate[i] * rate[j])).mean().item()
    return dict(mean_l0=on.sum(1).float().mean().item(), sd_l0=on.sum(1).float().std().item(), **bins, overlap=max_overlap(D),
                child_given_parent=child_given_parent, orphan_children=orphans, siblings_together=sib_pairs,
                lift_50_most_correlated_roots=lifts["most"], lift_50_least_correlated_roots=lifts["least"])


def compare_worlds(name: str, n: int, ortho: bool) -> dict:
    import torch
    from ortsae.synthetic import WORLDS, SynthWorld, make_world
    recipe = {**{k: v.default for k, v in __import__("inspect").signature(SynthWorld).parameters.items()}, **WORLDS[name]}
    if not ortho: recipe["ortho_steps"] = 0
    torch.manual_seed(0)
    sl = saelens_world(recipe, seed=1, ortho=ortho)
    ow = make_world(name, seed=1, **({} if ortho else {"ortho_steps": 0}))
    a_sl = torch.cat([sl.sample_with_features(4096)[1] for _ in range(n // 4096)])
    a_ow = torch.cat([ow.codes(4096, torch.Generator().manual_seed(i)) for i in range(n // 4096)])
    par_sl = torch.full((recipe["n_features"],), -1)
    stack = [(r, -1) for r in sl.hierarchy.roots]
    while stack:
        node, p = stack.pop(); par_sl[node.feature_index] = p
        stack += [(c, node.feature_index) for c in node.children]
    roots = torch.arange(recipe["n_roots"])
    cm = sl.correlation_matrix
    s_sl = statistics(a_sl, par_sl, sl.feature_dict.feature_vectors.data, cm.correlation_factor, roots)
    s_ow = statistics(a_ow, ow.parent, ow.D, ow.corr, roots)
    counts_sl = tree_counts(sl.hierarchy.roots)
    counts_ow = dict(in_trees=int((ow.level >= 0).sum()), parents=int(sum(len(g) for g in ow.groups)),
                     leaves=int((ow.level == recipe["depth"]).sum()))
    return dict(world=name, samples=n, saelens={**s_sl, **counts_sl}, ortsae={**s_ow, **counts_ow}), ow


def evaluators(world, steps: int) -> list[dict]:
    "SAELens' evaluators and ortsae's world_metrics on the same SAEs and samples."
    import torch
    from sae_lens.synthetic.evals import (mean_correlation_coefficient, feature_uniqueness, compute_classification_metrics,
                                          DeadLatentsCalculator, ShrinkageCalculator, L0Calculator)
    from sae_lens.evals import ExplainedVarianceCalculator
    from ortsae.synthetic import world_metrics
    from ortsae.sae import BatchTopKSAE, MatryoshkaSAE
    from ortsae.orthogonality import OrtSAE
    from ortsae.metrics import calibrate_threshold
    x, c = world.sample(16384, torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(0)
    pool = [world.sample(1024, g)[0] for _ in range(min(steps, 40))]     # training batches, cycled (sampling is the slow part)
    rows = []
    for name, cls in [("random BatchTopK", BatchTopKSAE), ("BatchTopK", BatchTopKSAE), ("Matryoshka", MatryoshkaSAE), ("OrtSAE", OrtSAE)]:
        sae = cls(world.d, 1024, k=6, seed=0); sae.init_b_dec(x[:4096])
        if name.startswith("random"): calibrate_threshold(sae, x[:4096])
        else:
            opt = torch.optim.Adam(sae.parameters(), lr=2e-3)
            for i in range(steps):
                out = sae.loss(pool[i % len(pool)]); opt.zero_grad(); out["loss"].backward()
                sae.remove_parallel_grad(); opt.step(); sae.normalize_decoder()
        ours = world_metrics(sae, world, x, c)
        with torch.no_grad():
            sae.eval(); acts = sae.encode(x); xh = sae.decode(acts)
            dead, shr, ev, l0 = DeadLatentsCalculator(1024), ShrinkageCalculator(), ExplainedVarianceCalculator(), L0Calculator()
            dead.add_batch(acts); shr.add_batch(xh, x); ev.add_batch(xh, x); l0.add_batch(acts)
            cls_ = compute_classification_metrics(acts, c, sae.W_dec, world.D)
            theirs = dict(mcc=mean_correlation_coefficient(sae.W_dec, world.D), uniqueness=feature_uniqueness(sae.W_dec, world.D),
                          precision=cls_.precision, recall=cls_.recall, f1=cls_.f1_score, dead=dead.compute() / 1024,
                          shrinkage=shr.compute(), ev=ev.compute(), l0=l0.compute())
        rows.append(dict(sae=name, ortsae={k: ours[k] for k in theirs}, saelens=theirs))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="cpu", help="a name from ortsae.synthetic.WORLDS (default: cpu)")
    ap.add_argument("--samples", type=int, default=65536, help="samples per world for the statistics (default 65,536; >= 4,096)")
    ap.add_argument("--no-ortho", action="store_true", help="skip the dictionary's orthogonalisation on both sides (the 16k world's takes ~10 min on CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: polite beside other jobs; >= 1)")
    ap.add_argument("--steps", type=int, default=300, help="training steps of the SAEs scored by both evaluators (default 300; >= 0)")
    args = ap.parse_args()
    if args.samples < 4096: ap.error(f"--samples {args.samples}: use at least 4096")
    if args.steps < 0: ap.error(f"--steps {args.steps}: use a count >= 0")
    if args.threads < 1: ap.error(f"--threads {args.threads}: use at least 1")
    in_venv()
    import torch
    torch.set_num_threads(args.threads)
    stats, world = compare_worlds(args.world, args.samples, not args.no_ortho)
    n = stats["samples"]
    print(f"\n## {args.world}: SAELens SyntheticModel vs ortsae SynthWorld, {n:,} samples each\n")
    print("| statistic | SAELens | ortsae | difference / s.e. |\n|---|---|---|---|")
    far = []
    for k in stats["saelens"]:
        a, b = stats["saelens"][k], stats["ortsae"][k]
        z = None
        if k.startswith("rate") or k == "child_given_parent":     # a Bernoulli rate's standard error (generous for bin means)
            z = (b - a) / max(math.sqrt((a * (1 - a) + b * (1 - b)) / n), 1e-12)
        if k == "mean_l0": z = (b - a) / math.sqrt((stats["saelens"]["sd_l0"] ** 2 + stats["ortsae"]["sd_l0"] ** 2) / n)
        if z is not None and abs(z) > 4: far.append(k)
        print(f"| {k} | {a:.4g} | {b:.4g} | {'' if z is None else f'{z:+.1f}'} |")
    print(f"\nstatistics more than 4 standard errors apart: {far or 'none'}")
    rows = evaluators(world, args.steps)
    print(f"\n## The same SAEs and {16384:,} samples, scored by SAELens' evaluators and by ortsae's world_metrics\n")
    keys = list(rows[0]["saelens"])
    print("| SAE | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    worst = 0.0
    for r in rows:
        print(f"| {r['sae']} (SAELens) | " + " | ".join(f"{r['saelens'][k]:.4f}" for k in keys) + " |")
        print(f"| {r['sae']} (ortsae) | " + " | ".join(f"{r['ortsae'][k]:.4f}" for k in keys) + " |")
        worst = max(worst, max(abs(r["saelens"][k] - r["ortsae"][k]) for k in keys))
    print(f"\nlargest difference between the evaluators: {worst:.2e}")
    out = ROOT / ".bench"; out.mkdir(exist_ok=True)
    (out / "vs_synthsaebench.json").write_text(json.dumps(dict(stats=stats, evaluators=rows, worst=worst), indent=1))
    sys.exit(0 if worst <= 1e-4 and not far else 1)


if __name__ == "__main__":
    main()
