"Integration tests for training: a killed run resumes bit-identically, bad input is refused with the reason."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch

CLI = [sys.executable, "-c", "import sys; from ortsae.cli import main; sys.exit(main())"]
from ortsae.train import TrainConfig, make_config, train, memory_needed, load_checkpoint


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_shards):
    "Cached activations with some structure (sparse sums of 200 directions in 48 dims)."
    return make_shards(tmp_path_factory.mktemp("acts"), n_dirs=200, d=48, n_chunks=40, rows=1000, active=4, shard_rows=5000)


def _cfg(shards, **kw):
    base = dict(source=f"shards:{shards}", total_tokens=256 * 60, batch_size=256, d_sae=256, chunk_size=64, k=6,
                buffer_size=2048, log_every=5, checkpoint_every=10, n_scale=512, warmup_steps=5, dead_after=2000)
    return make_config("smoke", **{**base, **kw})


def _weights(run):
    return {(k, n): t for k, s in run.saes.items() for n, t in s.state_dict().items() if torch.is_tensor(t)}


@pytest.fixture
def one_thread(monkeypatch):
    """One thread here and in subprocesses. Multi-threaded CPU kernels may add in a varying order, so two uninterrupted
    runs can already differ in the last bit (seen 1 time in 4-6 with 2 threads, before and after issue 16's changes):
    bit-identity is a claim about the saved state, tested where the arithmetic is deterministic."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1"); n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_killed_run_resumes_bit_identical(shards, tmp_path, one_thread):
    cfg = _cfg(shards, total_tokens=256 * 150, checkpoint_every=20)
    straight = train(cfg, tmp_path / "straight", progress=False)
    # a real kill: start the CLI in a subprocess, SIGKILL it once a mid-way checkpoint exists
    cfg.save(tmp_path / "cfg.json")
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(CLI + ["train", "--config", str(tmp_path / "cfg.json"),
                             "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, t0 = run_dir / "checkpoint.pt", time.time()
    while time.time() - t0 < 120:
        if ckpt.exists():
            try:
                if torch.load(ckpt, weights_only=False)["step"] >= 60: break
            except Exception:
                pass
        if proc.poll() is not None: break
        time.sleep(0.05)
    killed_early = proc.poll() is None
    proc.send_signal(signal.SIGKILL); proc.wait()
    step = torch.load(ckpt, weights_only=False)["step"]
    assert killed_early and 60 <= step < 150, f"the run should be killed mid-way (checkpoint at {step})"
    resumed = train(cfg, run_dir, resume=True, progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 150  # no step logged twice


def test_run_folder_is_complete(shards, tmp_path):
    run = train(_cfg(shards), tmp_path / "r", progress=False)
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"config.json", "log.jsonl", "checkpoint.pt", "summary.json", "training.png", "saes"} <= files
    for k in run.cfg.saes:
        assert (tmp_path / "r" / "saes" / k / "cfg.json").exists()
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["steps"] == 60 and set(s["saes"]) == {"batchtopk", "matryoshka", "ortsae"}


def test_same_seed_same_run(shards, tmp_path):
    a = train(_cfg(shards, total_tokens=256 * 20), tmp_path / "a", progress=False)
    b = train(_cfg(shards, total_tokens=256 * 20), tmp_path / "b", progress=False)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_corrupt_checkpoint_is_refused_and_kept(shards, tmp_path):
    cfg = _cfg(shards)
    train(cfg, tmp_path / "r", stop_at=10, progress=False)
    ckpt = tmp_path / "r" / "checkpoint.pt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        train(cfg, tmp_path / "r", resume=True, progress=False)
    assert ckpt.read_bytes() == b"not a checkpoint"


def test_mismatched_checkpoint_is_refused(shards, tmp_path):
    train(_cfg(shards), tmp_path / "r", stop_at=10, progress=False)
    with pytest.raises(ValueError, match="different run.*'k'"):
        train(_cfg(shards, k=4), tmp_path / "r", resume=True, progress=False)


def test_folder_with_other_run_needs_overwrite(shards, tmp_path):
    train(_cfg(shards), tmp_path / "r", stop_at=10, progress=False)
    with pytest.raises(ValueError, match="holds a different run"):
        train(_cfg(shards, k=4), tmp_path / "r", progress=False)
    run = train(_cfg(shards, k=4), tmp_path / "r", overwrite=True, stop_at=5, progress=False)
    assert run.step == 5


def test_resume_without_checkpoint(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="Nothing to resume"):
        train(_cfg(shards), tmp_path / "nothing", resume=True, progress=False)


@pytest.mark.parametrize("kw,msg", [(dict(k=300), "k=300 is larger than the dictionary"),
                                    (dict(k=256), "k=256 must be smaller than the dictionary"),
                                    (dict(saes=["batchtopk-seedx"]), "Unknown SAE kind 'batchtopk-seedx'"),
                                    (dict(saes=["batchtopk", "relu"]), "Unknown SAE kind 'relu'"),
                                    (dict(chunk_size=1), "chunk_size=1"),
                                    (dict(batch_size=2**24, total_tokens=2**25, d_sae=2**16, chunk_size=8192), "reduce batch_size")])
def test_bad_configs(shards, tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        train(_cfg(shards, **kw), tmp_path / "r", progress=False)


def test_config_json_errors(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"k": 32, "gama": 0.5}))
    with pytest.raises(ValueError, match="Unknown config field.*'gama'"):
        TrainConfig.load(tmp_path / "c.json")
    (tmp_path / "c.json").write_text(json.dumps({"lr": "fast"}))
    with pytest.raises(ValueError, match="'lr' should be"):
        TrainConfig.load(tmp_path / "c.json")
    (tmp_path / "c.json").write_text(json.dumps({"saes": ["ortsae", 3]}))
    with pytest.raises(ValueError, match="'saes' should be"):
        TrainConfig.load(tmp_path / "c.json")


def test_hook_the_model_lacks(tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        train(make_config("smoke", hook="blocks.40.hook_resid_post"), tmp_path / "r", progress=False)


def test_memory_estimate_grows_with_batch():
    small, big = make_config("smoke"), make_config("smoke", batch_size=4096)
    assert memory_needed(big, 576) > memory_needed(small, 576)


def test_cli_help():
    out = subprocess.run(CLI + ["train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--gamma" in out.stdout and "--resume" in out.stdout
    out = subprocess.run(CLI + ["train", "--preset", "huge"], capture_output=True, text=True)
    assert out.returncode == 2 and "Unknown preset 'huge'" in out.stderr


def test_seed_variant_differs_only_by_init(shards, tmp_path):
    run = train(_cfg(shards, saes=["batchtopk", "batchtopk-seed1"], total_tokens=256 * 10), tmp_path / "r", progress=False)
    a, b = run.saes["batchtopk"], run.saes["batchtopk-seed1"]
    assert type(a) is type(b) and a.config() == b.config() and not torch.equal(a.W_dec, b.W_dec)


def test_wandb_without_package_is_a_clear_error(shards, tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda n, *a, **k: (_ for _ in ()).throw(ImportError(n)) if n == "wandb" else real(n, *a, **k))
    with pytest.raises(ValueError, match="pip install wandb"):
        train(_cfg(shards, wandb=True), tmp_path / "r", progress=False)


def test_resume_with_stop_before_checkpoint_does_nothing(shards, tmp_path):
    cfg = _cfg(shards)
    train(cfg, tmp_path / "r", stop_at=20, progress=False)
    run = train(cfg, tmp_path / "r", resume=True, stop_at=10, progress=False)   # already past step 10
    assert run.step == 20 and not (tmp_path / "r" / "summary.json").exists()


def test_corpus_running_out_still_finishes(shards, tmp_path):
    run = train(_cfg(shards, total_tokens=10**7), tmp_path / "r", progress=False)
    assert run.step < run.total_steps and (tmp_path / "r" / "summary.json").exists()


def test_model_dtype_is_fixed_at_the_start_and_checkpointed(shards, tmp_path):
    "The language model's dtype is resolved once, saved in the checkpoint and kept on resume (evaluation reads it there)."
    cfg = _cfg(shards)
    run = train(cfg, tmp_path / "r", stop_at=10, progress=False)
    assert run.lm_dtype == "float32" and load_checkpoint(tmp_path / "r" / "checkpoint.pt", cfg)["model_dtype"] == "float32"
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt", cfg); state["model_dtype"] = "bfloat16"
    torch.save(state, tmp_path / "r" / "checkpoint.pt")           # as if it had started on a bf16 GPU
    resumed = train(cfg, tmp_path / "r", resume=True, stop_at=12, progress=False)
    assert resumed.lm_dtype == "bfloat16"
    from ortsae.metrics import _train_position
    assert _train_position(tmp_path / "r")[2] == "bfloat16"


def test_cpu_autocast_trains_to_the_same_place(shards, tmp_path):
    "bf16 autocast on the CPU (issue 29): a different run (bf16 rounding), but EV, L0 and dead latents within tolerance."
    a = train(_cfg(shards), tmp_path / "fp32", progress=False)
    b = train(_cfg(shards, cpu_autocast=True), tmp_path / "bf16", progress=False)
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text())["saes"] for r in ("fp32", "bf16"))
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a).values(), _weights(b).values()))   # it did use bf16
    for k in sa:
        assert abs(sa[k]["ev"] - sb[k]["ev"]) < 0.03 and abs(sa[k]["l0"] - sb[k]["l0"]) < 0.1 * 6
        assert abs(sa[k]["dead"] - sb[k]["dead"]) < 0.05, (k, sa[k], sb[k])
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["cpu_autocast"] is True
