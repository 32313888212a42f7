"""Shape VAE of the VAE alarm (Liu et al., ICCV 2019): a convolutional VAE on segmentation masks whose
reconstruction loss of a predicted mask is the feature a regressor maps to Dice."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.losses import DiceLoss
from monai.networks.nets import VarAutoEncoder

__all__ = ["ShapeVAE"]


class ShapeVAE(nn.Module):
    """MONAI :class:`~monai.networks.nets.VarAutoEncoder` on one-hot (or tumour-only) masks of a fixed shape.

    Wrapped to return logits (MONAI's sigmoid is turned off so the loss can use BCE-with-logits), to use the
    posterior mean in eval mode (a deterministic reconstruction for the alarm feature), and to add
    :meth:`reconstruction_loss`, the per-case Dice loss between a mask and its reconstruction (Liu et al.).

    Args:
        spatial_dims: 2 or 3.
        in_shape: spatial shape of the masks (the VAE has a dense latent layer, so it is fixed).
        in_channels: mask channels (classes of the one-hot mask, or 1 for tumour only).
        latent_size: latent dimension.
        channels: encoder widths (each level halves the size).
        include_background: count channel 0 in :meth:`reconstruction_loss` (ignored when in_channels == 1).

    Shapes: ``mask`` (B, in_channels, *in_shape) in {0, 1} -> ``(recon_logits, mu, logvar, z)`` with
    ``recon_logits`` like ``mask`` and the others (B, latent_size).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_shape: Sequence[int],
        in_channels: int = 1,
        latent_size: int = 32,
        channels: Sequence[int] = (16, 32, 64, 128),
        include_background: bool = False,
    ) -> None:
        super().__init__()
        if len(in_shape) != spatial_dims:
            raise ValueError(f"in_shape {tuple(in_shape)} must have {spatial_dims} entries.")
        div = 2 ** len(channels)
        if any(s % div for s in in_shape):
            raise ValueError(f"in_shape {tuple(in_shape)} must be divisible by 2**len(channels) = {div}.")
        self.in_shape = tuple(in_shape)
        self.in_channels = in_channels
        self.vae = VarAutoEncoder(
            spatial_dims=spatial_dims,
            in_shape=(in_channels, *in_shape),
            out_channels=in_channels,
            latent_size=latent_size,
            channels=tuple(channels),
            strides=(2,) * len(channels),
            use_sigmoid=False,
            use_mean_at_inference=True,
        )
        self._dice = DiceLoss(include_background=include_background or in_channels == 1, sigmoid=True, reduction="none")

    def _check(self, mask: torch.Tensor) -> None:
        if (
            mask.ndim != len(self.in_shape) + 2
            or mask.shape[1] != self.in_channels
            or (tuple(mask.shape[2:]) != self.in_shape)
        ):
            raise ValueError(
                f"ShapeVAE expects masks (B, {self.in_channels}, *{self.in_shape}), got {tuple(mask.shape)}; "
                "resample masks to in_shape first."
            )

    def forward(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check(mask)
        return self.vae(mask)

    @torch.no_grad()
    def reconstruction_loss(self, mask: torch.Tensor) -> torch.Tensor:
        """Per-case Dice loss between ``mask`` and its (posterior-mean) reconstruction, shape (B,).

        Runs in eval mode (restoring the previous mode), so it is deterministic.
        """
        was_training = self.training
        self.eval()
        try:
            recon = self(mask)[0].float()
        finally:
            self.train(was_training)
        return self._dice(recon, mask.float()).flatten(1).mean(dim=1)
