"""Spatial niche modality: the distance-weighted mean expression of each cell's spatial neighbours."""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Literal

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse
from scipy.spatial import KDTree

from unitednet.model._validation import check_finite, check_modalities

Weighting = Literal["inverse_distance", "gaussian", "uniform"]
WEIGHTINGS: tuple[str, ...] = ("inverse_distance", "gaussian", "uniform")

UNS_KEY = "niche"
"""Key of the parameters in the niche modality's ``uns``."""
CONNECTIVITIES_KEY = "spatial_connectivities"
DISTANCES_KEY = "spatial_distances"
N_NEIGHBORS_KEY = "n_neighbors"
FEATURE_KEY = "feature"


def niche(
    data: ad.AnnData | MuData,
    *,
    modality: str | None = None,
    spatial_key: str = "spatial",
    n_neighbors: int | None = 10,
    radius: float | None = None,
    weighting: Weighting = "inverse_distance",
    bandwidth: float | None = None,
    include_self: bool = False,
    layer: str | None = None,
    key_added: str = "niche",
    n_jobs: int = 1,
    copy: bool = False,
) -> MuData | None:
    """Add a niche modality: for each cell, the weighted mean expression of its spatial neighbours.

    The neighbours come from a sparse k-nearest-neighbour (or radius) graph on the cell coordinates (a k-d tree):
    memory grows as O(cells x neighbours) and time as O(cells x neighbours) plus the k-d tree's O(cells log cells);
    no cells x cells dense matrix is ever formed. The niche of cell
    ``i`` is ``sum_j w_ij x_j`` over its neighbours ``j``, with weights ``w_ij`` that sum to 1 per cell, so it is
    on the scale of the input expression and can be registered as one more gaussian modality of
    :class:`~unitednet.model.UnitedNetModel` (e.g. ``setup_mudata(mdata, modalities=["rna", "niche"])``).

    Parameters
    ----------
    data
        MuData with the expression modality and the coordinates, or an AnnData with both. An AnnData is not
        modified: a new MuData is returned that holds a copy of it.
    modality
        MuData: the modality whose expression is averaged (default: the only modality that is not a niche written
        by this function; required when there are several). AnnData: the name its copy gets in the new MuData
        (default ``"rna"``).
    spatial_key
        Key of the cells x dimensions coordinates, looked up in ``mdata.obsm`` and then in
        ``mdata.mod[modality].obsm`` (``adata.obsm`` for an AnnData). Coordinates must be finite.
    n_neighbors
        Number of neighbours of each cell. With ``radius``, the cap on the neighbours within the radius (the
        nearest ones are kept); ``None`` there keeps every cell within the radius (memory then grows with the
        local density). Must be smaller than the number of cells.
    radius
        Only cells at a distance ``<= radius`` (in coordinate units) are neighbours. ``None``: k nearest neighbours.
    weighting
        ``"inverse_distance"``: ``w_ij ∝ 1 / max(d_ij, d_floor)``, where ``d_floor`` is half the median, over
        cells, of the distance to their nearest neighbour at a positive distance; cells at duplicate coordinates
        (``d_ij = 0``) thus get a large but finite weight. ``"gaussian"``: ``w_ij ∝ exp(-d_ij² / (2 h²))`` with
        ``h = bandwidth``. ``"uniform"``: equal weights (plain mean of the neighbours).
    bandwidth
        Gaussian kernel width ``h`` in coordinate units (only for ``weighting="gaussian"``); default: the median
        distance between neighbours in the graph.
    include_self
        Also count the cell itself as a neighbour at distance 0 (on top of its ``n_neighbors`` others). By default
        the niche describes the surroundings only, as in the published method (its neighbours' weighted mean).
    layer
        Layer of the expression modality to average; ``None``: ``.X``. Normalise (e.g. ``scanpy.pp.normalize_total``
        and ``scanpy.pp.log1p``) beforehand: the values are averaged as they are.
    key_added
        Name of the new modality. An existing modality of that name is replaced only when an earlier call of this
        function wrote it.
    n_jobs
        Worker threads of the neighbour search (``-1``: all cores).
    copy
        MuData input: return a modified copy instead of writing in place. (An AnnData always gives a new MuData.)

    Returns
    -------
    The new MuData for an AnnData input; for a MuData input, the copy when ``copy=True``, else ``None``.

    Writes (nothing else is changed; the expression modality is only read):

    - ``mdata.mod[key_added]``: a new modality, cells x genes, same cells and order as ``mdata``. ``X``: the niche
      expression, ``float32``; dense when the input is dense, CSR when it is sparse. var_names are
      ``f"{key_added}:{gene}"`` (so they never collide with the expression modality's var_names in the MuData);
      ``var["feature"]`` holds the gene names.
    - ``mdata.mod[key_added].obs["n_neighbors"]``: neighbours of each cell (itself included with
      ``include_self``). With ``radius``, a cell with none gets an all-zero niche and a warning says how many.
    - ``mdata.mod[key_added].obsp["spatial_connectivities"]``: the weights ``w_ij`` (CSR ``float32``, rows sum to
      1, one stored entry per cell and neighbour: ``cells x n_neighbors`` entries in k-NN mode), so that
      ``X = obsp["spatial_connectivities"] @ expression``.
    - ``mdata.mod[key_added].obsp["spatial_distances"]``: the distances ``d_ij`` on the same entries (CSR
      ``float64``; duplicate coordinates and the cell itself are stored explicit zeros).
    - ``mdata.mod[key_added].uns["niche"]``: the parameters: ``modality``, ``layer`` (absent for ``.X``),
      ``spatial_key``, ``n_neighbors`` (absent when uncapped), ``radius`` (radius mode only), ``weighting``,
      ``include_self``, ``distance_floor`` (inverse_distance) or ``bandwidth`` (gaussian), as used.
    - AnnData input only: the new MuData also holds the coordinates in ``mdata.obsm[spatial_key]``.

    As for any modality added to a MuData, mudata itself adds ``mdata.obsm[key_added]`` (its boolean mask of the
    modality's cells, all ``True``) and the niche var_names to ``mdata.var``.

    Notes
    -----
    The niche is computed once, over the cells given. Subsetting the MuData afterwards keeps every remaining cell's
    niche as computed (from all its neighbours, including those removed) while ``obsp`` keeps only the pairs
    between remaining cells. Computing it over all cells of a section before a train / test split reads expression
    and coordinates only, never labels.

    Examples
    --------
    >>> import scanpy as sc
    >>> import unitednet as un
    >>> mdata = un.datasets.osmfish()
    >>> sc.pp.normalize_total(mdata["rna"])
    >>> sc.pp.log1p(mdata["rna"])
    >>> un.pp.niche(mdata, n_neighbors=20)
    >>> mdata["niche"]  # 4,839 cells x 33 niche features "niche:Gad2", ...
    """
    if not isinstance(data, MuData | ad.AnnData):
        raise TypeError(f"Expected an AnnData or a MuData, got {type(data).__name__}.")
    for name, value in (("modality", modality), ("key_added", key_added)):
        if value is not None and (not isinstance(value, str) or not value or "." in value):
            raise ValueError(f"{name}={value!r} must be a non-empty string without '.'.")
    _check_parameters(data.n_obs, n_neighbors, radius, weighting, bandwidth, include_self, n_jobs)
    if isinstance(data, MuData):
        if data.is_view and not copy:
            raise ValueError("`data` is a view of a MuData; pass copy=True or call `.copy()` on it first.")
        modality = _resolve_modality(data, modality, key_added)
        _check_spatial_key(spatial_key, modality, key_added)
        coords = _find_coordinates(data, modality, spatial_key)
        mdata = data.copy() if copy else data
        from_anndata = False
    elif isinstance(data, ad.AnnData):
        modality = "rna" if modality is None else modality
        if key_added == modality:
            raise ValueError(f"key_added={key_added!r} equals the expression modality; choose another name.")
        _check_spatial_key(spatial_key, modality, key_added)
        if not data.obs_names.is_unique:
            raise ValueError("obs_names of the AnnData are not unique; call `adata.obs_names_make_unique()` first.")
        coords = _coordinates(data.obsm, spatial_key, "adata.obsm")
        mdata = None
        from_anndata = True

    expression_owner = data if from_anndata else mdata.mod[modality]
    X = _expression(expression_owner, layer, modality)
    n_cells = X.shape[0]

    rows, cols, dist = _neighbour_pairs(coords, n_neighbors, radius, include_self, n_jobs)
    weights, used = _weights(rows, dist, n_cells, weighting, bandwidth)
    counts = np.bincount(rows, minlength=n_cells)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(cols.dtype)
    W = sparse.csr_matrix((weights.astype(np.float32), cols, indptr), shape=(n_cells, n_cells))
    D = sparse.csr_matrix((dist, cols.copy(), indptr.copy()), shape=(n_cells, n_cells))
    # canonical CSR (column indices sorted per row); explicit zero distances stay stored entries
    W.sort_indices()
    D.sort_indices()
    lonely = int((counts == 0).sum())
    if lonely:
        warnings.warn(
            f"{lonely} of {n_cells} cells have no neighbour within radius={radius}; their niche is all zeros. "
            "Increase the radius or use k nearest neighbours (radius=None).",
            UserWarning,
            stacklevel=2,
        )
    values = _average(W, X)

    source = expression_owner
    params: dict = {"modality": modality, "spatial_key": spatial_key, "weighting": weighting}
    if layer is not None:
        params["layer"] = layer
    if n_neighbors is not None:
        params["n_neighbors"] = int(n_neighbors)
    if radius is not None:
        params["radius"] = float(radius)
    params["include_self"] = bool(include_self)
    params.update(used)
    obs_names = source.obs_names.copy()
    new = ad.AnnData(
        X=values,
        obs=pd.DataFrame({N_NEIGHBORS_KEY: counts.astype(np.int64)}, index=obs_names),
        var=pd.DataFrame(
            {FEATURE_KEY: np.asarray(source.var_names, dtype=object)},
            index=pd.Index([f"{key_added}:{name}" for name in source.var_names]),
        ),
        obsp={CONNECTIVITIES_KEY: W, DISTANCES_KEY: D},
        uns={UNS_KEY: params},
    )
    if from_anndata:
        with md.set_options(pull_on_update=False), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            out = MuData({modality: data.copy(), key_added: new})
        out.obsm[spatial_key] = coords.copy()
        return out
    mdata.mod[key_added] = new
    with md.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        mdata.update()
    return mdata if copy else None


