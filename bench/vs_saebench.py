"""ortsae's first-letter absorption against SAEBench's own code, on the same SAEs and the same words, side by side.

Both sides get identical inputs: the offline SmolLM2-135M's layer-6 residual activations at each word's token in its
in-context spelling prompt (computed once by ortsae and cached in `.bench/`), the same 80/20 train/test split, and the
same SAE folders. SAEBench runs in its own virtual environment (`bench/saebench_absorption.py` builds it on first use
and runs SAEBench's probe training, k-sparse probing and `FeatureAbsorptionCalculator` there). Each side trains its
own ground-truth letter probe (ortsae: scikit-learn logistic regression; SAEBench: its Adam-trained probe), so the
letters evaluated and the words counted per letter can differ; the table compares means over the letters both
evaluate, and per letter.

SAEBench computes a latent's contribution along the probe as activation x cos(decoder row, probe), which is in the
model's units only for unit-norm decoder rows. ortsae's saved SAEs fold the activation scale into the decoder, so
SAEBench gets an equivalent copy with unit-norm rows (encoder, bias and threshold multiplied by the row norm: the
same reconstruction, the same firing pattern). ortsae is run with SAEBench's P = x.p (`centre=False`) and with its
default P = (x - b_dec).p; with `recipe="saebench"` (SAEBench's Adam-trained probes, re-implemented); and with
SAEBench's own probe and main latents plugged in, which isolates the per-word arithmetic.

    python bench/vs_saebench.py                          # runs/smoke's SAEs plus a random SAE, 6,000 words
    python bench/vs_saebench.py --l1-batch 256           # also SAEBench with a smaller batch for its L1 probe
    python bench/vs_saebench.py --run runs/other --words 3000
    python bench/vs_saebench.py --seeds 5               # seed-to-seed spread: SAEBench and recipe='saebench', 5 seeds
Prints tables; asserts nothing.
"""
import argparse, json, os, subprocess, sys, tempfile
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".bench"
HOOK = "blocks.6.hook_resid_post"


def word_data(n_words: int) -> Path:
    "The words, their activations and labels as an npz (computed once with the offline model, then cached)."
    path = CACHE / f"absorption-words-{n_words}.npz"
    if path.exists(): return path
    from ortsae.activations import load_model
    from ortsae.metrics import letter_words, letter_activations
    lm = load_model(n_layers=7)
    words = letter_words(lm.tokenizer, n_words)
    split = int(0.8 * len(words))
    print(f"computing activations for {len(words)} words (once; cached in {path})", flush=True)
    x = letter_activations(lm, HOOK, words, words[:split])
    y = np.array([ord(w[0].lower()) - 97 for w in words], dtype=np.int64)
    CACHE.mkdir(exist_ok=True)
    np.savez(path, x=x.numpy().astype(np.float32), y=y, split=np.int64(split), words=np.array(words))
    return path


def unit_norm_copy(src: Path, dst: Path) -> Path:
    "An equivalent SAE whose decoder rows have unit norm (SAELens layout, per-latent threshold)."
    from safetensors.torch import load_file, save_file
    w = load_file(str(src / "sae_weights.safetensors"))
    n = w["W_dec"].norm(dim=1)
    w = dict(W_enc=w["W_enc"] * n, b_enc=w["b_enc"] * n, W_dec=w["W_dec"] / n[:, None], b_dec=w["b_dec"],
             threshold=w["threshold"] * n)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in w.items()}, str(dst / "sae_weights.safetensors"))
    (dst / "cfg.json").write_text((src / "cfg.json").read_text())
    return dst


def random_sae(d_in: int, d_sae: int, k: int, x: torch.Tensor, folder: Path) -> Path:
    "A random BatchTopK SAE (its initialisation) with the inference threshold set to L0 = k on `x`."
    from ortsae.sae import BatchTopKSAE
    from ortsae.metrics import calibrate_threshold
    sae = BatchTopKSAE(d_in, d_sae, k=k, seed=123).eval()
    sae.init_b_dec(x)
    calibrate_threshold(sae, x)
    return sae.save(folder)


def ortsae_side(folders: dict, npz: Path, mains: dict) -> dict:
    "ortsae's absorption per SAE: its own recipe (centre False and True), and with each SAEBench run's main latents.

    Main latents are chosen as SAEBench chooses them (`select="test"`: k by F1 on the scored words), so that the two
    sides compare like with like; ortsae's own evaluations choose them on training words (chapter 07)."""
    from ortsae.sae import load_sae
    from ortsae.metrics import letter_probes, first_letter_absorption
    d = np.load(npz)
    x, y, split = torch.from_numpy(d["x"]), torch.from_numpy(d["y"]), int(d["split"])
    data = letter_probes(x, y, split, min_probe_f1=0.6, min_letters=0)
    sb_recipe = letter_probes(x, y, split, min_probe_f1=0.6, min_letters=0, recipe="saebench")   # SAEBench's training
    out = {"letters": sorted(chr(97 + l) for l in data["letters"])}
    for name, f in folders.items():
        sae = load_sae(f)
        out[name] = {"own, P=x.p": first_letter_absorption(sae, data, centre=False, select="test"),
                     "own, P=(x-b_dec).p": first_letter_absorption(sae, data, centre=True, select="test"),
                     "recipe='saebench'": first_letter_absorption(sae, sb_recipe, centre=False, recipe="saebench", select="test")}
        for label, (m, sb_data) in mains.items():
            out[name][f"{label}'s main latents"] = first_letter_absorption(sae, data, centre=False, main=m[name])
            out[name][f"{label}'s probe + main latents"] = first_letter_absorption(sae, sb_data, centre=False, main=m[name])
    return out


