import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub access fails at once instead of retrying DNS
import pytest, torch
from ortsae.activations import load_model, tiny_model


@pytest.fixture(scope="session")
def smol():
    "SmolLM2-135M (offline), cut to 4 layers."
    return load_model(n_layers=4)


@pytest.fixture(scope="session")
def tiny():
    return tiny_model()


def sparse_sum_shards(folder, n_dirs: int, d: int, n_chunks: int, rows: int, active: int, shard_rows: int):
    "Cached activations with structure an SAE can learn: sums of `active` of `n_dirs` random unit directions in `d` dims."
    from ortsae.activations import write_shards
    g = torch.Generator().manual_seed(0)
    F = torch.nn.functional.normalize(torch.randn(n_dirs, d, generator=g), dim=1)
    def chunks():
        for _ in range(n_chunks):
            idx = torch.rand(rows, n_dirs, generator=g).topk(active, dim=1).indices
            yield torch.zeros(rows, n_dirs).scatter(1, idx, torch.rand(rows, active, generator=g) + 0.5) @ F * 3
    return write_shards(chunks(), folder, shard_rows=shard_rows)


@pytest.fixture(scope="session")
def make_shards():
    "`sparse_sum_shards`, for module fixtures."
    return sparse_sum_shards
