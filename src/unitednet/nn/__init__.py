"""Building blocks of the UnitedNet module: MLPs, modality fusion, group heads and discriminators."""

from ._base import MLP, Discriminator, GroupHeads, ModalityFusion

__all__ = ["MLP", "Discriminator", "GroupHeads", "ModalityFusion"]