def saebench_probe_data(sb: dict, npz: Path) -> dict:
    "ortsae's letter data with SAEBench's ground-truth probe (its weights, its letters) in place of ortsae's."
    d = np.load(npz)
    probe = torch.nn.Linear(d["x"].shape[1], 26).requires_grad_(False)
    probe.weight.copy_(torch.tensor(sb["probe_weight"])); probe.bias.copy_(torch.tensor(sb["probe_bias"]))
    return dict(x=torch.from_numpy(d["x"]), y=torch.from_numpy(d["y"]), split=int(d["split"]), probe=probe,
                letters=[ord(l) - 97 for l in sb["letters_evaluated"]])


def table(cols: dict, common: list[str], names: list[str]) -> str:
    "Mean absorption over the common letters per SAE (rows) and computation (columns), then per letter for the first SAE."
    w = max(len(c) for c in cols) + 2
    lines = [f"{'SAE':12s}" + "".join(f"{c:>{w}s}" for c in cols)]
    for n in names:
        vals = [np.mean([cols[c][n][l]["absorption"] for l in common if l in cols[c][n]]) for c in cols]
        lines.append(f"{n:12s}" + "".join(f"{v:>{w}.4f}" for v in vals))
    for n in names[:1]:
        lines += ["", f"{n}, per letter (words counted)"]
        for l in common:
            lines.append(f"{l:12s}" + "".join(f"{cols[c][n][l]['absorption']:>{w - 7}.3f} (n {cols[c][n][l]['n_words']:3d})"
                                               if l in cols[c][n] else f"{'-':>{w}s}" for c in cols))
    return "\n".join(lines)


def saebench(npz: Path, unit: dict, work: Path, extra: list[str]) -> dict:
    "SAEBench's own absorption eval in its venv; results keyed by SAE name."
    out = work / f"saebench{'_'.join(extra)}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "saebench_absorption.py"), "--data", str(npz), "--out", str(out),
           "--min-probe-f1", "0.6", *extra] + [a for u in unit.values() for a in ("--sae", str(u))]
    subprocess.run(cmd, check=True)
    sb = json.loads(out.read_text())
    sb["saes"] = {n: sb["saes"][str(u)] for n, u in unit.items()}
    return sb