# ---------------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------------
def _resolve_modality(mdata: MuData, modality: str | None, key_added: str) -> str:
    if modality is None:
        # niche modalities written earlier are not expression candidates
        candidates = [m for m in mdata.mod if UNS_KEY not in mdata.mod[m].uns]
        if len(candidates) != 1:
            raise ValueError(
                f"The MuData has modalities {list(mdata.mod)}; say which one holds the expression, e.g. modality='rna'."
            )
        modality = candidates[0]
    if modality not in mdata.mod:
        raise KeyError(f"modality={modality!r} is not in the MuData; available: {list(mdata.mod)}.")
    if key_added == modality:
        raise ValueError(f"key_added={key_added!r} equals the expression modality; choose another name.")
    if key_added in mdata.mod and UNS_KEY not in mdata.mod[key_added].uns:
        raise ValueError(
            f"mdata already has a modality {key_added!r} that pp.niche did not write; pass another key_added."
        )
    check_modalities(mdata, [modality])
    return modality


def _check_spatial_key(spatial_key: str, modality: str, key_added: str) -> None:
    if spatial_key in (modality, key_added):
        raise ValueError(
            f"spatial_key={spatial_key!r} equals a modality name; mudata reserves obsm keys named after modalities. "
            "Store the coordinates under another key (e.g. 'spatial')."
        )


