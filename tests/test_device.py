"""The GPU path, emulated on CPU: bugs that would crash or corrupt a first GPU run fail here, in CI, without a GPU.

Two emulations. (1) The data lives on one device (CPU) while torch's default device is another (`meta`): any tensor
created without taking its device from its inputs lands on `meta` and either raises when mixed with real data or
leaves a `meta` result that can't be read. On a GPU the same code would put a CPU tensor beside CUDA ones.
(2) The step under CPU autocast in bf16, with a dispatch mode that rejects sparse products in reduced precision
(cuSPARSE has no bf16 kernel on a T4 and is inaccurate elsewhere).
"""
import copy
import pytest, torch
from torch.utils._python_dispatch import TorchDispatchMode
from ortsae.sae import BatchTopKSAE, MatryoshkaSAE
from ortsae.fast import Pattern, exact_batch_topk
from ortsae.orthogonality import OrtSAE, OrtMatryoshkaSAE
from ortsae import metrics as M
from ortsae.activations import load_model, tiny_model, ActivationBuffer
from ortsae.train import make_config, train, load_checkpoint, read_logs

KINDS = [BatchTopKSAE, MatryoshkaSAE, OrtSAE, OrtMatryoshkaSAE]
# torch < 2.13's Adam makes its step counter on the default device: under `meta` it can't be read (an emulation
# artifact: on a GPU the default device is the CPU, where Adam keeps it). Seen with torch 2.11 on an H200 machine.
meta_adam = pytest.mark.skipif(tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 13),
                               reason="torch < 2.13: Adam's state lands on the emulated default device")


def _x(n=256, d=32, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _steps(sae, x, n=3):
    opt = torch.optim.Adam(sae.parameters())
    for _ in range(n):
        out = sae.loss(x); opt.zero_grad(); out["loss"].backward(); sae.remove_parallel_grad(); opt.step(); sae.normalize_decoder()
    return read_logs({"sae": out})["sae"]


@meta_adam
@pytest.mark.parametrize("cls", KINDS)
@pytest.mark.parametrize("fast", [True, False])
def test_step_follows_the_data_device(cls, fast):
    "Training steps of every kind, fast and plain, with the default device elsewhere: finite, readable logs, real weights."
    x, sae = _x(), cls(32, 128, k=4, dead_after=10)   # SAEs are built on the CPU and moved, as `Run` does
    sae.fast = fast; sae.train()
    with torch.device("meta"):
        _steps(sae, x, 3)
        sae.since_fired[::2] = 100                           # half the latents dead before this batch: AuxK runs too
        logs = _steps(sae, x, 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values()) and logs["l0"] == 4 and logs["aux"] > 0
    assert {p.device.type for p in sae.parameters()} == {"cpu"} and {b.device.type for b in sae.buffers()} == {"cpu"}


@meta_adam
def test_metrics_follow_the_data_device():
    "Every metric, with the default device elsewhere, gives the same numbers as with the default device in place."
    x, y = _x(300), torch.randint(0, 26, (300,), generator=torch.Generator().manual_seed(1))
    sae = BatchTopKSAE(32, 128, k=4); sae.train(); sae.loss(x); sae.eval()
    W = sae.W_dec.detach()
    def every():
        d = M.letter_probes(x, y, 240, min_probe_f1=0.0, min_letters=0)
        ds = M.letter_probes(x, y, 240, min_probe_f1=0.0, min_letters=0, recipe="saebench")
        return dict(core={k: v for k, v in M.core_metrics(sae, x, batch_size=100).items() if k != "density"},
                    density=M.core_metrics(sae, x)["density"], mcs=M.mean_cos_sim(W), cc=M.clustering_coefficient(W, 0.1),
                    comp=M.composition_rate(W, steps=5), uniq=M.unique_fraction(W, M.random_decoder(128, 32)),
                    abs=M.first_letter_absorption(sae, d, n_boot=50)["mean_absorption"],
                    abs_sb=M.first_letter_absorption(sae, ds, recipe="saebench", n_boot=50)["absorption_ci"],
                    thr=M.calibrate_threshold(copy.deepcopy(sae), x))
    ref = every()
    with torch.device("meta"): got = every()
    assert got.keys() == ref.keys()
    for k in ref:
        if torch.is_tensor(ref[k]): assert got[k].device.type == "cpu" and torch.equal(got[k], ref[k]), k
        else: assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_shards):
    return make_shards(tmp_path_factory.mktemp("acts"), n_dirs=100, d=24, n_chunks=20, rows=500, active=3, shard_rows=2500)


