"""Plots that read what :mod:`unitednet.tl` wrote."""

from ._basic import cross_modal_matrix, embedding, history
from ._perturbation import perturbation
from ._relevance import cross_modal_relevance, relevance
from ._spatial import spatial

__all__ = [
    "cross_modal_matrix",
    "cross_modal_relevance",
    "embedding",
    "history",
    "perturbation",
    "relevance",
    "spatial",
]