def _find_coordinates(mdata: MuData, modality: str, spatial_key: str) -> np.ndarray:
    if spatial_key in mdata.obsm:
        return _coordinates(mdata.obsm, spatial_key, "mdata.obsm")
    if spatial_key in mdata.mod[modality].obsm:
        return _coordinates(mdata.mod[modality].obsm, spatial_key, f"mdata.mod[{modality!r}].obsm")
    keys = [k for k in mdata.obsm if k not in mdata.mod]  # leave out mudata's per-modality masks
    raise KeyError(
        f"No coordinates under spatial_key={spatial_key!r} in mdata.obsm ({keys}) or "
        f"mdata.mod[{modality!r}].obsm ({list(mdata.mod[modality].obsm)}). Store the cells x 2 coordinates there, "
        "e.g. `mdata.obsm['spatial'] = coords`, or pass spatial_key=..."
    )


def _coordinates(obsm, spatial_key: str, where: str) -> np.ndarray:
    if spatial_key not in obsm:
        raise KeyError(
            f"No coordinates under spatial_key={spatial_key!r} in {where} (keys: {list(obsm)}). Store the cells x 2 "
            "coordinates there, e.g. `adata.obsm['spatial'] = coords`, or pass spatial_key=..."
        )
    value = obsm[spatial_key]
    value = value.to_numpy() if isinstance(value, pd.DataFrame) else value
    if sparse.issparse(value):
        raise TypeError(f"{where}[{spatial_key!r}] is sparse; coordinates must be a dense cells x dimensions array.")
    coords = np.asarray(value)
    if coords.ndim != 2 or coords.shape[1] < 1:
        raise ValueError(f"{where}[{spatial_key!r}] must be cells x dimensions (2-D), got shape {coords.shape}.")
    if not np.issubdtype(coords.dtype, np.number) or np.issubdtype(coords.dtype, np.complexfloating):
        raise TypeError(f"{where}[{spatial_key!r}] must hold real numbers, got dtype {coords.dtype}.")
    coords = coords.astype(np.float64, copy=False)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{where}[{spatial_key!r}] has NaN or infinite coordinates for {int(bad.sum())} cells (first at row "
            f"{int(np.flatnonzero(bad)[0])}). Drop those cells first, e.g. `mdata = mdata[mask].copy()`."
        )
    return coords


