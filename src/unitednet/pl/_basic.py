from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from unitednet._constants import RESULT_KEYS

if TYPE_CHECKING:
    from unitednet.model import UnitedNetModel


def embedding(
    mdata: MuData,
    *,
    basis: str = f"{RESULT_KEYS.LATENT}_umap",
    color: str | Sequence[str] | None = None,
    show: bool | None = None,
    **kwargs,
) -> Figure | Axes | list[Axes] | None:
    """Scatter plot of a 2-D embedding in ``mdata.obsm`` coloured by ``mdata.obs`` columns (scanpy look).

    Parameters
    ----------
    mdata
        MuData with ``obsm[basis]`` (e.g. from :func:`unitednet.tl.umap`).
    basis
        obsm key of the 2-D coordinates.
    color
        obs column(s) to colour by, e.g. ``["cell_type", "unitednet_group"]``.
    show
        Show the figure (scanpy semantics); ``False`` returns the axes.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``frameon``, ``legend_loc``, ``save``, ...).

    Returns
    -------
    What :func:`scanpy.pl.embedding` returns.
    """
    if basis not in mdata.obsm:
        raise KeyError(f"mdata.obsm has no {basis!r}; compute it with `unitednet.tl.umap(mdata)`.")
    colors = [color] if isinstance(color, str) else list(color or [])
    missing = [c for c in colors if c not in mdata.obs]
    if missing:
        raise KeyError(f"Columns {missing} are not in mdata.obs.")
    tmp = ad.AnnData(obs=mdata.obs[colors].copy(), obsm={"X_plot": np.asarray(mdata.obsm[basis])[:, :2]})
    return sc.pl.embedding(tmp, basis="X_plot", color=colors or None, show=show, **kwargs)


def cross_modal_matrix(
    metrics: dict | pd.DataFrame,
    *,
    value: str = "r2",
    ax: Axes | None = None,
    cmap: str = "viridis",
) -> Axes:
    """Heatmap of a source x target score matrix (e.g. variance-weighted R² from :func:`unitednet.tl.evaluate`).

    Parameters
    ----------
    metrics
        The dict returned by :func:`~unitednet.tl.evaluate` (or stored in ``mdata.uns["unitednet"]["metrics"]``),
        or a DataFrame with targets as rows and sources as columns.
    value
        ``"r2"`` or ``"pearson"`` when ``metrics`` is a dict.
    ax
        Axes to draw into.
    cmap
        Colour map.

    Returns
    -------
    The axes.
    """
    df = metrics if isinstance(metrics, pd.DataFrame) else metrics.get(value)
    if df is None:
        raise KeyError(f"No {value!r} matrix in the metrics; run unitednet.tl.evaluate on >= 2 modalities.")
    df = pd.DataFrame(df)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * df.shape[1] + 2, 1.0 * df.shape[0] + 1.5))
    im = ax.imshow(df.to_numpy(dtype=float), cmap=cmap, vmin=min(0.0, np.nanmin(df.to_numpy(dtype=float))), vmax=1.0)
    ax.set_xticks(range(df.shape[1]), df.columns)
    ax.set_yticks(range(df.shape[0]), df.index)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    for i in range(df.shape[0]):
        for j in range(df.shape[1]):
            v = df.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.5 else "k")
    ax.figure.colorbar(im, ax=ax, label=value)
    return ax


_WEIGHT_PREFIX = "weight_"


def history(
    model: UnitedNetModel,
    *,
    terms: Sequence[str] | None = None,
    weights: bool | None = None,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Training and validation curves of the loss terms, one panel per term, and the effective loss weights.

    Parameters
    ----------
    model
        Trained model (reads :attr:`~unitednet.model.UnitedNetModel.history`).
    terms
        Loss terms to draw (e.g. ``["reconstruction", "translation"]``); all logged terms by default.
    weights
        Add a last panel, "effective loss weights", with one curve per balanced term (``history["weight_<term>"]``,
        logged for models with ``loss_weighting`` other than ``"fixed"``). ``None``: when they were logged.
    axes
        Axes to draw into, one per term (plus one for the weights).

    Returns
    -------
    The figure.
    """
    hist = model.history
    if not hist:
        raise KeyError("The model has no training history; train it first with `model.train(...)`.")
    names = sorted({k.rsplit("_", 1)[0] for k in hist if k.endswith(("_train", "_validation"))})
    terms = list(terms) if terms is not None else names
    unknown = sorted(set(terms) - set(names))
    if unknown:
        raise KeyError(f"No logged loss terms {unknown}; logged: {names}.")
    weight_keys = sorted(k for k in hist if k.startswith(_WEIGHT_PREFIX))
    if weights and not weight_keys:
        raise KeyError(
            "The model's history has no effective loss weights: they are logged for models built with "
            "loss_weighting='uncertainty' or 'gradnorm'."
        )
    weights = bool(weight_keys) if weights is None else weights
    n_panels = len(terms) + int(weights)
    if axes is None:
        ncols = min(4, n_panels)
        nrows = int(np.ceil(n_panels / ncols))
        fig, axs = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
        axes = list(axs.ravel())
        for extra in axes[n_panels:]:
            extra.set_visible(False)
    elif len(axes) < n_panels:
        raise ValueError(f"Give {n_panels} axes (one per term{' and one for the weights' if weights else ''}).")
    fig = axes[0].figure
    if weights:
        ax = axes[len(terms)]
        for key in weight_keys:
            ax.plot(hist[key].index, hist[key].iloc[:, 0], label=key[len(_WEIGHT_PREFIX) :])
        ax.set_title("effective loss weights")
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
    for ax, term in zip(axes, terms, strict=False):
        for split in ("train", "validation"):
            key = f"{term}_{split}"
            if key in hist:
                ax.plot(hist[key].index, hist[key].iloc[:, 0], label=split)
        ax.set_title(term)
        ax.set_xlabel("epoch")
    axes[0].legend()
    fig.tight_layout()
    return fig
