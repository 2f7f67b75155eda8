"""UnitedNet models (scvi-tools ``BaseModelClass``)."""

from ._model import UnitedNetModel
from ._perturbation import UnitedNetPerturbationModel

__all__ = ["UnitedNetModel", "UnitedNetPerturbationModel"]