def _cfg(shards, **kw):
    return make_config("smoke", **{**dict(source=f"shards:{shards}", total_tokens=128 * 40, batch_size=128, d_sae=128,
                                          chunk_size=32, k=4, buffer_size=1024, log_every=5, checkpoint_every=10,
                                          n_scale=256, warmup_steps=5, dead_after=500, device="cpu",
                                          saes=["batchtopk", "matryoshka", "ortsae"]), **kw})


def _weights(run):
    return {(k, n): t for k, s in run.saes.items() for n, t in s.state_dict().items() if torch.is_tensor(t)}


@meta_adam
def test_train_and_resume_with_the_default_device_elsewhere(shards, tmp_path):
    "A run trained and resumed with the default device on `meta` equals one trained straight with it in place."
    cfg = _cfg(shards)
    straight = train(cfg, tmp_path / "straight", progress=False)
    with torch.device("meta"):
        train(cfg, tmp_path / "other", stop_at=20, progress=False)
        resumed = train(cfg, tmp_path / "other", resume=True, progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(t.device.type == "cpu" and torch.equal(t, b[k]) for k, t in a.items())


def test_buffer_restores_onto_its_device():
    "A checkpointed buffer store (loaded on the CPU) goes back to the buffer's device, and refills there without mixing."
    buf = ActivationBuffer(iter([_x(64, 8)] * 4), batch_size=16, size=32, device="meta")
    state = {"store": torch.zeros(20, 8), "served": 0, "exhausted": False, "n_chunks": 1,
             "gen": torch.Generator().get_state(), "scale": 1.0}
    assert buf.load_state_dict(state).store.device.type == "meta"
    batches = [next(buf) for _ in range(3)]                  # 20 rows < size / 2 + batch: the second batch refills
    assert buf.n_chunks > 1 and all(b.device.type == "meta" and b.shape == (16, 8) for b in batches)


def test_load_model_puts_every_weight_on_the_device():
    "transformer-lens moves only models it loads itself; load_model hands it a loaded model and must move it."
    m = load_model(n_layers=2, device="meta")
    assert {p.device.type for p in m.parameters()} == {"meta"} and {b.device.type for b in m.buffers()} <= {"meta"}
    assert m.cfg.device == "meta"
    t = tiny_model(device="meta")
    assert {p.device.type for p in t.parameters()} == {"meta"}


class NoReducedPrecisionSparse(TorchDispatchMode):
    "Raise when a sparse tensor takes part in an op in a dtype other than fp32/fp64 (or when the op is a sampled product)."
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if torch.is_tensor(a)]
        sparse = any(a.layout != torch.strided for a in flat) or "sampled_addmm" in str(func)
        if sparse and any(a.dtype in (torch.bfloat16, torch.float16) for a in flat):
            raise AssertionError(f"reduced-precision sparse op {func}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cls", KINDS)
def test_sparse_products_stay_fp32_under_autocast(cls):
    "Under bf16 autocast the dense products may run in bf16, the sparse ones must not; the step still learns."
    x, sae = _x(), cls(32, 128, k=4, dead_after=10)
    sae.train()
    with torch.autocast("cpu", dtype=torch.bfloat16), NoReducedPrecisionSparse():
        logs = _steps(sae, x, 4)
    assert logs["l0"] == 4 and all(torch.isfinite(p.grad).all() for p in sae.parameters() if p.grad is not None)


