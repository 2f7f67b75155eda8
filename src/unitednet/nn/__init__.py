"""Building blocks of the UnitedNet module: MLPs and encoders, modality fusion, group heads and discriminators."""

from ._base import (
    MLP,
    Discriminator,
    GroupHeads,
    ModalityFusion,
    ResidualMLP,
    SparseInputLinear,
    VariationalEncoder,
    make_encoder,
)

__all__ = [
    "MLP",
    "Discriminator",
    "GroupHeads",
    "ModalityFusion",
    "ResidualMLP",
    "SparseInputLinear",
    "VariationalEncoder",
    "make_encoder",
]
