"Data-parallel training on CPU with gloo (chapter 12_distributed has the walk-through and the 2 -> 1 rank resume)."
import json, os, subprocess, sys
import torch
from ortsae.distributed import compare_with_single
from ortsae.activations import write_shards


def test_two_ranks_equal_one_process_on_the_whole_batch():
    diffs = compare_with_single(world=2, steps=3, shape=(12, 96, 3, 24))
    for kind in ("batchtopk", "matryoshka", "ortsae"): assert diffs[kind] < 1e-4, (kind, diffs)
    assert abs(diffs["penalty"][0] - diffs["penalty"][1]) < 1e-6


def test_torchrun_train_then_resume_twice_with_two_ranks(tmp_path):
    write_shards((torch.randn(512, 16, generator=torch.Generator().manual_seed(i)) for i in range(40)), tmp_path / "acts",
                 shard_rows=512)
    args = ["train", "--source", f"shards:{tmp_path / 'acts'}", "--d-sae", "128", "--k", "4", "--batch-size", "64",
            "--chunk-size", "32", "--total-tokens", "4096", "--buffer-size", "512", "--n-scale", "256",
            "--checkpoint-every", "4", "--log-every", "2", "--saes", "batchtopk", "ortsae", "--run-dir", str(tmp_path / "run")]
    run = lambda *extra: subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                         "-m", "ortsae.cli", *args, *extra], capture_output=True, text=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = run("--stop-at", "8")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 8 and ckpt["tokens"] == 8 * 2 * 64 and ckpt["buffer"]["store"] is None
    mid = run("--resume", "--stop-at", "16")                              # a second stop: its position must move on
    assert mid.returncode == 0, mid.stderr[-3000:]
    ckpt2 = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt2["step"] == 16 and ckpt2["buffer"]["n_chunks"] == 2 * ckpt["buffer"]["n_chunks"], (ckpt["buffer"], ckpt2["buffer"])
    second = run("--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (s["steps"], s["tokens"]) == (4096 // 128, 4096) and "trained 2 SAEs" in second.stdout
    assert not (tmp_path / "run" / "saes" / "ortsae" / "cfg.json").read_text().count("DistributedRun")


def _ties_worker(rank, world, folder):
    import types, torch.distributed as dist
    from ortsae.distributed import global_select
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(rank)
    pre = (torch.rand(32, 256, generator=g) * 64).round() / 16         # coarse values, as bf16 gives: many ties
    idx = global_select(types.SimpleNamespace(k=5), pre)
    n = torch.tensor(len(idx)); dist.all_reduce(n)
    torch.save({"n": int(n), "sorted": bool(torch.equal(idx, idx.sort().values)), "min_kept": float(pre.flatten()[idx].min()) if len(idx) else float("inf"),
                "max_left": float(pre.flatten()[torch.ones(pre.numel(), dtype=torch.bool).index_fill_(0, idx, False)].max())},
               f"{folder}/r{rank}.pt")
    dist.destroy_process_group()


def test_global_selection_with_ties_keeps_exactly_b_times_k(tmp_path):
    "Ties at the global threshold (bf16) must not push L0 above k: all ranks together keep exactly world x B x k."
    import torch.multiprocessing as mp
    mp.spawn(_ties_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"r{i}.pt") for i in range(2)]
    assert r[0]["n"] == 2 * 32 * 5 and all(x["sorted"] for x in r)
    assert min(x["min_kept"] for x in r) >= max(x["max_left"] for x in r)   # nothing left out beats anything kept
