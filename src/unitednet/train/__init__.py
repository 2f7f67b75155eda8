"""Training of UnitedNet: the Lightning training plan and the data module with its train / validation split."""

from ._data import AdaptationDataModule, CellSource, MixedCellLoader, UnitedNetDataModule, stratified_split
from ._plan import UnitedNetTrainingPlan

__all__ = [
    "AdaptationDataModule",
    "CellSource",
    "MixedCellLoader",
    "UnitedNetDataModule",
    "UnitedNetTrainingPlan",
    "stratified_split",
]
