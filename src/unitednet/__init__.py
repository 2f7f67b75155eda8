"""Explainable multi-task learning on paired multi-modal single-cell data."""

from importlib.metadata import version

from . import datasets, pl, pp, tl

__all__ = ["datasets", "pl", "pp", "tl"]
__version__ = version("unitednet")
