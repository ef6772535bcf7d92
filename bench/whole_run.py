"""Whole-run cost of the orthogonality penalty at the paper's chunking, side by side in one run.

Trains one SAE per run with `ortsae.train.train` on cached activations (data loading, scaling, AuxK, logging,
checkpointing: everything but the language model's forward pass) and compares the wall time of a BatchTopK run with
OrtSAE runs that apply the penalty every step and every 5th step (at 5x its weight, the paper's cheaper variant).
At 16,384+ latents and chunks of 8,192 the penalty splits into K = m / 8192 chunks, as in the paper (K = 8 at 65,536).
The runs alternate (BatchTopK, OrtSAE every 5th, OrtSAE every step, repeated) so that machine noise hits all alike.
Prints wall times and ratios; asserts nothing.

    python bench/whole_run.py                     # 16,384 latents, 60 steps per run, 2 repeats (about 5 minutes on 2 cores)
    python bench/whole_run.py --d-sae 65536 --steps 20
"""
import argparse, os, tempfile, time
from pathlib import Path
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shards(folder: Path, rows: int, d: int) -> str:
    "Cached activations to read (random, the model's width): the runs time the SAE side only."
    from ortsae.activations import write_shards
    g = torch.Generator().manual_seed(0)
    write_shards((torch.randn(4096, d, generator=g).half() for _ in range(rows // 4096)), folder, shard_rows=16384)
    return f"shards:{folder}"


def run(source: str, kind: str, every: int, a, out: Path) -> float:
    from ortsae.train import make_config, train
    cfg = make_config("small", source=source, saes=[kind], d_sae=a.d_sae, k=a.k, batch_size=a.batch_size, chunk_size=8192,
                      every=every, total_tokens=a.steps * a.batch_size, warmup_steps=5, log_every=10, checkpoint_every=a.steps,
                      buffer_size=4 * 16384, n_scale=4096, snapshot_every=0)
    t = time.perf_counter(); train(cfg, out, progress=False); return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-sae", type=int, default=16384, help="latents (>= 16,384 so that the penalty splits into chunks of 8,192)")
    p.add_argument("--k", type=int, default=32, help="L0")
    p.add_argument("--batch-size", type=int, default=1024, help="activations per step")
    p.add_argument("--steps", type=int, default=60, help="steps per run")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the three runs")
    a = p.parse_args()
    for name, v, lo in (("--d-sae", a.d_sae, 8192), ("--k", a.k, 1), ("--batch-size", a.batch_size, 1), ("--steps", a.steps, 10), ("--repeats", a.repeats, 1)):
        if v < lo: p.error(f"{name} must be at least {lo} (got {v})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d_sae {a.d_sae:,} (K = {max(1, a.d_sae // 8192)} chunks), "
          f"k {a.k}, batch {a.batch_size}, {a.steps} steps per run")
    times = {"batchtopk": [], "ortsae every 5th": [], "ortsae every step": []}
    with tempfile.TemporaryDirectory() as d:
        src = shards(Path(d) / "acts", (a.steps + 8) * a.batch_size + 4 * 16384, 576)
        for r in range(a.repeats):
            for label, kind, every in (("batchtopk", "batchtopk", 1), ("ortsae every 5th", "ortsae", 5), ("ortsae every step", "ortsae", 1)):
                times[label].append(run(src, kind, every, a, Path(d) / f"{label}-{r}".replace(" ", "_")))
    base = min(times["batchtopk"])
    for label, v in times.items():
        print(f"{label:18s} best of {a.repeats}: {min(v):6.1f} s for {a.steps} steps  ->  {min(v) / base:.2f}x BatchTopK's whole run")


if __name__ == "__main__":
    main()
