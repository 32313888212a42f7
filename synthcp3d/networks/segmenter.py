"""Segmentation model M: AH-Net (MONAI) with a feature/dropout head for anomaly scoring and MC dropout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import Conv, Norm
from monai.networks.nets import AHNet, UNet
from monai.networks.nets.ahnet import Final

__all__ = ["Segmenter"]


class Segmenter(nn.Module):
    """AH-Net segmenter (Liu et al. 2018, as the paper's pancreas model) that exposes logits, the last-layer
    feature map (paper eq. 9) and Monte-Carlo dropout, for 2D and 3D through one class.

    MONAI :class:`~monai.networks.nets.AHNet` (``pretrained=False``: trained from scratch, no download) is
    reused whole except for its ``final`` block, which maps the decoder straight to class logits; it is
    replaced by the same MONAI ``Final`` block emitting ``feature_channels`` maps, then BatchNorm + ReLU
    (the *features*, at input resolution), dropout and a 1^d conv classifier. This gives eq. 9 a per-voxel
    feature vector and MC dropout a dropout layer before the classifier; a second dropout follows AH-Net's
    deepest encoder stage (``layer4``). AHNet itself has no dropout to enable.

    2D: MONAI's AHNet accepts ``spatial_dims=2`` by taking the trailing entries of its 3D kernel tuples, so
    the second image axis plays the role of AH-Net's through-plane axis (3x1 convolutions in the encoder
    blocks, 1x3 in the decoder's pseudo-3D layers). It trains like any 2D network; it is just anisotropic.

    ``backbone="unet"`` swaps the body for a MONAI :class:`~monai.networks.nets.UNet` of configurable width
    (``unet_channels``, dropout in every unit): AHNet has fixed widths (~38 M parameters in 3D), which is
    slow to train on CPU; the head and API are unchanged.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: number of classes.
        backbone: ``"ahnet"`` or ``"unet"``.
        feature_channels: channels of the feature map returned by :meth:`forward_features`.
        dropout: dropout probability (bottleneck and head); must be > 0 for :meth:`mc_predict`.
        psp_block_num: AHNet pyramid pooling blocks (0..4); 2 suits 64^3/96^3 patches.
        unet_channels: UNet widths (one stride-2 level between consecutive entries).
        unet_res_units: residual units per UNet level (MONAI ``num_res_units``).

    Valid input sizes: ``"ahnet"`` needs every axis divisible by 32 and every axis but the last also by
    ``2 ** (psp_block_num + 3)``; training with batch size 1 also needs one axis >= 64 (BatchNorm on the 1-voxel
    deepest stage). ``"unet"`` needs divisibility by ``2 ** (len(unet_channels) - 1)``. Others raise ValueError.

    Shapes: ``x`` (B, in_channels, *S) -> logits (B, out_channels, *S); features (B, feature_channels, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        out_channels: int = 2,
        backbone: str = "ahnet",
        feature_channels: int = 32,
        dropout: float = 0.2,
        psp_block_num: int = 2,
        unet_channels: Sequence[int] = (16, 32, 64, 128),
        unet_res_units: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.backbone = backbone
        self.dropout = dropout
        if backbone == "ahnet":
            body = AHNet(
                spatial_dims=spatial_dims,
                in_channels=in_channels,
                out_channels=out_channels,
                psp_block_num=psp_block_num,
                pretrained=False,
            )
            body.layer4 = nn.Sequential(body.layer4, nn.Dropout(dropout))
            body.final = Final(spatial_dims, body.final.norm.num_features, feature_channels)
            div = [2 ** (psp_block_num + 3)] * (spatial_dims - 1) + [1]
            self._divisors = tuple(max(32, d) for d in div)
        elif backbone == "unet":
            body = UNet(
                spatial_dims=spatial_dims,
                in_channels=in_channels,
                out_channels=feature_channels,
                channels=tuple(unet_channels),
                strides=(2,) * (len(unet_channels) - 1),
                num_res_units=unet_res_units,
                dropout=dropout,
                bias=False,  # every UNet conv is followed by a norm (the last by feature_act): biases are redundant
            )
            self._divisors = (2 ** (len(unet_channels) - 1),) * spatial_dims
        else:
            raise ValueError(f"backbone must be 'ahnet' or 'unet', got {backbone!r}.")
        self.body = body
        self.feature_act = nn.Sequential(Norm[Norm.BATCH, spatial_dims](feature_channels), nn.ReLU())
        self.head_dropout = nn.Dropout(dropout)
        self.classifier = Conv[Conv.CONV, spatial_dims](feature_channels, out_channels, kernel_size=1)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected (B, C, *{self.spatial_dims} dims), got {tuple(x.shape)}.")
        shape = tuple(x.shape[2:])
        if any(s % d for s, d in zip(shape, self._divisors, strict=True)):
            raise ValueError(
                f"Segmenter({self.backbone}): spatial shape {shape} is invalid; each axis must be a multiple "
                f"of {self._divisors} respectively (e.g. {tuple(2 * d for d in self._divisors)})."
            )

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logits, features)``: (B, out_channels, *S) and the last-layer features
        (B, feature_channels, *S) that feed the classifier (paper eq. 9)."""
        self._check(x)
        features = self.feature_act(self.body(x))
        return self.classifier(self.head_dropout(features)), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def set_mc_dropout(self, enabled: bool) -> None:
        """Put only the dropout layers in train mode (``enabled``) or back in the module's mode."""
        for m in self.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train(enabled or self.training)

    @torch.no_grad()
    def mc_predict(self, x: torch.Tensor, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Monte-Carlo dropout (Gal & Ghahramani 2016): ``n`` stochastic passes with dropout on and
        BatchNorm in eval mode.

        Returns:
            ``(mean_probs, variance)``: mean softmax (B, out_channels, *S) and its per-class variance over
            the passes (same shape). Entropy of ``mean_probs`` is the usual voxel uncertainty.
        """
        if self.dropout <= 0:
            raise ValueError("mc_predict needs dropout > 0.")
        if n < 2:
            raise ValueError(f"mc_predict needs n >= 2 passes, got {n}.")
        was_training = self.training
        self.eval()
        self.set_mc_dropout(True)
        try:
            s1 = s2 = None
            for _ in range(n):
                p = torch.softmax(self(x).float(), dim=1)
                s1 = p if s1 is None else s1 + p
                s2 = p * p if s2 is None else s2 + p * p
            mean = s1 / n
            var = (s2 / n - mean * mean).clamp_min(0)
        finally:
            self.set_mc_dropout(False)
            self.train(was_training)
        return mean, var
