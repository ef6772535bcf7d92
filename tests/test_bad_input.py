"Bad input on the command line and on disk gets a clear error (exit code 2, a message saying what to do), never a traceback."
import json
import pytest
import torch
from ortsae.cli import main
from ortsae.sae import BatchTopKSAE, load_sae


@pytest.mark.parametrize("flag, value, says", [("--batch-size", "0", "batch_size=0: use an integer >= 1"),
                                               ("--total-tokens", "-5", "total_tokens=-5: use an integer >= 1"),
                                               ("--k", "0", "k=0: use an integer >= 1"), ("--lr", "0", "lr=0: use a finite number > 0"),
                                               ("--decay-frac", "NaN", "decay_frac=nan: use a finite number >= 0 and <= 1"),
                                               ("--betas", "0.9 1", "betas=1: use a finite number >= 0 and < 1"),
                                               ("--device", "cuda:7", "device='cuda:7': this machine has")])
def test_train_refuses_impossible_values(tmp_path, capsys, flag, value, says):
    assert main(["train", "--preset", "smoke", "--run-dir", str(tmp_path / "run"), flag, *value.split()]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()                      # nothing was written


def test_corrupt_sae_files_give_a_clear_error(tmp_path):
    folder = BatchTopKSAE(8, 16, k=2).save(tmp_path / "sae")
    (folder / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="sae_weights.safetensors is missing or corrupt"): load_sae(folder)
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(ValueError, match="missing or corrupt"): load_sae(folder)


def test_eval_of_a_run_with_a_corrupt_sae_exits_cleanly(tmp_path, capsys):
    run = tmp_path / "run"; (run / "saes").mkdir(parents=True)
    from ortsae.train import make_config
    make_config("smoke").save(run / "config.json")
    folder = BatchTopKSAE(8, 16, k=2).save(run / "saes" / "batchtopk")
    (folder / "sae_weights.safetensors").write_bytes(b"\x00" * 10)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "missing or corrupt" in err and "Traceback" not in err


def test_hub_corpus_offline_is_a_clear_error(monkeypatch):
    "Streaming a hub corpus without a connection says so and names the offline choices (no raw traceback)."
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from ortsae.activations import text_stream, CORPORA
    assert CORPORA["openwebtext"][1] == "refs/convert/parquet"   # the script-based repo's parquet conversion
    with pytest.raises(ConnectionError, match="internet connection.*shakespeare"):
        next(text_stream("openwebtext"))


# ---- issue 30: run folders, files, flags ----
def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small_acts(tmp_path_factory, make_shards):
    return make_shards(tmp_path_factory.mktemp("acts"), n_dirs=64, d=16, n_chunks=4, rows=512, active=3, shard_rows=1024)


def _train_args(acts, run_dir, *extra):
    return ["train", "--preset", "smoke", "--source", f"shards:{acts}", "--total-tokens", "512", "--batch-size", "128",
            "--d-sae", "64", "--chunk-size", "32", "--k", "4", "--buffer-size", "512", "--n-scale", "256", "--run-dir", str(run_dir), *extra]


def test_overwrite_refuses_a_folder_ortsae_did_not_start(tmp_path, small_acts, capsys):
    "The reported data loss: another tool's config.json and saes/notes.txt survive --overwrite, untouched."
    d = tmp_path / "theirs"; (d / "saes").mkdir(parents=True)
    (d / "config.json").write_text('{"tool": "other"}'); (d / "saes" / "notes.txt").write_text("mine")
    before = _snapshot(d)
    assert main(_train_args(small_acts, d, "--overwrite")) == 2
    assert "is not an ortsae run folder" in capsys.readouterr().err
    assert _snapshot(d) == before


def test_overwrite_clears_only_what_ortsae_wrote(tmp_path, small_acts, capsys):
    d = tmp_path / "run"
    assert main(_train_args(small_acts, d)) == 0
    (d / "saes" / "notes.txt").write_text("mine"); (d / "metrics.json").write_text("{}")   # a note, an (old) evaluation
    assert main(_train_args(small_acts, d, "--overwrite")) == 0
    assert (d / "saes" / "notes.txt").read_text() == "mine" and not (d / "metrics.json").exists()   # stale evaluation gone
    assert (d / "summary.json").exists()


def test_run_dir_that_is_a_file(tmp_path, small_acts, capsys):
    f = tmp_path / "afile"; f.write_text("x")
    assert main(_train_args(small_acts, f)) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and f.read_text() == "x"


@pytest.mark.parametrize("argv, says", [
    (["capture", "--tokens", "2000", "--shard-rows", "0"], "shard_rows=0: use an integer >= 1"),
    (["eval", "run", "--absorption-words", "-5"], "absorption_words=-5: use an integer >= 0"),
    (["eval", "run", "--composition-steps", "0"], "composition_steps=0: use an integer >= 1"),
    (["eval", "run", "--min-probe-f1", "1.5"], "min_probe_f1=1.5"),
    (["eval", "run", "--device", "cuda:9"], "this machine has"),
    (["doctor", "--steps", "0"], "steps=0"),
    (["features", "run", "--latents", "-1"], "latents=-1"),
    (["train", "--lr", "Infinity"], "lr=inf: use a finite number > 0"),
])
def test_flags_are_refused_while_parsing(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and not any(tmp_path.iterdir())   # nothing written


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(FileNotFoundError, match="no/such/run does not exist: give a run folder"): main(["--debug", "eval", "no/such/run"])


def test_config_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "cfg.json"; bad.write_text('{"k": 32,')
    assert main(["train", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert f"--config {bad} is not valid JSON" in capsys.readouterr().err
    bad.write_text('{"k": -3}')
    assert main(["train", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "k=-3: use an integer >= 1" in (err := capsys.readouterr().err) and str(bad) in err
    assert not (tmp_path / "r").exists()


def test_sae_files_that_do_not_match_are_named(tmp_path):
    folder = BatchTopKSAE(8, 16, k=2).save(tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text()); cfg["ortsae"]["d_sae"] = -5
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"sae/cfg.json does not describe an SAE"): load_sae(folder)
    cfg["ortsae"]["d_sae"] = 32; (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"sae_weights.safetensors does not match .*cfg.json"): load_sae(folder)


def test_truncated_shard_is_named(tmp_path, make_shards, capsys):
    acts = make_shards(tmp_path / "acts", n_dirs=16, d=8, n_chunks=2, rows=512, active=2, shard_rows=256)
    shard = tmp_path / "acts" / "shard_00001.safetensors"; shard.write_bytes(shard.read_bytes()[:64])
    assert main(_train_args(tmp_path / "acts", tmp_path / "r")) == 2
    assert "shard_00001.safetensors is missing or corrupt" in capsys.readouterr().err


def test_read_only_metrics_is_refused_before_the_work(tmp_path, small_acts, capsys, monkeypatch):
    import os
    d = tmp_path / "run"; assert main(_train_args(small_acts, d)) == 0
    (d / "metrics.json").write_text("{}"); os.chmod(d / "metrics.json", 0o444)
    if os.geteuid() == 0:                                        # root may write anyway: let the check see what a user would
        real = os.access; monkeypatch.setattr(os, "access", lambda f, m: False if str(f).endswith("metrics.json") else real(f, m))
    before = _snapshot(d)
    assert main(["eval", str(d), "--absorption-words", "0", "--ce-batches", "0", "--evals", "table1"]) == 2
    assert "metrics.json is read-only" in capsys.readouterr().err and _snapshot(d) == before


def test_overwrite_never_follows_a_link_out_of_the_run(tmp_path, small_acts):
    "The hostile tester's worst case: a symlinked folder under saes/ pointing outside, and a user's own SAE folder."
    d = tmp_path / "run"; assert main(_train_args(small_acts, d)) == 0
    outside = tmp_path / "precious" / "my_sae"; outside.mkdir(parents=True)
    for f in ("cfg.json", "sae_weights.safetensors"): (outside / f).write_text("x")
    (d / "saes" / "external").symlink_to(outside); (d / "saes" / "own").mkdir()
    (d / "saes" / "own" / "cfg.json").write_text("mine")
    before = _snapshot(outside)
    assert main(_train_args(small_acts, d, "--overwrite")) == 0
    assert _snapshot(outside) == before and (d / "saes" / "own" / "cfg.json").read_text() == "mine"
    assert (d / "saes" / "external").is_symlink()


def test_resume_and_overwrite_together_are_refused(tmp_path, small_acts, capsys):
    d = tmp_path / "run"; assert main(_train_args(small_acts, d)) == 0
    before = _snapshot(d)
    assert main(_train_args(small_acts, d, "--resume", "--overwrite")) == 2
    assert "contradict each other" in capsys.readouterr().err and _snapshot(d) == before


def test_a_run_that_cannot_start_leaves_no_run_behind(tmp_path, small_acts, capsys):
    "A bad source: the folder is not marked as a run, so fixing the flag and running again just works."
    d = tmp_path / "run"
    assert main(_train_args(tmp_path / "no-such-cache", d)) == 2
    assert not (d / "config.json").exists()
    assert main(_train_args(small_acts, d)) == 0


def test_capture_never_writes_over_a_folder_with_files(tmp_path, capsys):
    d = tmp_path / "mine"; d.mkdir(); (d / "meta.json").write_text('{"mine": 1}')
    assert main(["capture", "--tokens", "16", "--ctx-len", "8", "--out", str(d)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err and (d / "meta.json").read_text() == '{"mine": 1}'


def test_betas_need_two_and_debug_works_after_the_subcommand(tmp_path, small_acts, capsys):
    assert main(_train_args(small_acts, tmp_path / "r", "--betas", "0.9")) == 2
    assert "give two numbers" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError): main(["eval", "no/such/run", "--debug"])


def test_empty_paths_and_a_doctor_report_nowhere_fail_at_once(capsys):
    assert main(["train", "--run-dir", ""]) == 2 and "--run-dir is empty" in capsys.readouterr().err
    assert main(["train", "--config", " "]) == 2 and "--config is empty" in capsys.readouterr().err
    assert main(["doctor", "--out", "/no/such/folder/report.json"]) == 2
    assert "give a file in an existing folder" in capsys.readouterr().err


def test_a_kind_named_twice_is_refused(capsys):
    assert main(["train", "--saes", "ortsae", "ortsae"]) == 2 and "names a kind twice" in capsys.readouterr().err


def test_a_bug_shows_its_traceback_and_a_users_error_does_not(monkeypatch, capsys):
    "Only the errors a user causes are one line: ortsae's own RuntimeError, IndexError or KeyError keeps its traceback."
    import ortsae.cli as cli
    for bug in (RuntimeError("internal"), IndexError("internal"), KeyError("internal")):
        def boom(args, bug=bug): raise bug
        monkeypatch.setitem(cli.COMMANDS, "doctor", boom)
        with pytest.raises(type(bug)): main(["doctor"])
    def oom(args): raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
    monkeypatch.setitem(cli.COMMANDS, "doctor", oom)
    assert main(["doctor"]) == 2 and "use a smaller --batch-size" in capsys.readouterr().err


def test_a_hook_past_the_last_layer_names_the_layers(capsys):
    assert main(["capture", "--tokens", "16", "--hook", "blocks.99.hook_resid_post"]) == 2
    assert "Layer 99 in 'blocks.99.hook_resid_post' is out of range: smollm2-135m-offline has 30 layers (0..29)" in capsys.readouterr().err


def test_features_checks_latents_before_the_pass(tmp_path, small_acts, capsys):
    d = tmp_path / "run"; assert main(_train_args(small_acts, d)) == 0
    before = _snapshot(d)
    assert main(["features", str(d), "--sae", "batchtopk", "--latents", "3", "64"]) == 2
    assert "Latents [64] are out of range: batchtopk has 64 latents (0 to 63)" in capsys.readouterr().err
    assert _snapshot(d) == before                                # no features.pt, no features.html


def test_synth_never_writes_into_a_folder_of_other_files(tmp_path, capsys):
    synth = ["synth", "--world", "tiny", "--width", "32", "--k", "2", "--seeds", "1", "--steps", "4", "--batch-size", "64",
             "--evals", "1", "--eval-samples", "256", "--device", "cpu"]
    d = tmp_path / "mine"; d.mkdir(); (d / "report.md").write_text("my report"); (d / "checkpoint.pt").write_text("x")
    before = _snapshot(d)
    assert main([*synth, "--out", str(d)]) == 2
    assert "a folder of other files (no world.json)" in capsys.readouterr().err and _snapshot(d) == before
    f = tmp_path / "afile"; f.write_text("x")
    assert main([*synth, "--out", str(f)]) == 2 and "is a file" in capsys.readouterr().err and f.read_text() == "x"
    run = tmp_path / "run"
    assert main([*synth, "--out", str(run)]) == 0 and (run / "report.md").exists()
    capsys.readouterr()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")     # corrupt: the remedy is synth's own (it has no --overwrite)
    assert main([*synth, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "corrupt or unreadable" in err and "Use another folder, or delete" in err and "--overwrite" not in err


# ---- issue 30, second hostile pass ----
@pytest.mark.parametrize("link", ["log.jsonl", "saes/ortsae"])
def test_links_where_ortsae_writes_are_refused(tmp_path, small_acts, capsys, link):
    "A run folder whose log or SAE folder is a link outside it: refused, with or without --overwrite; the outside untouched."
    d = tmp_path / "run"; assert main(_train_args(small_acts, d)) == 0
    outside = tmp_path / "outside"; outside.mkdir(); (outside / "precious.txt").write_text("mine")
    target = outside / "precious.txt" if link == "log.jsonl" else outside
    p = d / link; (p.unlink() if p.is_file() else __import__("shutil").rmtree(p)); p.symlink_to(target)
    before = _snapshot(outside)
    for extra in (["--overwrite"], ["--resume"]):
        assert main(_train_args(small_acts, d, *extra)) == 2
        assert "is a symbolic link where ortsae writes" in capsys.readouterr().err
    assert _snapshot(outside) == before and p.is_symlink()


def test_a_cache_too_small_for_the_run_says_what_happened(tmp_path, small_acts, capsys):
    "The source runs out before total_tokens: the run finishes with what it read, and says so (no --resume advice)."
    args = _train_args(small_acts, tmp_path / "r"); args[args.index("--total-tokens") + 1] = "100000"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the source ran out after" in out and "of 100,000 tokens" in out and "--resume" not in out
    assert (tmp_path / "r" / "saes" / "ortsae" / "cfg.json").exists()


def test_a_cache_knows_its_model_and_hook(tmp_path, small_acts, capsys):
    import shutil
    acts = tmp_path / "acts"; shutil.copytree(small_acts, acts)
    meta = json.loads((acts / "meta.json").read_text())
    (acts / "meta.json").write_text(json.dumps({**meta, "model": "smollm2-135m-offline", "hook": "blocks.3.hook_resid_post"}))
    assert main(_train_args(acts, tmp_path / "r")) == 0                # the cache's hook, not the preset's
    assert json.loads((tmp_path / "r" / "config.json").read_text())["hook"] == "blocks.3.hook_resid_post"
    assert main(_train_args(acts, tmp_path / "r2", "--hook", "blocks.6.hook_resid_post")) == 2
    assert "evaluation would read the wrong model or layer" in capsys.readouterr().err
    (acts / "meta.json").write_text(json.dumps({**meta, "n_shards": -3}))
    assert main(_train_args(acts, tmp_path / "r3")) == 2
    assert "meta.json is not an activation cache's (ValueError: n_shards=-3" in capsys.readouterr().err


def test_wandb_that_cannot_start_leaves_no_run(tmp_path, small_acts, capsys, monkeypatch):
    import sys, types
    def init(**kw): raise RuntimeError("No API key configured. Use `wandb login` to log in.")
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    d = tmp_path / "r"
    assert main(_train_args(small_acts, d, "--wandb", "true")) == 2
    assert "Weights & Biases could not start (RuntimeError: No API key configured" in capsys.readouterr().err
    assert not (d / ".ortsae-run").exists() and not (d / "config.json").exists()
    assert main(_train_args(small_acts, d)) == 0                         # the same run without W&B just works


@pytest.mark.parametrize("argv, says", [
    (["features", "run", "--sae", ""], "argument --sae: empty"),
    (["capture", "--out", ""], "argument --out: empty"),
    (["synth", "--out", " "], "argument --out: empty"),
    (["doctor", "--out", ""], "argument --out: empty"),
    (["eval", ""], "argument run_dir: empty"),
    (["reproduce", "smoke", "--root", ""], "argument --root: empty"),
])
def test_empty_paths_and_names_are_refused_while_parsing(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2 and says in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_outputs_that_cannot_be_written_are_found_before_the_work(tmp_path, small_acts, capsys):
    d = tmp_path / "run"; assert main(_train_args(small_acts, d)) == 0
    (d / "features.html").mkdir()
    assert main(["features", str(d)]) == 2
    assert "features.html is a folder, where ortsae writes a file" in capsys.readouterr().err and not (d / "features.pt").exists()
    (d / "metrics.json").mkdir()
    assert main(["eval", str(d), "--absorption-words", "0", "--ce-batches", "0", "--evals", "table1"]) == 2
    assert "metrics.json is a folder" in capsys.readouterr().err and not list(d.glob("*.tmp"))
    f = tmp_path / "afile"; f.write_text("x")
    assert main(["eval", str(f)]) == 2 and "is a file: give a run folder" in capsys.readouterr().err


def test_odd_config_and_source_files_are_named(tmp_path, capsys):
    bad = tmp_path / "cfg.json"; bad.write_bytes(b"\xff\xfe\x00binary")
    assert main(["train", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert f"--config {bad} is not valid JSON" in capsys.readouterr().err
    assert main(["capture", "--tokens", "16", "--source", "/no/such/corpus.txt"]) == 2
    assert "No such text file or folder: /no/such/corpus.txt" in capsys.readouterr().err


def test_a_new_run_never_writes_over_files_it_did_not_write(tmp_path, small_acts, capsys):
    d = tmp_path / "mine"; d.mkdir(); (d / "training.png").write_text("my plot"); (d / "notes.txt").write_text("ok")
    before = _snapshot(d)
    assert main(_train_args(small_acts, d)) == 2
    assert "already holds training.png, which a new run would write over" in capsys.readouterr().err and _snapshot(d) == before
    (d / "training.png").unlink()
    assert main(_train_args(small_acts, d)) == 2                          # any other file: a new run needs a new or empty folder
    assert "holds other files (notes.txt): a new run needs a new or empty --run-dir" in capsys.readouterr().err
    assert (d / "notes.txt").read_text() == "ok" and sorted(p.name for p in d.iterdir()) == ["notes.txt"]   # as it was


def test_two_processes_never_train_in_one_folder(tmp_path, small_acts, capsys):
    from ortsae.train import _lock
    d = tmp_path / "run"; held = _lock(d)                                 # as if another process were training there
    assert main(_train_args(small_acts, d)) == 2
    assert "Another ortsae process is training in" in capsys.readouterr().err and not (d / "config.json").exists()
    held.close()
    assert main(_train_args(small_acts, d)) == 0


def test_a_failed_start_leaves_no_empty_folder_and_doctor_sizes_are_checked_first(tmp_path, small_acts, capsys):
    assert main(_train_args(small_acts, tmp_path / "n", "--saes", "foo")) == 2 and not (tmp_path / "n").exists()
    assert main(["doctor", "--device", "cpu", "--steps", "2", "--size", "16", "32", "--batch", "64"]) == 2
    assert "size 16 32 (--size D M): k=64 is larger than the dictionary" in capsys.readouterr().err
    assert main(_train_args("", tmp_path / "e")) == 2 and "source='shards:' names no folder" in capsys.readouterr().err


def test_resume_puts_back_a_broken_config_json(tmp_path, small_acts, capsys):
    d = tmp_path / "run"; assert main(_train_args(small_acts, d, "--stop-at", "2")) == 0
    want = (d / "config.json").read_text(); (d / "config.json").write_text("not json")
    assert main(_train_args(small_acts, d, "--resume")) == 0
    assert (d / "config.json").read_text() == want                      # the checkpoint's settings, for evaluation to read


def test_hub_downstream_offline_fails_before_table1(tmp_path, small_acts, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path / "run"; assert main(_train_args(small_acts, d)) == 0
    assert main(["eval", str(d), "--evals", "table1", "scr", "--downstream-source", "hub", "--absorption-words", "0"]) == 2
    assert "it needs internet" in capsys.readouterr().err and not (d / "metrics.json").exists()   # nothing done first


def test_a_broken_link_or_a_file_as_the_folder_is_named(tmp_path, small_acts, capsys):
    dl = tmp_path / "dl"; dl.symlink_to(tmp_path / "gone")
    assert main(_train_args(small_acts, dl)) == 2 and "which does not exist: remove the link" in capsys.readouterr().err
    assert main(["capture", "--tokens", "16", "--out", str(dl)]) == 2 and "which does not exist: remove the link" in capsys.readouterr().err
    f = tmp_path / "afile"; f.write_text("x")
    assert main(["reproduce", "smoke", "--root", str(f)]) == 2
    assert f"--root {f} is a file" in capsys.readouterr().err and f.read_text() == "x"
