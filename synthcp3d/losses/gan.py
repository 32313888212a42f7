"""GAN losses for the image-synthesis module: hinge adversarial terms, discriminator feature matching and an
optional perceptual term that only uses weights already on disk."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss

__all__ = ["PerceptualTerm", "discriminator_hinge_loss", "feature_matching_loss", "generator_hinge_loss"]

logger = logging.getLogger(__name__)

_hinge = PatchAdversarialLoss(criterion="hinge", reduction="mean")


def discriminator_hinge_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Hinge loss of a (multi-scale) discriminator, via MONAI ``PatchAdversarialLoss(criterion="hinge")``.

    MONAI squashes each logit with tanh before the hinge, so every term is bounded (the NVlabs loss uses raw
    logits); kept for consistency with MONAI's generative models.

    Args:
        real: per-scale logits on real pairs, each (B, 1, *S_i).
        fake: per-scale logits on generated pairs (generator output detached).

    Returns:
        scalar: mean over scales of ``E[relu(1 - D(real))] + E[relu(1 + D(fake))]``.
    """
    return _hinge(real, target_is_real=True, for_discriminator=True) + _hinge(
        fake, target_is_real=False, for_discriminator=True
    )


def generator_hinge_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """Generator adversarial loss on per-scale discriminator logits of generated pairs (scalar)."""
    return _hinge(fake, target_is_real=True, for_discriminator=False)


def feature_matching_loss(
    fake_features: Sequence[Sequence[torch.Tensor]], real_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """Discriminator feature-matching loss (pix2pixHD/SPADE): mean over scales of the summed L1 distances
    between the intermediate features of generated and real pairs. Real features are detached.

    Args:
        fake_features: per scale, the list of intermediate maps for generated pairs.
        real_features: same structure for real pairs.

    Returns:
        scalar loss (multiply by SPADE's ``lambda_feat`` = 10 outside).
    """
    if len(fake_features) != len(real_features) or len(fake_features) == 0:
        raise ValueError("fake and real features need the same, non-zero number of scales.")
    total = fake_features[0][0].new_zeros((), dtype=torch.float32)
    for fake_scale, real_scale in zip(fake_features, real_features, strict=True):
        if len(fake_scale) != len(real_scale):
            raise ValueError("fake and real features differ in their number of layers.")
        for f, r in zip(fake_scale, real_scale, strict=True):
            total = total + F.l1_loss(f.float(), r.detach().float())
    return total / len(fake_features)


def _load_network(path: str) -> nn.Module:
    """A ``torch.export`` archive (``.pt2``) or a TorchScript file, loaded on CPU."""
    if path.endswith(".pt2"):
        return torch.export.load(path).module()
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13 but still loads
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(path, map_location="cpu")


class PerceptualTerm(nn.Module):
    """Optional perceptual (feature L1) loss from a network whose weights are already on disk.

    MONAI's :class:`~monai.losses.PerceptualLoss` is not used: every network type it offers downloads its
    weights (or needs torchvision), and nothing is downloaded here. The network (returning a tensor or a
    list of feature maps) is a ``torch.export`` archive (``.pt2``), a TorchScript file, or a module passed in.
    With neither (or a missing file) the term is disabled: it returns 0 and warns (once, when built) that it is off.

    Args:
        weights: path of a ``.pt2`` (torch.export) or TorchScript feature network, or None.
        network: an ``nn.Module`` to use instead of ``weights``.
        slices_2d: apply a 2D network to 3D volumes slice by slice along the last axis.

    Shapes: ``fake``, ``real`` (B, C, *S) -> scalar.
    """

    def __init__(
        self, weights: str | os.PathLike | None = None, network: nn.Module | None = None, slices_2d: bool = False
    ) -> None:
        super().__init__()
        self.slices_2d = slices_2d
        if network is None and weights is not None and os.path.isfile(weights):
            network = _load_network(os.fspath(weights))
        self.network = network
        if network is not None:
            try:
                self.network.eval()
            except NotImplementedError:  # a torch.export module is fixed in the mode it was exported in
                pass
            for p in self.network.parameters():
                p.requires_grad_(False)
        else:
            reason = "no weights given" if weights is None else f"weights file {weights!s} not found"
            self.reason = f"perceptual loss is OFF ({reason}; nothing is downloaded)"
            warnings.warn(self.reason, stacklevel=2)
            logger.info(self.reason)

    def train(self, mode: bool = True) -> PerceptualTerm:
        """Only this wrapper's flag changes: the feature network stays frozen in eval mode."""
        self.training = mode
        return self

    @property
    def enabled(self) -> bool:
        return self.network is not None

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.slices_2d and x.ndim == 5:
            x = x.permute(0, 4, 1, 2, 3).reshape(-1, *x.shape[1:4])
        out = self.network(x)
        return [out] if isinstance(out, torch.Tensor) else list(out)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if self.network is None:
            return fake.new_zeros((), dtype=torch.float32)
        total = fake.new_zeros((), dtype=torch.float32)
        for f, r in zip(self._features(fake), self._features(real), strict=True):
            total = total + F.l1_loss(f.float(), r.detach().float())
        return total
