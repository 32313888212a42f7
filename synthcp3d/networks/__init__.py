"""synthcp3d.networks: every class takes ``spatial_dims`` (2 or 3) and serves 2D images and 3D volumes."""

from .comparator import DirectPredictor, RegionRidgeComparator, SiameseComparator
from .discriminator import ConditionalDiscriminator
from .segmenter import Segmenter
from .spade import SPADEGenerator, SPADENorm, SPADEResBlock
from .vae import ShapeVAE

__all__ = [
    "ConditionalDiscriminator",
    "DirectPredictor",
    "SPADEGenerator",
    "SPADENorm",
    "SPADEResBlock",
    "Segmenter",
    "ShapeVAE",
    "RegionRidgeComparator",
    "SiameseComparator",
]
