"""SAEBench's first-letter absorption metric, computed by SAEBench's own code on activations and SAEs that we hand it.

This is a cross-check for ortsae's own absorption implementation (`ortsae.metrics.first_letter_absorption`): both run
on identical inputs (the same words, the same model activations, the same SAE), so any difference comes from the
metric's implementation, not from the data.

SAEBench (`sae-bench`, module `sae_bench.evals.absorption`) and the SAELens it loads SAEs with need
transformer-lens < 4, which clashes with ortsae's environment. So the first run builds a separate virtual environment
in `.bench/saebench-venv` (torch pinned to the local CPU wheel, sae-bench installed without its dependencies plus just
the packages its absorption modules import), and the script then re-runs itself inside it (`--worker`): the caller
never activates anything.

What runs, all SAEBench's own functions; only the language model is replaced, by `ActivationModel`, which answers
`run_with_cache` with the precomputed activation of each prompt's word (at SAEBench's read-out position
`prompt_token_pos`) and `to_tokens` with equal-length dummy tokens:
  1. ground-truth probe: `create_and_train_probe`'s steps (`gen_and_save_df_acts_probing`,
     `train_linear_probe_for_task`, `save_probe_and_data`) with `train_and_save_probes`' defaults, on our train words
     (rows [:split]) instead of its own random 80/20 split of the tokenizer vocabulary (`create_dataset_probe_training`);
  2. `run_k_sparse_probing_experiment` (L1 probe on the SAE latents, k-sparse sklearn probes for k = 1..10, feature
     splits), which also gives the probe's test F1 per letter (`f1_probe`, logit > 0, on rows [split:]);
  3. `run_feature_absortion_experiment`: `FeatureAbsorptionCalculator.calculate_absorption` on the test words of each
     letter that the probe classifies as positive;
  4. `main._aggregate_results_df`, then `main.run_eval`'s selection (letters with probe F1 > --min-probe-f1) and means.
Every hyperparameter is `AbsorptionEvalConfig`'s default. SAEBench seeds nothing; this script seeds random, numpy and
torch with --seed before the probe and before each SAE, so that a run is repeatable.

    python bench/saebench_absorption.py --data DATA.npz --sae SAE_DIR [--sae SAE_DIR2 ...] --out OUT.json

DATA.npz: `x` float32 (N, d_model) raw residual activations at each word's token in its ICL spelling prompt, `y` int64
(N,) first letter 0..25, `split` int (rows [:split] train, [split:] test), `words` str (N,). Each SAE_DIR is a SAELens
folder (`cfg.json` + `sae_weights.safetensors`, e.g. from `ortsae.sae.BatchTopKSAE.save`), loaded by SAELens' own
`SAE.load_from_disk`.
"""
import argparse, json, math, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".bench" / "saebench-venv"
TORCH = "torch==2.13.0"                     # the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build
SAE_BENCH = "sae-bench==0.6.0"
SAE_LENS = "sae-lens==6.54.12"              # allows transformer-lens 3.x
# Applied to every pip call in the venv: torch, plus sae-bench's own pins on what gets installed (numpy < 2,
# datasets < 4), and what numpy 1.x needs (pyarrow >= 21 wants numpy 2; SAEBench was written against pandas 2).
PINS = [TORCH, "numpy>=1.26.4,<2", "datasets>=3,<4", "pyarrow<21", "pandas>=2.1.2,<3"]
# What `sae_bench.evals.absorption.{probing,common,k_sparse_probing,feature_absorption(_calculator),main}` import.
# sae-bench itself goes in with --no-deps: its other requirements (torchvision, openai, sae-probes, matplotlib, ...)
# serve other evals.
RUNTIME = [SAE_LENS, "scikit-learn>=1.5.2", "pandas", "pyarrow", "einops>=0.8.0", "jaxtyping>=0.2.25",
           "beartype>=0.14.1", "pydantic>=2.9.2", "tabulate>=0.9.0", "tqdm>=4.66.4"]
CHECK = ("import sae_bench.evals.absorption.k_sparse_probing, sae_bench.evals.absorption.feature_absorption_calculator, "
         "sae_bench.evals.absorption.probing, sae_bench.evals.absorption.feature_absorption, sae_bench.evals.absorption.main")
MODEL_NAME = "ortsae-data"                  # the stand-in model's name: only names SAEBench's probe folder
LAYER = 0                                   # only names SAEBench's probe folder and hook: the activations are given


