"""Loss of the shape VAE (VAE alarm): reconstruction + beta * KL."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["VAELoss"]


class VAELoss(nn.Module):
    """Negative ELBO of :class:`~synthcp3d.networks.ShapeVAE`: reconstruction + ``beta`` * KL(q(z|x) || N(0, I)).

    Args:
        beta: weight of the KL term.
        recon: ``"bce"`` (binary cross-entropy with logits, summed over voxels and channels per case) or
            ``"dice"`` (MONAI ``DiceLoss(sigmoid=True)`` per case, in [0, 1]).

    The KL is summed over latent dimensions per case; both terms are averaged over the batch.

    Shapes: ``recon_logits``, ``target`` (B, C, *S); ``mu``, ``logvar`` (B, latent). Returns a dict of
    scalars ``"loss"``, ``"recon"``, ``"kl"``.
    """

    def __init__(self, beta: float = 1.0, recon: str = "bce") -> None:
        super().__init__()
        if recon not in ("bce", "dice"):
            raise ValueError(f"recon must be 'bce' or 'dice', got {recon!r}.")
        self.beta = beta
        self.recon = recon
        self._dice = DiceLoss(sigmoid=True, reduction="none")

    def forward(
        self, recon_logits: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if recon_logits.shape != target.shape:
            raise ValueError(f"recon {tuple(recon_logits.shape)} and target {tuple(target.shape)} differ.")
        logits, target = recon_logits.float(), target.float()
        if self.recon == "bce":
            rec = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1).mean()
        else:
            rec = self._dice(logits, target).mean()
        mu, logvar = mu.float(), logvar.float()
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
        return {"loss": rec + self.beta * kl, "recon": rec, "kl": kl}
