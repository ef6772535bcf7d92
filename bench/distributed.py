"""The orthogonality penalty split across data-parallel ranks: its time per rank at 1 vs 2 ranks (gloo, CPU).

Every rank draws the same random partition and computes the penalty (forward + backward) for its share of the chunks,
then the gradient of the decoder is all-reduced, as in `ortsae.distributed`. Each rank uses one thread, so on a
2-core machine the 2-rank case is not starved. Prints seconds per rank and the ratio; asserts nothing.

    python bench/distributed.py            # m 16384, d_in 576, chunk 2048 (8 chunks), 5 repetitions
    python bench/distributed.py --quick    # m 4096, chunk 512
"""
import argparse, os, tempfile, time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world, folder, m, d, chunk, reps, out):
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from ortsae.orthogonality import chunked_penalty
    W = torch.nn.functional.normalize(torch.randn(m, d, generator=torch.Generator().manual_seed(0)), dim=1).requires_grad_()
    g = torch.Generator().manual_seed(1)
    times, comm = [], []
    for r in range(reps + 1):
        dist.barrier(); t = time.perf_counter()
        p = chunked_penalty(W, chunk, g, shard=(rank, world)); W.grad = None; p.backward()
        t1 = time.perf_counter()
        dist.all_reduce(W.grad); dist.all_reduce(p.detach())
        if r: times.append(t1 - t); comm.append(time.perf_counter() - t1)
    torch.save({"penalty": sum(times) / reps, "all_reduce": sum(comm) / reps}, f"{out}/{world}-{rank}.pt")
    dist.destroy_process_group()


def measure(world, m, d, chunk, reps):
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(world, folder, m, d, chunk, reps, folder), nprocs=world, join=True)
        res = [torch.load(f"{folder}/{world}-{r}.pt") for r in range(world)]
    return max(r["penalty"] for r in res), max(r["all_reduce"] for r in res)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    m, d, chunk, reps = (4096, 576, 512, 3) if a.quick else (16384, 576, 2048, 5)
    print(f"m {m}, d_in {d}, chunk {chunk} ({m // chunk} chunks), {reps} repetitions, 1 thread per rank, gloo")
    res = {w: measure(w, m, d, chunk, reps) for w in (1, 2)}
    for w, (t, c) in res.items():
        print(f"  {w} rank(s): penalty forward+backward {t:.3f} s per rank (slowest rank), gradient all-reduce {c:.3f} s")
    print(f"penalty time per rank, 1 rank / 2 ranks: {res[1][0] / res[2][0]:.2f}x (ideal 2x)")
    print(f"bytes all-reduced per step for the decoder gradient: {4 * m * d / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
