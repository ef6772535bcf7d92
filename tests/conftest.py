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