def test_dispatch_mode_catches_a_bf16_sparse_product():
    "The guard above is real: a bf16 CSR product trips it."
    A = torch.eye(4).to_sparse_csr().to(torch.bfloat16)
    with pytest.raises(AssertionError, match="reduced-precision"), NoReducedPrecisionSparse(): A @ torch.ones(4, 2, dtype=torch.bfloat16)


def test_ties_in_bf16_keep_exactly_b_times_k():
    "Coarse bf16 pre-activations tie at the threshold; the selection still keeps exactly B*k entries."
    pre = (torch.rand(64, 512, generator=torch.Generator().manual_seed(0)) * 4).round().to(torch.bfloat16).float()
    for p in (pre, pre.to(torch.bfloat16)):
        idx = exact_batch_topk(p, 8)
        left = torch.ones(p.numel(), dtype=torch.bool).index_fill_(0, idx, False)
        assert len(idx) == 64 * 8 and len(idx.unique()) == len(idx)
        assert p.flatten()[idx].min() >= p.flatten()[left].max()          # nothing left out beats anything kept


def test_auxk_pattern_has_sorted_columns(monkeypatch):
    "CSR needs column indices sorted within each row (cuSPARSE assumes it); AuxK's top-k comes in value order."
    seen = []
    orig = Pattern.__init__
    def spy(self, rows, cols, n_rows, m): seen.append((rows, cols)); orig(self, rows, cols, n_rows, m)
    monkeypatch.setattr(Pattern, "__init__", spy)
    sae = BatchTopKSAE(32, 128, k=4, k_aux=16, dead_after=1); sae.train()
    sae.since_fired.fill_(5)                                  # every latent dead before this batch: AuxK runs
    assert sae.loss(_x())["aux"] > 0 and len(seen) == 2       # the selection's pattern and AuxK's
    for rows, cols in seen:
        key = rows * 10**6 + cols
        assert torch.equal(key, key.sort().values)


def test_checkpoint_with_pickled_object_is_refused(shards, tmp_path):
    "Loading a checkpoint never runs its code: one carrying a pickled object is refused, the file kept."
    cfg = _cfg(shards)
    train(cfg, tmp_path / "run", stop_at=10, progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["evil"] = Evil()
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="could run code"): load_checkpoint(ckpt, cfg)
    assert ckpt.exists() and not Evil.ran


class Evil:
    ran = False
    def __reduce__(self): return (Evil._run, ())
    @staticmethod
    def _run():
        Evil.ran = True
        return Evil


SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default"}


class CountSyncs(TorchDispatchMode):
    "Count ops that make the host wait for a GPU (reading a value; shapes that depend on data), outside torch.optim (whose step counter lives on the CPU)."
    def __init__(self): super().__init__(); self.n = 0; self.where = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import traceback
        name = str(func)
        boolean = name == "aten.index.Tensor" and any(torch.is_tensor(i) and i.dtype == torch.bool for i in (args[1] or []) if i is not None)
        if name in SYNC_OPS or boolean:
            frames = [f for f in traceback.extract_stack() if "torch/optim" in f.filename or "/ortsae/" in f.filename]
            if frames and "torch/optim" not in frames[-1].filename: self.n += 1; self.where.append(f"{frames[-1].name}:{frames[-1].lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind, most", [("batchtopk", 7), ("matryoshka", 7), ("ortsae", 8)])
def test_training_step_waits_for_the_device_rarely(kind, most):
    "A training step reads values from the device only where the algorithm needs them (the selection, AuxK's size, the penalty's guard); logging reads them every `log_every` steps, in one transfer."
    from ortsae.train import Run
    cfg = make_config("smoke", d_sae=1024, k=16, chunk_size=128, saes=[kind], device="cpu")
    run = Run(cfg); run.check(); run.build(64)
    x = _x(512, 64); run.train_step(x)
    with CountSyncs() as c: logs = run.train_step(x)
    assert c.n <= most, c.where                                  # the penalty's 8 chunks add one wait, not 8
    assert all(torch.is_tensor(v) for d in logs.values() for v in d.values())   # read later, every `log_every` steps
