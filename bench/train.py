"""Benchmark SAE training throughput, side by side in one run.

1. Tokens/s of one BatchTopK SAE training on cached activations (no model forward): forward, loss, backward, Adam.
2. Three SAEs (BatchTopK, Matryoshka, OrtSAE) trained in one pass of the language model vs three separate runs, each
   paying for the model's forward pass (offline SmolLM2-135M, layer 6), through `ortsae.train.train`.
Prints times and ratios; asserts nothing.

    python bench/train.py            # the issue's shape: d_in 576, d_sae 16384, k 64, B 4096 (about 10 min on 2 cores)
    python bench/train.py --quick    # smoke-sized SAEs (d_sae 2048, B 512), a few minutes
"""
import argparse, os, tempfile, time
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sae_tokens_per_s(d_in, d_sae, k, B, steps):
    from ortsae.sae import BatchTopKSAE
    sae, g = BatchTopKSAE(d_in, d_sae, k=k), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    xs = [torch.randn(B, d_in, generator=g) for _ in range(steps + 1)]   # "cached" activations, already in memory
    for i, x in enumerate(xs):
        if i == 1: t = time.perf_counter()                                # first step is warm-up
        out = sae.loss(x); opt.zero_grad(); out["loss"].backward()
        sae.remove_parallel_grad(); opt.step(); sae.normalize_decoder()
    return steps * B / (time.perf_counter() - t)


def one_vs_three(overrides, tokens):
    from ortsae.train import make_config, train
    kinds = ["batchtopk", "matryoshka", "ortsae"]
    base = dict(total_tokens=tokens, log_every=10**9, checkpoint_every=10**9, **overrides)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        train(make_config("smoke", saes=kinds, **base), f"{d}/one", progress=False)
        t_one = time.perf_counter() - t
        t = time.perf_counter()
        for k in kinds: train(make_config("smoke", saes=[k], **base), f"{d}/{k}", progress=False)
        t_three = time.perf_counter() - t
    return t_one, t_three


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    shape = dict(d_in=576, d_sae=2048, k=32, B=512, steps=20) if a.quick else dict(d_in=576, d_sae=16384, k=64, B=4096, steps=5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    tps = sae_tokens_per_s(**shape)
    print(f"1. one BatchTopK SAE on cached activations, {shape}: {tps:,.0f} tokens/s")
    for name, over, tokens in [("smoke-sized SAEs (d_sae 2048, k 32, B 512)", {}, 40_960),
                               ("issue's shape (d_sae 16384, k 64, B 4096)",
                                dict(d_sae=16384, k=64, batch_size=4096, chunk_size=8192, buffer_size=4096 * 4,
                                     n_scale=4096), 4 * 4096)][: 1 if a.quick else 2]:
        t_one, t_three = one_vs_three(over, tokens)
        print(f"2. {name}, {tokens:,} tokens with the model forward: three SAEs in one pass {t_one:.1f} s, "
              f"three separate runs {t_three:.1f} s -> one pass is {t_three / t_one:.2f}x faster")


if __name__ == "__main__":
    main()
