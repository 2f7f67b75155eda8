"""UnitedNet models (scvi-tools ``BaseModelClass``)."""

from ._model import UnitedNetModel

__all__ = ["UnitedNetModel"]
