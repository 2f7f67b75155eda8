from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mudata import MuData
from scanpy.plotting import palettes

BACKGROUND = "#d9d9d9"
"""Colour of cells outside ``mask`` and of cells without a value."""


def spatial(
    mdata: MuData | ad.AnnData,
    *,
    color: str | Sequence[str],
    spatial_key: str = "spatial",
    mask: str | np.ndarray | pd.Series | None = None,
    palette: Mapping[str, str] | Sequence[str] | None = None,
    size: float | None = None,
    cmap: str = "viridis",
    ncols: int = 4,
    legend: bool = True,
    invert_yaxis: bool = False,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Cells at their tissue coordinates, one panel per ``obs`` column, e.g. predicted regions beside the truth.

    Categorical panels share one colour per category, so a predicted region has the colour of the same true
    region (``color=["Region", "unitednet_group"]``). Relabel unsupervised groups first (e.g. with
    :func:`unitednet.tl.match_groups`) to compare them with the truth by colour. Nothing is written to ``mdata``.

    Parameters
    ----------
    mdata
        MuData (or AnnData) with the coordinates and the ``obs`` columns.
    color
        ``obs`` column(s) to draw, one panel each: categorical (or string / boolean) columns get the shared
        palette, numeric columns a colour map and a colour bar. Missing values are drawn grey.
    spatial_key
        obsm key of the cells x 2 coordinates, looked up in ``mdata.obsm`` and then in each modality's ``obsm``.
    mask
        Boolean ``obs`` column or array: only these cells are coloured, the others are drawn grey behind them
        (e.g. the held-out test area).
    palette
        Colour per category (mapping), or a list of colours assigned to the categories in order. By default, the
        colours scanpy stored in ``uns[f"{column}_colors"]`` for a column (read only), else scanpy's default
        palettes.
    size
        Marker size (points²); default scales with the number of cells.
    cmap
        Colour map of numeric columns.
    ncols
        Panels per row.
    legend
        Draw one legend of the categories of all categorical panels, right of the figure.
    invert_yaxis
        Flip the vertical axis (image coordinates).
    axes
        Axes to draw into, one per column.

    Returns
    -------
    The figure. ``mdata`` is not modified.
    """
    columns = [color] if isinstance(color, str) else list(color)
    if not columns:
        raise ValueError("Give at least one obs column in `color`.")
    obs = mdata.obs
    missing = [c for c in columns if c not in obs]
    if missing:
        raise KeyError(f"Columns {missing} are not in mdata.obs (available: {list(obs.columns)}).")
    coords = _spatial_coordinates(mdata, spatial_key)
    n_cells = coords.shape[0]
    shown = _mask(mask, obs, n_cells)
    if axes is not None and len(axes) != len(columns):
        raise ValueError(f"Give one axes per column: {len(columns)} columns, {len(axes)} axes.")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}.")

    categorical = {c: _is_categorical(obs[c]) for c in columns}
    categories = _shared_categories([obs[c] for c in columns if categorical[c]])
    colors = _palette(categories, palette, mdata, [c for c in columns if categorical[c]])

    if axes is None:
        n_cols = min(ncols, len(columns))
        n_rows = int(np.ceil(len(columns) / n_cols))
        # panels shaped like the tissue: 4.5 inches high, as wide as the coordinates' aspect ratio asks
        span = np.ptp(coords, axis=0)
        width = float(np.clip(4.5 * span[0] / span[1], 2.0, 9.0)) if span[1] > 0 else 4.5
        fig, grid = plt.subplots(n_rows, n_cols, figsize=((width + 1.0) * n_cols, 4.5 * n_rows), squeeze=False)
        axes = list(grid.ravel())
        for extra in axes[len(columns) :]:
            extra.set_visible(False)
    fig = axes[0].figure
    size = size if size is not None else float(np.clip(12000.0 / max(n_cells, 1), 0.3, 30.0))
    any_categorical = False
    for ax, column in zip(axes, columns, strict=False):
        values = obs[column]
        ax.scatter(coords[~shown, 0], coords[~shown, 1], s=size, c=BACKGROUND, linewidths=0, rasterized=True)
        idx = np.flatnonzero(shown)
        if categorical[column]:
            codes, names = pd.factorize(values.astype(object).to_numpy()[idx])  # missing values: code -1
            table = np.array([to_rgba(colors[str(name)]) for name in names] + [to_rgba(BACKGROUND)]).reshape(-1, 4)
            face = table[codes]
            ax.scatter(coords[idx, 0], coords[idx, 1], s=size, c=face, linewidths=0, rasterized=True)
            any_categorical = True
        else:
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)[idx]
            finite = np.isfinite(numbers)
            missing = idx[~finite]
            ax.scatter(coords[missing, 0], coords[missing, 1], s=size, c=BACKGROUND, linewidths=0, rasterized=True)
            points = ax.scatter(
                coords[idx[finite], 0],
                coords[idx[finite], 1],
                s=size,
                c=numbers[finite],
                cmap=cmap,
                linewidths=0,
                rasterized=True,
            )
            fig.colorbar(points, ax=ax, shrink=0.7)
        ax.set_title(column)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if invert_yaxis:
            ax.invert_yaxis()
    if legend and any_categorical and categories:
        handles = [
            Line2D(
                [], [], marker="o", linestyle="", markersize=6, markerfacecolor=colors[c], markeredgewidth=0, label=c
            )
            for c in categories
        ]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="small")
    return fig


def _spatial_coordinates(mdata: MuData | ad.AnnData, spatial_key: str) -> np.ndarray:
    if not isinstance(mdata, MuData | ad.AnnData):
        raise TypeError(f"Expected a MuData or an AnnData, got {type(mdata).__name__}.")
    sources = [("mdata.obsm", mdata.obsm)]
    if isinstance(mdata, MuData):
        sources += [(f"mdata.mod[{m!r}].obsm", a.obsm) for m, a in mdata.mod.items() if a.n_obs == mdata.n_obs]
    for _, obsm in sources:
        if spatial_key in obsm:
            value = obsm[spatial_key]
            coords = np.asarray(value.to_numpy() if isinstance(value, pd.DataFrame) else value, dtype=float)
            if coords.ndim != 2 or coords.shape[1] < 2:
                raise ValueError(f"obsm[{spatial_key!r}] must be cells x 2 (or more) coordinates, got {coords.shape}.")
            return coords[:, :2]
    raise KeyError(
        f"No coordinates under obsm[{spatial_key!r}] in {', '.join(w for w, _ in sources)}; pass spatial_key=..."
    )


def _mask(mask, obs: pd.DataFrame, n_cells: int) -> np.ndarray:
    if mask is None:
        return np.ones(n_cells, dtype=bool)
    if isinstance(mask, str):
        if mask not in obs:
            raise KeyError(f"mask={mask!r} is not a column of mdata.obs.")
        mask = obs[mask]
    values = np.asarray(mask)
    if values.shape != (n_cells,) or values.dtype != bool:
        raise ValueError(f"mask must be a boolean obs column or array of {n_cells} values (one per cell).")
    return values


def _is_categorical(values: pd.Series) -> bool:
    return (
        isinstance(values.dtype, pd.CategoricalDtype)
        or not pd.api.types.is_numeric_dtype(values.dtype)
        or (pd.api.types.is_bool_dtype(values.dtype))
    )


def _shared_categories(series: Sequence[pd.Series]) -> list[str]:
    """Union of the categories of the columns, in order of first appearance (declared order for categoricals)."""
    seen: dict[str, None] = {}
    for values in series:
        if isinstance(values.dtype, pd.CategoricalDtype):
            present = set(values.dropna().astype(str))
            names = [str(c) for c in values.cat.categories if str(c) in present]
        else:
            names = sorted({str(v) for v in values.dropna()})
        for name in names:
            seen.setdefault(name, None)
    return list(seen)


def _palette(
    categories: list[str], palette, mdata: MuData | ad.AnnData, columns: Sequence[str]
) -> dict[str, str | tuple]:
    if isinstance(palette, Mapping):
        missing = [c for c in categories if c not in palette]
        if missing:
            raise KeyError(f"palette has no colour for categories {missing}.")
        return {c: palette[c] for c in categories}
    if palette is not None:
        palette = list(palette)
        if len(palette) < len(categories):
            raise ValueError(f"palette has {len(palette)} colours for {len(categories)} categories.")
        return dict(zip(categories, palette, strict=False))
    colors: dict[str, str | tuple] = {}
    for column in columns:  # colours scanpy stored for a column, read only
        values = mdata.obs[column]
        stored = mdata.uns.get(f"{column}_colors")
        if isinstance(values.dtype, pd.CategoricalDtype) and stored is not None:
            stored = list(stored)
            if len(stored) == len(values.cat.categories):
                for name, value in zip(values.cat.categories, stored, strict=True):
                    colors.setdefault(str(name), value)
    free = [c for c in categories if c not in colors]
    if free:
        n = len(categories)
        base = palettes.default_20 if n <= 20 else palettes.default_28 if n <= 28 else palettes.default_102
        used = {to_rgba(v) for v in colors.values()}
        pool = [c for c in base if to_rgba(c) not in used] or list(base)
        for i, name in enumerate(free):
            colors[name] = pool[i % len(pool)]
    return {c: colors[c] for c in categories}