def _expression(adata: ad.AnnData, layer: str | None, modality: str):
    if layer is not None and layer not in adata.layers:
        raise KeyError(
            f"Layer {layer!r} not found in modality {modality!r}; available layers: {list(adata.layers)}. "
            "Pass layer=None to use .X."
        )
    X = adata.X if layer is None else adata.layers[layer]
    where = f"Modality {modality!r} ({'X' if layer is None else 'layer ' + repr(layer)})"
    if X is None:
        raise ValueError(f"{where} is empty; give the expression matrix or choose a layer.")
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
    else:
        X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_:
        raise TypeError(f"{where} must be numeric, got dtype {X.dtype}.")
    check_finite(X, where)
    return X


def _check_parameters(n_cells, n_neighbors, radius, weighting, bandwidth, include_self, n_jobs) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r} is unknown; choose one of {list(WEIGHTINGS)}.")
    if n_cells < 2:
        raise ValueError(f"A niche needs at least 2 cells, got {n_cells}.")
    if n_neighbors is None:
        if radius is None:
            raise ValueError("Give n_neighbors, radius, or both (n_neighbors=None needs a radius).")
    elif isinstance(n_neighbors, bool) or not isinstance(n_neighbors, Integral) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}.")
    elif n_neighbors >= n_cells:
        raise ValueError(
            f"n_neighbors={n_neighbors} must be smaller than the number of cells ({n_cells}): each cell has only "
            f"{n_cells - 1} other cells."
        )
    if radius is not None and (
        isinstance(radius, bool) or not isinstance(radius, Real) or not np.isfinite(radius) or radius <= 0
    ):
        raise ValueError(f"radius must be a positive finite distance (coordinate units), got {radius!r}.")
    if bandwidth is not None:
        if weighting != "gaussian":
            raise ValueError(f"bandwidth applies to weighting='gaussian' only (weighting={weighting!r}).")
        if (
            isinstance(bandwidth, bool)
            or not isinstance(bandwidth, Real)
            or not np.isfinite(bandwidth)
            or bandwidth <= 0
        ):
            raise ValueError(f"bandwidth must be a positive finite distance, got {bandwidth!r}.")
    if not isinstance(include_self, bool | np.bool_):
        raise TypeError(f"include_self must be True or False, got {include_self!r}.")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be a positive integer or -1 (all cores), got {n_jobs!r}.")


