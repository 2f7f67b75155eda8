"""The UnitedNet torch module (scvi-tools ``BaseModuleClass``)."""

from ._module import UnitedNetModule
from ._perturbation import UnitedNetPerturbationModule

__all__ = ["UnitedNetModule", "UnitedNetPerturbationModule"]
