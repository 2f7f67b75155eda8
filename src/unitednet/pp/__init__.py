"""Preprocessing: build extra modalities from the data before training (scanpy style)."""

from ._niche import niche

__all__ = ["niche"]