def ensure_venv():
    "The SAEBench environment's python, built on first use (and rebuilt if an earlier build did not finish)."
    py, done = VENV / "bin" / "python", VENV / ".complete"
    if not done.exists():
        print(f"building {VENV} ({TORCH}, {SAE_BENCH}, {SAE_LENS}); a minute or two, once", flush=True)
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        (VENV / "constraints.txt").write_text("\n".join(PINS) + "\n")
        pip = [str(py), "-m", "pip", "install", "-q", "-c", str(VENV / "constraints.txt")]
        subprocess.run(pip + [TORCH], check=True)
        subprocess.run(pip + RUNTIME, check=True)
        subprocess.run(pip + ["--no-deps", SAE_BENCH], check=True)
        subprocess.run([str(py), "-c", CHECK], check=True)
        done.touch()
    return str(py)


class _Tokenizer:
    "Just what SAEBench asks of a tokenizer here: a vocabulary (ICL examples) and token -> string (identity)."
    def __init__(self, words): self.vocab = {w: i for i, w in enumerate(words)}
    def convert_tokens_to_string(self, tokens): return "".join(tokens)


class ActivationModel:
    """Stands in for SAEBench's HookedTransformer: `run_with_cache(prompts, names_filter=[hook])` returns, for each
    prompt, a (n_ctx, d_model) tensor holding the precomputed activation of the prompt's word at position `pos` (zeros
    elsewhere, never read); `to_tokens` returns equal-length dummy tokens. The word is the last line of the prompt
    (SAEBench's ICL prompts end in `template.format(word=word)` after a newline)."""

    def __init__(self, words, x, template, pos, separator="\n"):
        import torch
        from types import SimpleNamespace
        if len(set(words)) != len(words): raise ValueError("DATA's words must be unique (each maps to one activation).")
        self.x, self.pos, self.sep = torch.as_tensor(x, dtype=torch.float32), pos, separator
        self.row = {w: i for i, w in enumerate(words)}
        self.prefix, self.suffix = template.split("{word}")
        self.n_ctx = max(8, 1 - pos if pos < 0 else pos + 1)
        self.cfg = SimpleNamespace(model_name=MODEL_NAME, d_model=self.x.shape[1], n_ctx=self.n_ctx)
        self.tokenizer = _Tokenizer(words)

    def word(self, prompt: str) -> str:
        last = prompt.split(self.sep)[-1]
        if not (last.startswith(self.prefix) and last.endswith(self.suffix)):
            raise ValueError(f"Prompt does not end in the template: {prompt[-80:]!r}")
        w = last[len(self.prefix):len(last) - len(self.suffix)]
        if w not in self.row: raise KeyError(f"No activation for word {w!r}")
        return w

    def to_tokens(self, prompt):
        import torch
        prompts = [prompt] if isinstance(prompt, str) else prompt
        for p in prompts: self.word(p)
        return torch.zeros(len(prompts), self.n_ctx, dtype=torch.long)

    def run_with_cache(self, prompts, names_filter):
        import torch
        prompts = [prompts] if isinstance(prompts, str) else prompts
        acts = torch.zeros(len(prompts), self.n_ctx, self.x.shape[1])
        acts[:, self.pos] = self.x[[self.row[self.word(p)] for p in prompts]]
        return None, {h: acts for h in names_filter}


def _seed(seed):
    import random, numpy as np, torch
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)


def _num(v):
    "JSON-safe float (NaN -> None)."
    v = float(v)
    return None if math.isnan(v) else v


