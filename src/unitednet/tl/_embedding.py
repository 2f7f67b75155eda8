from __future__ import annotations

import anndata as ad
import scanpy as sc
from mudata import MuData

from unitednet._constants import RESULT_KEYS


def umap(
    mdata: MuData,
    *,
    use_rep: str = RESULT_KEYS.LATENT,
    key_added: str | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    copy: bool = False,
) -> MuData | None:
    """UMAP of a latent in ``mdata.obsm`` (scanpy's neighbours graph + UMAP on that representation).

    Parameters
    ----------
    mdata
        MuData holding ``obsm[use_rep]`` (e.g. written by :func:`unitednet.tl.latent`).
    use_rep
        obsm key of the representation.
    key_added
        obsm key of the 2-D coordinates; default ``f"{use_rep}_umap"``.
    n_neighbors
        Neighbours of the kNN graph.
    random_state
        Seed of the UMAP layout.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes ``mdata.obsm[key_added]`` (cells x 2); the kNN graph is
    computed on a temporary object and not stored.
    """
    if use_rep not in mdata.obsm:
        raise KeyError(f"mdata.obsm has no {use_rep!r}; write it first, e.g. `unitednet.tl.latent(model, mdata)`.")
    out = mdata.copy() if copy else mdata
    tmp = ad.AnnData(obs=out.obs[[]].copy(), obsm={"rep": out.obsm[use_rep]})
    sc.pp.neighbors(tmp, use_rep="rep", n_neighbors=n_neighbors, random_state=random_state)
    sc.tl.umap(tmp, random_state=random_state)
    out.obsm[key_added or f"{use_rep}_umap"] = tmp.obsm["X_umap"]
    return out if copy else None
