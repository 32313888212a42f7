"""synthcp3d.losses: GAN losses, the comparator loss (paper eq. 8), the shape-VAE loss and a segmenter loss with an
ignore label."""

from .comparator import ComparatorLoss
from .gan import PerceptualTerm, discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from .segmentation import DiceCEIgnoreLoss
from .vae import VAELoss

__all__ = [
    "ComparatorLoss",
    "DiceCEIgnoreLoss",
    "PerceptualTerm",
    "VAELoss",
    "discriminator_hinge_loss",
    "feature_matching_loss",
    "generator_hinge_loss",
]
