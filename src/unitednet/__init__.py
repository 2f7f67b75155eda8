"""Explainable multi-task learning on paired multi-modal single-cell data."""

from importlib.metadata import version

from . import datasets, model, pl, pp, tl
from .model import UnitedNetModel, UnitedNetPerturbationModel

__all__ = ["UnitedNetModel", "UnitedNetPerturbationModel", "datasets", "model", "pl", "pp", "tl"]
__version__ = version("unitednet")
