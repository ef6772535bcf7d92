"""Benchmark the orthogonality penalty and an OrtSAE training step, side by side in one run.

(a) autograd through each chunk's cosine (Gram) matrix, (b) ortsae's fast exact version (no-grad neighbour search over
the symmetric Gram's tile pairs + gathered pairs), (b1) the same with a one-sided search (every tile of rows against
the whole chunk: twice the matrix products), (c) the full pairwise penalty; then one training step (forward, loss, backward, Adam) of BatchTopK vs
OrtSAE with the penalty every step and every 5th step. Each penalty case runs in a fresh subprocess so its peak memory
(growth of the max RSS over the call) is its own. Prints times, peak memory and ratios; asserts nothing.

    python bench/penalty.py                 # m = 4k..64k at d_in 576, chunk 8192 (about 10 minutes on 2 CPU cores)
    python bench/penalty.py --quick         # smaller sizes, a minute
"""
import argparse, json, resource, subprocess, sys, time
import torch

CASE = r'''
import json, resource, sys, time, torch
from ortsae.orthogonality import chunked_penalty, chunked_penalty_autograd, full_penalty, random_partition, pair_cosines
def onesided(W, chunks, tile=1024):
    nn, wt = torch.empty(len(W), dtype=torch.long), torch.empty(len(W))
    with torch.no_grad():
        for idx in chunks:
            Wc = W.detach()[idx]; Wn = Wc / Wc.norm(dim=1, keepdim=True); out = torch.empty(len(idx), dtype=torch.long)
            for s in range(0, len(idx), tile):
                C = Wn[s:s + tile] @ Wn.T; C[torch.arange(len(C)), torch.arange(s, s + len(C))] = float("-inf")
                out[s:s + tile] = C.argmax(1)
            nn[idx], wt[idx] = idx[out], 1 / (len(chunks) * len(idx))
    return (wt * pair_cosines(W, nn).pow(2)).sum()
method, m, d, chunk, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
W = torch.nn.functional.normalize(torch.randn(m, d), dim=1).requires_grad_()
chunks = random_partition(m, chunk, torch.Generator().manual_seed(0))
fn = {"autograd": lambda: chunked_penalty_autograd(W, chunks), "fast": lambda: chunked_penalty(W, chunks=chunks),
      "onesided": lambda: onesided(W, chunks), "full": lambda: full_penalty(W)}[method]
small = torch.randn(64, d, requires_grad=True)                  # warm-up: load the math libraries' workspaces
{"autograd": lambda: chunked_penalty_autograd(small, random_partition(64, 32)), "fast": lambda: chunked_penalty(small, 32),
 "onesided": lambda: onesided(small, random_partition(64, 32)), "full": lambda: full_penalty(small)}[method]().backward()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(reps):
    W.grad = None
    t = time.perf_counter(); fn().backward(); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps({"s": min(times), "peak_mib": peak / 1024}))
'''


def penalty_case(method, m, d, chunk, reps):
    out = subprocess.run([sys.executable, "-c", CASE, method, str(m), str(d), str(chunk), str(reps)],
                         capture_output=True, text=True)
    if out.returncode: return {"s": float("nan"), "peak_mib": float("nan"), "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout)


def step_time(sae, B, steps, seed=0):
    "Mean seconds of a training step (forward, loss, backward, decoder projection, Adam) after one warm-up step."
    opt, g, times = torch.optim.Adam(sae.parameters(), lr=1e-4), torch.Generator().manual_seed(seed), []
    for _ in range(steps + 1):
        x = torch.randn(B, sae.d_in, generator=g)
        t = time.perf_counter()
        out = sae.loss(x); opt.zero_grad(); out["loss"].backward()
        sae.remove_parallel_grad(); opt.step(); sae.normalize_decoder()
        times.append(time.perf_counter() - t)
    return sum(times[1:]) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--full-max", type=int, default=16384, help="largest m for the O(m^2) full pairwise penalty")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--step-m", type=int, default=16384)
    p.add_argument("--step-B", type=int, default=4096)
    p.add_argument("--step-k", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed training steps (a multiple of 5)")
    p.add_argument("--quick", action="store_true", help="m up to 8192, chunk 2048, smaller training step")
    p.add_argument("--steps-only", action="store_true", help="skip the penalty table, time the training steps only")
    a = p.parse_args()
    if a.quick: a.sizes, a.chunk, a.full_max, a.step_m, a.step_B, a.steps = [2048, 4096, 8192], 2048, 8192, 4096, 1024, 10
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d_in={a.d}, chunk={a.chunk}")
    print(f"{'m':>6} | {'(a) autograd s':>14} {'MiB':>7} | {'(b) fast s':>10} {'MiB':>7} | {'(b1) 1-sided s':>14} |"
          f" {'(c) full s':>10} {'MiB':>7} | {'a/b time':>8} {'a/b mem':>8} {'b1/b':>6}")
    for m in ([] if a.steps_only else a.sizes):
        chunk = min(a.chunk, m)
        ra, rb = penalty_case("autograd", m, a.d, chunk, a.reps), penalty_case("fast", m, a.d, chunk, a.reps)
        r1 = penalty_case("onesided", m, a.d, chunk, a.reps)
        rc = penalty_case("full", m, a.d, m, 1) if m <= a.full_max else {"s": float("nan"), "peak_mib": float("nan")}
        print(f"{m:>6} | {ra['s']:>14.2f} {ra['peak_mib']:>7.0f} | {rb['s']:>10.2f} {rb['peak_mib']:>7.0f} | {r1['s']:>14.2f} | "
              f"{rc['s']:>10.2f} {rc['peak_mib']:>7.0f} | {ra['s'] / rb['s']:>7.1f}x {ra['peak_mib'] / max(rb['peak_mib'], 1):>7.1f}x"
              f" {r1['s'] / rb['s']:>5.2f}x", flush=True)
    from ortsae.sae import BatchTopKSAE
    from ortsae.orthogonality import OrtSAE
    kw = dict(d_in=a.d, d_sae=a.step_m, k=a.step_k, seed=0)
    chunk = min(a.chunk, a.step_m)
    print(f"\ntraining step, d_in={a.d}, m={a.step_m}, B={a.step_B}, k={a.step_k}, chunk={chunk} (mean of {a.steps} steps)")
    t_base = step_time(BatchTopKSAE(**kw), a.step_B, a.steps)
    t_ort1 = step_time(OrtSAE(**kw, chunk_size=chunk, every=1), a.step_B, a.steps)
    t_ort5 = step_time(OrtSAE(**kw, chunk_size=chunk, every=5), a.step_B, a.steps)
    print(f"BatchTopK {t_base:.2f} s | OrtSAE every step {t_ort1:.2f} s ({t_ort1 / t_base:.2f}x) | "
          f"OrtSAE every 5th {t_ort5:.2f} s ({t_ort5 / t_base:.2f}x)")


if __name__ == "__main__":
    main()
