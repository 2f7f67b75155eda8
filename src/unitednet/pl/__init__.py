"""Plots that read what :mod:`unitednet.tl` wrote."""

from ._basic import cross_modal_matrix, embedding, history

__all__ = ["cross_modal_matrix", "embedding", "history"]
