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
    with pytest.raises(RuntimeError, match="internet connection.*shakespeare"):
        next(text_stream("openwebtext"))
