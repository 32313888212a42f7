"""Multi-scale patch discriminator conditioned on (label map, image)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import MultiScalePatchDiscriminator

__all__ = ["ConditionalDiscriminator"]


class ConditionalDiscriminator(nn.Module):
    """MONAI :class:`~monai.networks.nets.MultiScalePatchDiscriminator` on the concatenation (label ⊕ image).

    Wrapped, not replaced: the wrapper only concatenates the condition, and checks the input size up
    front. MONAI's scale ``i`` is a patch discriminator with ``num_layers_d * (i + 1)`` layers (deeper,
    rather than on a downsampled input as in pix2pixHD); when a normalised layer's output shrinks to a
    single voxel MONAI fails deep inside the norm layer, so :meth:`check_shape` raises a ``ValueError``
    naming the scale and the largest ``num_layers_d`` that fits.

    Args:
        spatial_dims: 2 or 3.
        label_nc: channels of the one-hot label map.
        image_channels: channels of the image.
        channels: width of the first layer (doubles per layer).
        num_d: number of discriminators (scales).
        num_layers_d: layers of the first discriminator (scale ``i`` has ``num_layers_d * (i + 1)``).
        norm: normalisation of the hidden layers (``"INSTANCE"`` as SPADE, ``"BATCH"``, ...).

    Shapes: ``seg`` (B, label_nc, *S), ``image`` (B, image_channels, *S) -> (outputs, features): ``outputs``
    a list of ``num_d`` patch-logit maps (B, 1, *S_i); ``features`` a list per scale of the intermediate
    feature maps (for feature matching).
    """

    def __init__(
        self,
        spatial_dims: int,
        label_nc: int,
        image_channels: int = 1,
        channels: int = 64,
        num_d: int = 2,
        num_layers_d: int = 3,
        norm: str = "INSTANCE",
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.num_d = num_d
        self.num_layers_d = num_layers_d
        self.has_norm = norm is not None
        self.net = MultiScalePatchDiscriminator(
            num_d=num_d,
            num_layers_d=num_layers_d,
            spatial_dims=spatial_dims,
            channels=channels,
            in_channels=label_nc + image_channels,
            out_channels=1,
            norm=norm,
            minimum_size_im=2 ** (num_layers_d * num_d + 1),
        )

    @staticmethod
    def layer_shapes(shape: Sequence[int], num_layers: int) -> list[tuple[int, ...]]:
        """Spatial shapes after each normalised layer of a patch discriminator with ``num_layers`` layers
        (kernel 4, padding 1: stride-2 layers halve a size, the last stride-1 layer subtracts one)."""
        s = [n // 2 for n in shape]  # initial conv, stride 2, no norm
        out = []
        for layer in range(num_layers):
            s = [n // 2 for n in s] if layer < num_layers - 1 else [n - 1 for n in s]
            out.append(tuple(s))
        return out

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` if some scale's normalised layer would get one voxel or fewer."""
        for i in range(self.num_d):
            shapes = self.layer_shapes(shape, self.num_layers_d * (i + 1))
            if any(min(s) < 1 or (self.has_norm and math.prod(s) < 2) for s in shapes):
                fits = [n for n in range(1, 9) if self._fits(shape, n * self.num_d)]
                hint = f"num_layers_d <= {fits[-1]}" if fits else "a larger input"
                raise ValueError(
                    f"ConditionalDiscriminator: input {tuple(shape)} is too small for scale {i} "
                    f"({self.num_layers_d * (i + 1)} layers: shapes {shapes}); use {hint}, fewer scales "
                    "(num_d) or a larger patch."
                )

    def _fits(self, shape: Sequence[int], num_layers: int) -> bool:
        return all(min(s) >= 1 and math.prod(s) >= 2 for s in self.layer_shapes(shape, num_layers))

    def forward(self, seg: torch.Tensor, image: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        if seg.shape[2:] != image.shape[2:]:
            raise ValueError(f"label map {tuple(seg.shape)} and image {tuple(image.shape)} differ in size.")
        self.check_shape(image.shape[2:])
        return self.net(torch.cat([seg, image.to(seg.dtype)], dim=1))
