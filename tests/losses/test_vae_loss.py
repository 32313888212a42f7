import pytest
import torch
import torch.nn.functional as F

from synthcp3d.losses import VAELoss


def test_kl_and_bce_values():
    logits = torch.randn(2, 1, 4, 4, 4)
    target = (torch.rand(2, 1, 4, 4, 4) > 0.5).float()
    mu, logvar = torch.zeros(2, 5), torch.zeros(2, 5)
    out = VAELoss(beta=3.0)(logits, target, mu, logvar)
    assert out["kl"] == 0
    assert torch.isclose(out["recon"], F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / 2)
    mu = torch.ones(2, 5)
    out = VAELoss(beta=3.0)(logits, target, mu, logvar)
    assert torch.isclose(out["kl"], torch.tensor(2.5))  # 0.5 * sum(mu^2) per case
    assert torch.isclose(out["loss"], out["recon"] + 3.0 * out["kl"])


def test_dice_recon_and_errors():
    target = (torch.rand(2, 2, 8, 8) > 0.5).float()
    perfect = (target * 2 - 1) * 50
    out = VAELoss(recon="dice")(perfect, target, torch.zeros(2, 3), torch.zeros(2, 3))
    assert out["recon"] < 1e-3
    bad = VAELoss(recon="dice")(-perfect, target, torch.zeros(2, 3), torch.zeros(2, 3))
    assert bad["recon"] > 0.9
    with pytest.raises(ValueError, match="recon must"):
        VAELoss(recon="mse")
    with pytest.raises(ValueError, match="differ"):
        VAELoss()(perfect[:, :1], target, torch.zeros(2, 3), torch.zeros(2, 3))
