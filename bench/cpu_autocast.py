"""bf16 autocast on a CPU (`cpu_autocast=True`) against fp32: speed and results, side by side in one run.

Trains BatchTopK and OrtSAE with `ortsae.train.train` from cached synthetic activations (sparse sums of `--active` of
`--features` random unit directions plus noise, SmolLM2-135M's width; by default half as many directions as latents,
so the SAEs can learn them and the comparison is between SAEs that work), once in fp32 and once under bf16 autocast, from the same seed, the runs
alternating so that machine noise hits both alike. Then scores each SAE on held-out rows: explained variance, L0,
dead latents (the run's last log) and MeanCosSim (mean nearest-neighbour cosine of the decoder), and prints the
differences beside the tolerances below. Prints; asserts nothing.

    python bench/cpu_autocast.py              # 8,192 latents, 300 steps of 2,048 per run (about 6 minutes on 2 cores)
    python bench/cpu_autocast.py --steps 100  # quicker

Tolerances (absolute differences, bf16 - fp32): EV 0.01, L0 1% of k, dead fraction 0.01, MeanCosSim 0.01.
"""
import argparse, json, os, tempfile, time
from pathlib import Path
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOL = {"ev": 0.01, "l0": None, "dead": 0.01, "mean_cos_sim": 0.01}    # l0: 1% of k


def synthetic(n, d, n_feat, active, seed, chunk=4096):
    "Chunks of sparse sums of `active` of `n_feat` random unit directions (exponential magnitudes), plus 5% noise."
    g = torch.Generator().manual_seed(seed)
    F = torch.nn.functional.normalize(torch.randn(n_feat, d, generator=torch.Generator().manual_seed(0)), dim=1)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        idx, mag = torch.randint(0, n_feat, (m, active), generator=g), torch.empty(m, active).exponential_(generator=g)
        x = (mag[..., None] * F[idx]).sum(1)
        yield x + 0.05 * x.norm(dim=1, keepdim=True).mean() / d ** 0.5 * torch.randn(m, d, generator=g)


def run(source, amp, a, out):
    from ortsae.train import make_config, train
    cfg = make_config("small", source=source, saes=["batchtopk", "ortsae"], d_sae=a.d_sae, k=a.k, batch_size=a.batch_size,
                      chunk_size=8192, total_tokens=a.steps * a.batch_size, warmup_steps=20, log_every=20,
                      checkpoint_every=a.steps, buffer_size=4 * 16384, n_scale=4096, snapshot_every=0, cpu_autocast=amp,
                      train_shards=a.train_shards)
    train(cfg, out, progress=False)
    return json.loads((out / "summary.json").read_text())


def scores(folder, held, kind, summary):
    import ortsae.orthogonality  # registers OrtSAE for load_sae
    from ortsae.sae import load_sae
    from ortsae.geometry import mean_cos_sim
    sae = load_sae(folder / "saes" / kind)
    with torch.no_grad():
        f = sae.encode(held); x_hat = sae.decode(f)
    ev = 1 - (held - x_hat).pow(2).sum(-1).mean() / (held - held.mean(0)).pow(2).sum(-1).mean()
    return {"ev": ev.item(), "l0": (f != 0).float().sum(-1).mean().item(), "dead": summary["saes"][kind]["dead"],
            "mean_cos_sim": mean_cos_sim(sae.W_dec.detach())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-sae", type=int, default=8192, help="latents")
    p.add_argument("--k", type=int, default=32, help="L0")
    p.add_argument("--batch-size", type=int, default=2048, help="activations per step")
    p.add_argument("--steps", type=int, default=300, help="steps per run")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the two runs (times: the mean)")
    p.add_argument("--features", type=int, default=None, help="directions in the synthetic stream (default: half of --d-sae)")
    p.add_argument("--active", type=int, default=16, help="directions active in each activation")
    a = p.parse_args()
    a.features = a.features or a.d_sae // 2
    for name, v, lo in (("--d-sae", a.d_sae, 16), ("--k", a.k, 1), ("--batch-size", a.batch_size, 16), ("--steps", a.steps, 20),
                        ("--repeats", a.repeats, 1), ("--features", a.features, 1), ("--active", a.active, 1)):
        if v < lo: p.error(f"{name} must be at least {lo} (got {v})")
    cpu = getattr(torch, "cpu", None)
    units = [f for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported") if getattr(cpu, f, lambda: False)()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; bf16 units: {', '.join(u[4:-10] for u in units) or 'none'}; "
          f"d_sae {a.d_sae:,}, k {a.k}, batch {a.batch_size:,}, {a.steps} steps per run; stream: {a.active} of {a.features:,} directions")
    from ortsae.activations import write_shards
    rows = a.steps * a.batch_size
    with tempfile.TemporaryDirectory() as d:
        shard = 16384
        a.train_shards = -(-rows // shard)
        write_shards((x.half() for x in synthetic((a.train_shards + 1) * shard, 576, a.features, a.active, seed=1)), Path(d) / "acts", shard_rows=shard)
        held = torch.cat(list(synthetic(16384, 576, a.features, a.active, seed=2)))   # the same directions, other draws
        times, res = {False: [], True: []}, {}
        for r in range(a.repeats):
            for amp in (False, True):
                out = Path(d) / f"run-{amp}-{r}"
                t = time.perf_counter(); summary = run(f"shards:{Path(d) / 'acts'}", amp, a, out); times[amp].append(summary["sae_seconds"])
                if r == 0: res[amp] = {k: scores(out, held, k, summary) for k in ("batchtopk", "ortsae")}
    print(f"\n{'SAE':<10} {'fp32 s/step':>12} {'bf16 s/step':>12} {'speed-up':>9}")
    for k in ("batchtopk", "ortsae"):
        f32 = sum(t[k] for t in times[False]) / a.repeats / a.steps; b16 = sum(t[k] for t in times[True]) / a.repeats / a.steps
        print(f"{k:<10} {f32:>12.3f} {b16:>12.3f} {f32 / b16:>8.2f}x")
    print(f"\n{'SAE':<10} {'metric':<13} {'fp32':>9} {'bf16':>9} {'diff':>9} {'tolerance':>9}  within")
    for k in ("batchtopk", "ortsae"):
        for m, tol in TOL.items():
            tol = 0.01 * a.k if tol is None else tol
            x, y = res[False][k][m], res[True][k][m]
            print(f"{k:<10} {m:<13} {x:>9.4f} {y:>9.4f} {y - x:>+9.4f} {tol:>9.4f}  {abs(y - x) <= tol}")


if __name__ == "__main__":
    main()
