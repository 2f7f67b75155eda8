"""The UnitedNet torch module (scvi-tools ``BaseModuleClass``)."""

from ._module import UnitedNetModule

__all__ = ["UnitedNetModule"]
