"""The UnitedNet torch module (scvi-tools ``BaseModuleClass``)."""

from ._module import UnitedNetModule
from ._perturbation import UnitedNetPerturbationModule
from ._weighting import LossBalancer

__all__ = ["LossBalancer", "UnitedNetModule", "UnitedNetPerturbationModule"]
