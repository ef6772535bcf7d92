"""The orthogonality penalty's nearest-neighbour search with 1,024-row tiles against one tile per chunk, side by side.

On a GPU one chunk's whole Gram matrix fits (8192^2 fp32 = 256 MiB): is one product per chunk faster than 1,024-row
tiles (`chunked_penalty`'s default)? This prints seconds per penalty (forward and backward) for both tile sizes,
measured alternately in one run, and their ratio. Measured: an H200 at m 65,536, d 2,304, chunk 8,192, fp32: 0.0576 s
with tiles, 0.0601 s whole (1.04x); CPU at m 16,384, d 256, chunk 4,096: 0.399 s vs 0.461 s (1.16x). The tiles stay.

    python bench/tiles.py                              # m 16,384, chunk 4,096 on CPU; m 65,536, chunk 8,192 on a GPU
    python bench/tiles.py --m 65536 --chunk 8192 --d 2304
"""
import argparse, time
import torch
from ortsae.orthogonality import chunked_penalty


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device to measure on")
    p.add_argument("--m", type=int, default=None, help="decoder rows (default 65,536 on a GPU, 16,384 on CPU)")
    p.add_argument("--d", type=int, default=None, help="decoder width (default 2,304 on a GPU, 256 on CPU)")
    p.add_argument("--chunk", type=int, default=None, help="chunk size (default 8,192 on a GPU, 4,096 on CPU)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of each tile size (alternating)")
    a = p.parse_args()
    gpu = a.device.startswith("cuda")
    m, d, chunk = a.m or (65536 if gpu else 16384), a.d or (2304 if gpu else 256), a.chunk or (8192 if gpu else 4096)
    W = torch.randn(m, d, device=a.device, generator=torch.Generator(device=a.device).manual_seed(0)).requires_grad_()
    sync = (lambda: torch.cuda.synchronize()) if gpu else (lambda: None)
    def once(tile):
        g = torch.Generator().manual_seed(1); sync(); t = time.perf_counter()
        chunked_penalty(W, chunk, g, tile=tile).backward(); sync()
        return time.perf_counter() - t
    tiles = {"1024": 1024, f"whole chunk ({chunk})": chunk}
    for t in tiles.values(): once(t)                                 # warm-up
    secs = {k: [] for k in tiles}
    for _ in range(a.reps):
        for k, t in tiles.items(): secs[k].append(once(t))
    med = {k: sorted(v)[len(v) // 2] for k, v in secs.items()}
    print(f"device {a.device}, m {m}, d {d}, chunk {chunk}: median seconds per penalty (forward + backward)")
    for k, v in med.items(): print(f"  tile {k:22s} {v:.4f}")
    a_, b_ = med.values()
    print(f"  whole chunk / 1024 tiles: {b_ / a_:.2f}x the time")


if __name__ == "__main__":
    main()