def worker(a):
    "Runs inside the venv: the whole SAEBench absorption eval on DATA and each SAE; writes OUT.json."
    import inspect, statistics
    from importlib.metadata import version
    import numpy as np, torch
    from sae_lens import SAE
    from sae_bench.sae_bench_utils import get_sae_lens_version
    from sae_bench.evals.absorption import common, probing, k_sparse_probing, feature_absorption
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.evals.absorption.main import _aggregate_results_df
    from sae_bench.evals.absorption.prompting import create_icl_prompt, first_letter_formatter
    from sae_bench.evals.absorption.vocab import LETTERS

    t0 = time.perf_counter()
    cfg = AbsorptionEvalConfig(model_name=MODEL_NAME)          # SAEBench's defaults, except where a flag says
    if a.k_sparse_batch_size: cfg.k_sparse_probe_batch_size = a.k_sparse_batch_size
    if a.k_sparse_epochs: cfg.k_sparse_probe_num_epochs = a.k_sparse_epochs
    min_f1 = cfg.min_GT_probe_f1 if a.min_probe_f1 is None else a.min_probe_f1
    d = np.load(a.data, allow_pickle=False)
    x, y, split, words = d["x"].astype(np.float32), d["y"].astype(np.int64), int(d["split"]), [str(w) for w in d["words"]]
    model = ActivationModel(words, x, cfg.prompt_template, cfg.prompt_token_pos)
    device = "cpu"                                               # the venv's torch is the CPU build
    hook = f"blocks.{LAYER}.hook_resid_post"
    torch.set_grad_enabled(True)                                 # as main.run_eval does
    # `train_and_save_probes` (which SAEBench's `load_or_train_probe` calls) fixes the probe's hyperparameters.
    pdef = {k: p.default for k, p in inspect.signature(common.train_and_save_probes).parameters.items()
            if p.default is not inspect.Parameter.empty}

    def dataset(ws):
        "As `create_dataset_probe_training.generate_prompts` (1 prompt per word, ICL examples from the same split)."
        out = []
        for w in ws:
            p = create_icl_prompt(word=w, examples=ws, answer_formatter=first_letter_formatter(),
                                  base_template=cfg.prompt_template, max_icl_examples=10,
                                  prepend_separator_to_first_example=True)
            out.append((p, LETTERS.index(p.answer.strip().lower())))
        return out

    out = {"saebench_version": version("sae-bench"), "sae_lens_version": get_sae_lens_version(),
           "n_train": split, "n_test": len(words) - split, "min_probe_f1": min_f1, "seed": a.seed,
           "saebench_config": {k: getattr(cfg, k) for k in ("max_k_value", "f1_jump_threshold", "prompt_token_pos",
                               "k_sparse_probe_l1_decay", "k_sparse_probe_batch_size", "k_sparse_probe_num_epochs",
                               "llm_batch_size", "eval_k_sparse_probe_batch_size", "precalc_k_sparse_probe_sae_acts")},
           "gt_probe_config": {k: pdef[k] for k in ("batch_size", "num_epochs", "lr")},
           "probe_f1": None, "letters_evaluated": None, "saes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probes_dir, ks_dir, fa_dir = tmp / "probes", tmp / "k_sparse_probing", tmp / "feature_absorption"
        # 1. the ground-truth probe, as `create_and_train_probe` trains it, on our split
        _seed(a.seed)
        train_ds, test_ds = dataset(words[:split]), dataset(words[split:])
        got = np.array([c for _, c in train_ds + test_ds])
        if (got != y).any(): raise ValueError(f"DATA's y disagrees with SAEBench's first letter for {(got != y).sum()} words")
        path = probes_dir / MODEL_NAME / f"layer_{LAYER}"
        train_df, test_df, train_acts, test_acts = probing.gen_and_save_df_acts_probing(
            model=model, train_dataset=train_ds, test_dataset=test_ds, path=path, hook_point=hook,
            batch_size=pdef["batch_size"], position_idx=cfg.prompt_token_pos)
        if not (np.allclose(train_acts, x[:split]) and np.allclose(test_acts, x[split:])):
            raise AssertionError("the stand-in model served the wrong activations")
        probe, probe_data = probing.train_linear_probe_for_task(
            train_df=train_df, test_df=test_df, train_activations=train_acts, test_activations=test_acts,
            num_classes=26, batch_size=pdef["batch_size"], num_epochs=pdef["num_epochs"], lr=pdef["lr"],
            device=torch.device(device))
        probing.save_probe_and_data(probe, probe_data, probing_path=path)
        out["probe_weight"] = probe.weights.detach().float().cpu().tolist()    # (26, d_model): for the driver's checks
        out["probe_bias"] = probe.biases.detach().float().cpu().tolist()
        print(f"ground-truth probe trained ({time.perf_counter() - t0:.0f} s)", flush=True)

        for i, sae_dir in enumerate(a.sae):
            t1, name = time.perf_counter(), f"sae{i}"
            sae = SAE.load_from_disk(str(sae_dir), device=device)
            _seed(a.seed)
            # 2. k-sparse probing (also evaluates the GT probe on the test words: f1_probe)
            ks = k_sparse_probing.run_k_sparse_probing_experiment(
                model=model, sae=sae, layer=LAYER, sae_name=name, max_k_value=cfg.max_k_value,
                prompt_template=cfg.prompt_template, prompt_token_pos=cfg.prompt_token_pos, device=device,
                experiment_dir=ks_dir, probes_dir=probes_dir, force=True, f1_jump_threshold=cfg.f1_jump_threshold,
                k_sparse_probe_l1_decay=cfg.k_sparse_probe_l1_decay, k_sparse_probe_batch_size=cfg.k_sparse_probe_batch_size,
                k_sparse_probe_num_epochs=cfg.k_sparse_probe_num_epochs, eval_batch_size=cfg.eval_k_sparse_probe_batch_size,
                precalc_k_sparse_probe_sae_acts=cfg.precalc_k_sparse_probe_sae_acts, verbose=False)
            f1 = {r["letter"]: _num(r["f1_probe"]) for _, r in ks.iterrows()}
            if out["probe_f1"] is None: out["probe_f1"] = f1
            elif f1 != out["probe_f1"]: raise AssertionError("the GT probe's F1 changed between SAEs")
            # 3. absorption on the probe's true positives among the test words
            raw = feature_absorption.run_feature_absortion_experiment(
                model=model, sae=sae, layer=LAYER, sae_name=name, max_k_value=cfg.max_k_value,
                prompt_template=cfg.prompt_template, prompt_token_pos=cfg.prompt_token_pos, device=device,
                experiment_dir=fa_dir, sparse_probing_experiment_dir=ks_dir, probes_dir=probes_dir, force=True,
                feature_split_f1_jump_threshold=cfg.f1_jump_threshold, batch_size=cfg.llm_batch_size)
            # 4. aggregate as main.run_eval does
            letters, fracs, fulls, nsplit = {}, [], [], []
            if len(raw):
                for _, r in _aggregate_results_df(raw).iterrows():
                    if (f1[r["letter"]] or 0.0) > min_f1:
                        fracs.append(r["mean_absorption_fraction"]); fulls.append(r["full_absorption_rate"])
                        nsplit.append(r["num_split_feats"])
                        letters[r["letter"]] = {"absorption": float(r["mean_absorption_fraction"]),
                                                "full_absorption": float(r["full_absorption_rate"]),
                                                "n_words": int(r["num_probe_true_positives"]),
                                                "main_latents": [int(j) for j in r["split_feats"]]}
            if out["letters_evaluated"] is None: out["letters_evaluated"] = sorted(letters)
            mean = lambda v: float(statistics.mean(v)) if v else None
            out["saes"][str(sae_dir)] = {"mean_absorption": mean(fracs), "mean_full_absorption": mean(fulls),
                                         "mean_num_split_features": mean(nsplit), "letters": letters}
            print(f"{sae_dir}: done ({time.perf_counter() - t1:.0f} s)", flush=True)

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    ev = out["letters_evaluated"] or []
    print(f"\nSAEBench {out['saebench_version']}, sae-lens {out['sae_lens_version']}; {split} train / "
          f"{len(words) - split} test words; {len(ev)} letters with GT probe F1 > {min_f1}: {''.join(ev)}")
    if len(ev) < cfg.min_feats_for_eval:
        print(f"  (SAEBench's run_eval would refuse: it needs >= {cfg.min_feats_for_eval} such letters)")
    f1s = [v for v in out["probe_f1"].values() if v is not None]
    print(f"GT probe test F1: mean {statistics.mean(f1s):.3f}, min {min(f1s):.3f}, max {max(f1s):.3f}")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    for k, r in out["saes"].items():
        print(f"  {k}: absorption {fmt(r['mean_absorption'])}, full absorption {fmt(r['mean_full_absorption'])}, "
              f"split features {fmt(r['mean_num_split_features'])}")
    print(f"wrote {a.out} ({time.perf_counter() - t0:.0f} s)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="npz with x (N, d_model) float32, y (N,) int64 0..25, split (int), "
                                                 "words (N,) str: rows [:split] train, [split:] test")
    p.add_argument("--sae", required=True, action="append", help="SAELens-format SAE folder (cfg.json + "
                                                                 "sae_weights.safetensors); repeat for several SAEs")
    p.add_argument("--out", required=True, help="JSON file to write the results to")
    p.add_argument("--min-probe-f1", type=float, default=None,
                   help="evaluate letters whose ground-truth probe test F1 exceeds this (default: SAEBench's "
                        "min_GT_probe_f1, 0.6)")
    p.add_argument("--seed", type=int, default=42, help="seed for random/numpy/torch, set before the GT probe and "
                                                        "before each SAE (SAEBench's default random_seed is 42)")
    p.add_argument("--k-sparse-batch-size", type=int, default=None,
                   help="batch size of SAEBench's L1 probe on the SAE latents (default: AbsorptionEvalConfig's, 4096)")
    p.add_argument("--k-sparse-epochs", type=int, default=None,
                   help="epochs of SAEBench's L1 probe on the SAE latents (default: AbsorptionEvalConfig's, 50)")
    p.add_argument("--worker", action="store_true", help="internal: run the eval in this interpreter (which must be "
                                                         "the SAEBench venv's); set by the outer invocation")
    a = p.parse_args()
    if a.worker: return worker(a)
    for d in a.sae:
        if not (Path(d) / "cfg.json").exists(): p.error(f"--sae {d}: no cfg.json there")
    if not Path(a.data).exists(): p.error(f"--data {a.data}: no such file")
    py = ensure_venv()
    # SAEBench's probe training draws progress bars that no setting turns off, and sklearn warns about letters with
    # few test words: keep the worker's stderr, and show it only if the worker fails.
    env = {**os.environ, "PYTHONPATH": "", "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1")}
    with tempfile.TemporaryFile("w+") as err:
        rc = subprocess.run([py, str(Path(__file__).resolve()), "--worker", *sys.argv[1:]], env=env, stderr=err).returncode
        if rc:
            err.seek(0); sys.stderr.write(err.read()[-6000:])
    sys.exit(rc)


if __name__ == "__main__":
    main()
