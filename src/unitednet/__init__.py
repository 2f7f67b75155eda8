"""Explainable multi-task learning on paired multi-modal single-cell data."""

from importlib.metadata import version

from . import datasets, model, pl, tl
from .model import UnitedNetModel

__all__ = ["UnitedNetModel", "datasets", "model", "pl", "tl"]
__version__ = version("unitednet")