def seed_spread(folders: dict, unit: dict, npz: Path, work: Path, n: int):
    "SAEBench and ortsae's recipe='saebench' each run with seeds 42.., mean and spread over the letters both evaluate."
    from ortsae.sae import load_sae
    from ortsae.metrics import letter_probes, first_letter_absorption
    d = np.load(npz)
    x, y, split = torch.from_numpy(d["x"]), torch.from_numpy(d["y"]), int(d["split"])
    sb, ort = {}, {}
    for s in range(42, 42 + n):
        sb[s] = saebench(npz, unit, work, ["--seed", str(s)])
        data = letter_probes(x, y, split, min_probe_f1=0.6, min_letters=0, recipe="saebench", seed=s)
        ort[s] = {name: first_letter_absorption(load_sae(f), data, centre=False, recipe="saebench", seed=s,
                                                 select="test")["letters"]
                  for name, f in folders.items()}
    common = sorted(set.intersection(*[set(r["letters_evaluated"]) for r in sb.values()],
                                     *[set(o[next(iter(folders))]) for o in ort.values()]))
    print(f"\nseed spread over seeds 42-{41 + n}, mean absorption over the {len(common)} letters every run evaluates")
    print(f"{'SAE':12s}{'SAEBench mean (sd) [min, max]':>36s}{'ortsae recipe=saebench mean (sd) [min, max]':>48s}")
    for name in folders:
        a = [np.mean([sb[s]["saes"][name]["letters"][l]["absorption"] for l in common]) for s in sb]
        b = [np.mean([ort[s][name][l]["absorption"] for l in common]) for s in ort]
        print(f"{name:12s}" + "".join(f"{np.mean(v):>14.3f} ({np.std(v, ddof=1):.3f}) [{min(v):.3f}, {max(v):.3f}]"
                                       for v in (a, b)))
        print(f"{'':12s}  per seed SAEBench {np.round(a, 3).tolist()}  ortsae {np.round(b, 3).tolist()}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/smoke", help="run folder whose saes/ are compared (train it with "
                                                       "`ortsae train --preset smoke`)")
    p.add_argument("--words", type=int, default=6000, help="vocabulary words (80%% train, 20%% test)")
    p.add_argument("--no-random", action="store_true", help="leave out the random SAE")
    p.add_argument("--l1-batch", type=int, nargs="*", default=[], help="also run SAEBench with these batch sizes for its "
                   "L1 probe on the latents (its default 4096 gives 2 steps an epoch on 4,800 words)")
    p.add_argument("--seeds", type=int, default=0, help="instead: run SAEBench and ortsae's recipe='saebench' with this "
                   "many seeds (42, 43, ...) and print each one's seed-to-seed spread")
    a = p.parse_args()
    saes = ROOT / a.run / "saes"
    if not saes.is_dir(): p.error(f"{saes} does not exist: train it first (ortsae train --preset smoke)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    npz = word_data(a.words)
    work = Path(tempfile.mkdtemp(prefix="vs_saebench_"))
    folders = {f.name: f for f in sorted(saes.iterdir()) if (f / "cfg.json").exists()}
    if not a.no_random:
        cfg = json.loads((next(iter(folders.values())) / "cfg.json").read_text())
        x = torch.from_numpy(np.load(npz)["x"])
        folders["random"] = random_sae(cfg["d_in"], cfg["d_sae"], cfg["ortsae"]["k"], x, work / "random")
    unit = {n: unit_norm_copy(f, work / "unit" / n) for n, f in folders.items()}
    if a.seeds: return seed_spread(folders, unit, npz, work, a.seeds)
    runs = {"SAEBench": saebench(npz, unit, work, [])}
    for b in a.l1_batch: runs[f"SAEBench, L1 batch {b}"] = saebench(npz, unit, work, ["--k-sparse-batch-size", str(b)])
    mains = {k: ({n: {l: v["main_latents"] for l, v in r["saes"][n]["letters"].items()} for n in folders},
                 saebench_probe_data(r, npz)) for k, r in runs.items()}
    ort = ortsae_side(folders, npz, mains)
    common = sorted(set(ort["letters"]).intersection(*(r["letters_evaluated"] for r in runs.values())))
    cols = {**{k: {n: r["saes"][n]["letters"] for n in folders} for k, r in runs.items()},
            **{f"ortsae {c}": {n: ort[n][c]["letters"] for n in folders} for c in ort[next(iter(folders))]}}
    sb = next(iter(runs.values()))
    print(f"\nSAEBench {sb['saebench_version']} (sae-lens {sb['sae_lens_version']}) vs ortsae, {a.words} words "
          f"({sb['n_train']} train / {sb['n_test']} test), SAEs of {a.run} + random")
    print(f"letters with probe F1 > 0.6: ortsae {len(ort['letters'])} ({''.join(ort['letters'])}), SAEBench "
          f"{len(sb['letters_evaluated'])} ({''.join(sb['letters_evaluated'])}); compared on the {len(common)} in all\n")
    print(table(cols, common, list(folders)))
    print("\nortsae's own mean over all its letters, with a 95% bootstrap interval over words:")
    for n in folders:
        print(f"  {n:12s} " + "; ".join(f"{c}: {ort[n][c]['mean_absorption']:.4f} ({ort[n][c]['absorption_ci'][0]:.4f}-"
                                        f"{ort[n][c]['absorption_ci'][1]:.4f})" for c in ("own, P=x.p", "own, P=(x-b_dec).p")))
    print(f"\nmain latents of letters a-e ({' | '.join(runs)} | ortsae):")
    for n in folders:
        print(f"  {n:12s} " + "  ".join(f"{l}: " + " | ".join(str(mains[r][0][n].get(l)) for r in runs) + " | "
                                        f"{ort[n]['own, P=x.p']['letters'].get(l, {}).get('main_latents')}" for l in "abcde"))
    same = [c for c in cols if c.endswith("probe + main latents")]
    for c in same:   # ortsae's arithmetic on SAEBench's probe and main latents: should equal SAEBench letter by letter
        r = c.split("'s probe")[0].removeprefix("ortsae ")
        diff = max(abs(cols[c][n][l]["absorption"] - runs[r]["saes"][n]["letters"][l]["absorption"])
                   for n in folders for l in runs[r]["saes"][n]["letters"])
        nw = all(cols[c][n][l]["n_words"] == runs[r]["saes"][n]["letters"][l]["n_words"]
                 for n in folders for l in runs[r]["saes"][n]["letters"])
        print(f"\n{r} vs ortsae given {r}'s probe and main latents: largest per-letter difference {diff:.2e} "
              f"over {len(folders)} SAEs x {len(runs[r]['letters_evaluated'])} letters; same words counted: {nw}")


if __name__ == "__main__":
    main()
