"""ortsae's saved SAEs load in SAELens itself and compute the same thing. SAELens needs transformer-lens 3.x, so this
runs in the second CI environment (`.ci/test-tl3`); where sae-lens isn't installed it is skipped."""
import pytest, torch
sae_lens = pytest.importorskip("sae_lens")
from ortsae.sae import BatchTopKSAE, MatryoshkaSAE, load_sae
from ortsae.orthogonality import OrtSAE


@pytest.mark.parametrize("cls", [BatchTopKSAE, MatryoshkaSAE, OrtSAE])
def test_saelens_loads_an_ortsae_sae_and_agrees(cls, tmp_path):
    "Train a little, save with an activation scale folded in, load with SAELens: same latents, same reconstruction."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 24, generator=g) * 3
    sae = cls(24, 96, k=4); sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(20):
        loss = sae.loss(x)["loss"]; opt.zero_grad(); loss.backward(); sae.remove_parallel_grad(); opt.step(); sae.normalize_decoder()
    scale = 0.5                                                   # the buffer's normalisation, folded into the weights
    folder = sae.save(tmp_path / "sae", scale=scale)
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    ours = load_sae(folder)
    raw = x / scale                                               # what the model gives before normalisation
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(raw), theirs.encode(raw)
        assert torch.equal(f_ours > 0, f_theirs > 0)
        assert torch.allclose(f_ours, f_theirs, atol=1e-4, rtol=1e-4)
        assert torch.allclose(ours.decode(f_ours), theirs.decode(f_theirs), atol=1e-4, rtol=1e-4)
