"""Plots that read what :mod:`unitednet.tl` wrote."""

from ._basic import cross_modal_matrix, embedding, history
from ._relevance import cross_modal_relevance, relevance

__all__ = ["cross_modal_matrix", "cross_modal_relevance", "embedding", "history", "relevance"]
