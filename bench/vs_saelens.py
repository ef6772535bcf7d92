"""ortsae's training step against SAELens' BatchTopK step, on identical activations, side by side in one run.

SAELens needs transformer-lens < 4, so it can't live in ortsae's environment: the first run builds a separate virtual
environment in `.bench/saelens-venv` (torch pinned to the same version as here, sae-lens pinned) and times SAELens
there, in a subprocess. Each timing runs in a fresh subprocess on the same saved activations, and the rounds
alternate between the two libraries so that a noisy neighbour hurts both alike. Prints activations/s and ratios;
asserts nothing.

    python bench/vs_saelens.py                 # d_in 576, d_sae 16384, B 4096, k 64, 6 timed steps, 2 rounds
    python bench/vs_saelens.py --quick         # a smaller shape, to check that everything runs
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".bench" / "saelens-venv"
SAE_LENS = "sae-lens==6.54.12"


def ensure_venv():
    "The SAELens environment's python, built on first use."
    py = VENV / "bin" / "python"
    if not py.exists():
        import torch
        print(f"building {VENV} (torch {torch.__version__.split('+')[0]}, {SAE_LENS}); a few minutes, once", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pin = f"torch=={torch.__version__.split('+')[0]}"
        subprocess.run([str(py), "-m", "pip", "install", "-q", pin], check=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as c: c.write(pin + "\n")
        subprocess.run([str(py), "-m", "pip", "install", "-q", SAE_LENS, "-c", c.name], check=True)
    return str(py)


def worker(lib, acts, steps, every):
    "Time `steps` training steps (after one warm-up) of one SAE; print activations/s as JSON."
    import torch
    xs = torch.load(acts); d_in, B = xs.shape[-1], xs.shape[1]
    d_sae, k = json.loads(os.environ["BENCH_SHAPE"])
    if lib == "saelens":
        from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, aux_loss_coefficient=1 / 32,
                                                              device="cpu", dtype="float32"))
        dead = torch.zeros(d_sae, dtype=torch.bool)
        loss = lambda x, i: sae.training_forward_pass(TrainStepInput(x, {}, dead, i, False)).loss
        after = lambda: None
    else:
        from ortsae.sae import BatchTopKSAE
        from ortsae.orthogonality import OrtSAE
        sae = (BatchTopKSAE(d_in, d_sae, k=k) if every == 0 else OrtSAE(d_in, d_sae, k=k, every=every))
        loss = lambda x, i: sae.loss(x)["loss"]
        after = sae.normalize_decoder
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    for i, x in enumerate(xs[: steps + 1]):
        if i == 1: t = time.perf_counter()
        opt.zero_grad(); loss(x, i).backward()
        if lib == "ortsae": sae.remove_parallel_grad()
        opt.step(); after()
    print(json.dumps(steps * B / (time.perf_counter() - t)))


def run(py, lib, acts, steps, every, shape):
    env = {**os.environ, "BENCH_SHAPE": json.dumps(shape), "PYTHONPATH": str(ROOT) if lib == "ortsae" else ""}
    out = subprocess.run([py, __file__, "--worker", lib, "--acts", acts, "--steps", str(steps), "--every", str(every)],
                         env=env, capture_output=True, text=True)
    if out.returncode: raise RuntimeError(f"{lib} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="d_sae 4096, B 1024, k 32, 5 steps, 1 round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (every=5 needs a multiple of 5)")
    p.add_argument("--worker"); p.add_argument("--acts"); p.add_argument("--every", type=int, default=0)
    a = p.parse_args()
    if a.worker: return worker(a.worker, a.acts, a.steps, a.every)
    import torch
    d_in, (d_sae, k, B, steps, rounds) = 576, ((4096, 32, 1024, 5, 1) if a.quick else (16384, 64, 4096, a.steps, a.rounds))
    py = ensure_venv()
    with tempfile.TemporaryDirectory() as tmp:
        acts = f"{tmp}/acts.pt"
        torch.save(torch.randn(steps + 1, B, d_in, generator=torch.Generator().manual_seed(0)), acts)
        cases = {"SAELens BatchTopK": (py, "saelens", 0), "ortsae BatchTopK": (sys.executable, "ortsae", 0),
                 "ortsae OrtSAE, penalty every step": (sys.executable, "ortsae", 1),
                 "ortsae OrtSAE, penalty every 5th step": (sys.executable, "ortsae", 5)}
        res = {name: [] for name in cases}
        for r in range(rounds):
            for name, (exe, lib, every) in cases.items():
                res[name].append(run(exe, lib, acts, steps, every, [d_sae, k]))
                print(f"round {r + 1}: {name:40s} {res[name][-1]:8,.0f} activations/s", flush=True)
    mean = {n: sum(v) / len(v) for n, v in res.items()}
    print(f"\nd_in {d_in}, d_sae {d_sae}, B {B}, k {k}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"mean of {rounds} round(s) x {steps} steps")
    for n, v in mean.items(): print(f"  {n:40s} {v:8,.0f} activations/s")
    base = mean["ortsae BatchTopK"]
    print(f"ortsae BatchTopK / SAELens BatchTopK: {base / mean['SAELens BatchTopK']:.2f}x faster (target >= 3x)")
    print(f"OrtSAE every step: {base / mean['ortsae OrtSAE, penalty every step']:.2f}x ortsae BatchTopK's step time "
          f"(target <= 2x)")
    print(f"OrtSAE every 5th step: {base / mean['ortsae OrtSAE, penalty every 5th step']:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