# ---------------------------------------------------------------------------------------------------------------------
# graph and weights
# ---------------------------------------------------------------------------------------------------------------------
def _neighbour_pairs(
    coords: np.ndarray, n_neighbors: int | None, radius: float | None, include_self: bool, n_jobs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour pairs ``(row, col, distance)`` sorted by row (then distance), the cell itself excluded unless asked.

    O(cells x neighbours) memory; the cell itself is removed by index, so duplicate coordinates stay neighbours.
    """
    n = coords.shape[0]
    tree = KDTree(coords)
    # 32-bit indices while they fit (what scipy's CSR would convert them to anyway): half the memory of int64
    fits = max(n, n * (int(n_neighbors) + 1 if n_neighbors is not None else 1)) < np.iinfo(np.int32).max
    index_dtype = np.int32 if fits else np.int64
    if n_neighbors is None:
        pairs = tree.sparse_distance_matrix(tree, float(radius), output_type="ndarray")
        keep = pairs["i"] != pairs["j"]
        rows, cols, dist = pairs["i"][keep], pairs["j"][keep], pairs["v"][keep]
        del pairs
        order = np.lexsort((cols, dist, rows))
        rows, cols, dist = rows[order], cols[order], dist[order]
    else:
        k = int(n_neighbors)
        bound = np.inf if radius is None else np.nextafter(float(radius), np.inf)
        # querying in the tree's own (spatially sorted) order is ~2x faster than in arbitrary order
        order = tree.indices
        d_sorted, i_sorted = tree.query(coords[order], k=k + 1, distance_upper_bound=bound, workers=n_jobs)
        # back to cell order, dropping the cell itself: it comes first unless other cells share its coordinates
        cols = np.empty((n, k), dtype=index_dtype)
        dist_k = np.empty((n, k))
        cols[order] = i_sorted[:, 1:]
        dist_k[order] = d_sorted[:, 1:]
        tied = np.flatnonzero(i_sorted[:, 0] != order)  # query rows whose first neighbour is another cell
        if tied.size:
            own = i_sorted[tied] == order[tied][:, None]
            # with more than k+1 cells at one spot the cell itself may be missing: drop the farthest instead
            own[~own.any(axis=1), -1] = True
            cols[order[tied]] = i_sorted[tied][~own].reshape(tied.size, k)
            dist_k[order[tied]] = d_sorted[tied][~own].reshape(tied.size, k)
        del d_sorted, i_sorted
        rows = np.repeat(np.arange(n, dtype=index_dtype), k)
        cols, dist = cols.ravel(), dist_k.ravel()
        if radius is not None:
            inside = dist <= radius
            rows, cols, dist = rows[inside], cols[inside], dist[inside]
    if include_self:
        rows = np.concatenate([np.arange(n, dtype=rows.dtype), rows])
        cols = np.concatenate([np.arange(n, dtype=cols.dtype), cols])
        dist = np.concatenate([np.zeros(n), dist])
        order = np.argsort(rows, kind="stable")
        rows, cols, dist = rows[order], cols[order], dist[order]
    if rows.size >= np.iinfo(np.int32).max:
        index_dtype = np.int64
    return (
        rows.astype(index_dtype, copy=False),
        cols.astype(index_dtype, copy=False),
        dist.astype(np.float64, copy=False),
    )


def _weights(
    rows: np.ndarray, dist: np.ndarray, n: int, weighting: str, bandwidth: float | None
) -> tuple[np.ndarray, dict]:
    """Row-normalised weights of the pairs and the distance scale used (``distance_floor`` or ``bandwidth``)."""
    used: dict = {}
    if weighting == "uniform":
        w = np.ones_like(dist)
    elif weighting == "inverse_distance":
        positive = dist > 0
        if not positive.any():
            raise ValueError(
                "Every neighbour sits at distance 0 (all coordinates identical?); inverse-distance weights are "
                "undefined. Use weighting='uniform'."
            )
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, rows[positive], dist[positive])
        floor = 0.5 * float(np.median(nearest[np.isfinite(nearest)]))
        w = 1.0 / np.maximum(dist, floor)
        used["distance_floor"] = floor
    else:
        if bandwidth is None:
            positive = dist[dist > 0]
            if positive.size == 0:
                raise ValueError(
                    "Every neighbour sits at distance 0 (all coordinates identical?); give bandwidth=... or use "
                    "weighting='uniform'."
                )
            bandwidth = float(np.median(positive))
        sq = dist**2
        # subtract each cell's smallest squared distance: the same normalised weights, no underflow to all-zero rows
        smallest = np.full(n, np.inf)
        np.minimum.at(smallest, rows, sq)
        w = np.exp(-(sq - smallest[rows]) / (2.0 * float(bandwidth) ** 2))
        used["bandwidth"] = float(bandwidth)
    totals = np.bincount(rows, weights=w, minlength=n)
    w = w / totals[rows]
    return w, used


def _average(W: sparse.csr_matrix, X) -> np.ndarray | sparse.csr_matrix:
    """``W @ X`` in float32 (float64 input keeps float64 arithmetic), dense for dense X, CSR for sparse X."""
    if X.dtype == np.float64:
        out = W.astype(np.float64) @ X
    else:
        out = W @ X.astype(np.float32, copy=False)
    if sparse.issparse(out):
        return sparse.csr_matrix(out, dtype=np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)
