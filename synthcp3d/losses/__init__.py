"""synthcp3d.losses: GAN losses, the comparator loss (paper eq. 8) and the shape-VAE loss."""

from .comparator import ComparatorLoss
from .gan import PerceptualTerm, discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from .vae import VAELoss

__all__ = [
    "ComparatorLoss",
    "PerceptualTerm",
    "VAELoss",
    "discriminator_hinge_loss",
    "feature_matching_loss",
    "generator_hinge_loss",
]
