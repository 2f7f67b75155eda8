"""Finding, checking, downloading and converting the reference data files.

A file is looked up as ``$UNITEDNET_DATA_DIR/<relpath>`` first (its sha256 is checked once per process and
modification time). Otherwise its public source is downloaded with pooch into ``pooch.os_cache("unitednet")``.

The download and conversion paths cannot be exercised by the project's tests (no network there): the tests replace
:func:`_download` and feed the converters files built from the local copies. Keep this code small and plain.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pooch
from scipy import sparse

from ._registry import FILES, DataFile

ENV_VAR = "UNITEDNET_DATA_DIR"

# resolved path -> (st_mtime_ns, st_size) of the version whose sha256 matched
_VERIFIED: dict[str, tuple[int, int]] = {}


def _cache_dir() -> Path:
    """Directory where downloads (and converted downloads) are kept."""
    return Path(pooch.os_cache("unitednet"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, expected: str, *, recheck: bool = False) -> None:
    """Raise a ValueError when the sha256 of ``path`` differs from ``expected``; cached per path and mtime."""
    stat = path.stat()
    key, stamp = str(path.resolve()), (stat.st_mtime_ns, stat.st_size)
    if not recheck and _VERIFIED.get(key) == stamp:
        return
    actual = _sha256(path)
    if actual != expected:
        _VERIFIED.pop(key, None)
        raise ValueError(
            f"Checksum mismatch for {path}: expected sha256 {expected}, got {actual}. The file is damaged or is not "
            f"the published version: restore it, or remove it from ${ENV_VAR} to download the published one."
        )
    _VERIFIED[key] = stamp


def _download(entry: DataFile) -> Path:
    """Download the public source of ``entry`` into the cache and return its local path.

    pooch checks the sha256 when it is known (files served as they are). Sources that are converted afterwards
    (``.rda``, ``.loom``) have no published checksum: the commit in the URL pins their content.
    """
    relpath = PurePosixPath(entry.relpath)
    fname = relpath.name if entry.convert is None else PurePosixPath(entry.url).name
    known_hash = f"sha256:{entry.sha256}" if entry.convert is None else None
    path = Path(
        pooch.retrieve(
            entry.url, known_hash=known_hash, fname=fname, path=_cache_dir() / relpath.parent, progressbar=False
        )
    )
    with open(path, "rb") as handle:
        if handle.read(40).startswith(b"version https://git-lfs"):
            path.unlink()
            raise OSError(f"{entry.url} served a Git LFS pointer instead of the data file.")
    return path


def _resolve(relpath: str, *, recheck: bool = False) -> Path:
    """Local path of the reference file ``relpath`` (e.g. ``"patchseq/adata_RNA_TEM.h5ad"``).

    Looks in ``$UNITEDNET_DATA_DIR`` (checking the sha256), then in the download cache, then downloads.
    """
    if relpath not in FILES:
        raise ValueError(f"Unknown reference data file {relpath!r}; known files: {sorted(FILES)}.")
    entry = FILES[relpath]
    data_dir = os.environ.get(ENV_VAR)
    if data_dir:
        local = Path(data_dir).expanduser() / relpath
        if local.is_file():
            _verify(local, entry.sha256, recheck=recheck)
            return local
    converted = _cache_dir() / relpath
    if entry.convert is not None and converted.is_file():
        return converted
    try:
        source = _download(entry)
    except OSError as err:
        where = f"{ENV_VAR}={data_dir} has no {relpath}" if data_dir else f"{ENV_VAR} is not set"
        raise FileNotFoundError(
            f"Reference data file {relpath!r} not found: {where}, and downloading {entry.url} failed ({err}). "
            f"Point {ENV_VAR} at a directory holding {relpath}, or retry the download when online."
        ) from err
    if entry.convert is None:
        return source
    adata = _loom_to_anndata(source) if entry.convert == "loom" else _rda_to_anndata(source)
    converted.parent.mkdir(parents=True, exist_ok=True)
    partial = converted.with_name(converted.name + ".partial")
    adata.write_h5ad(partial)
    os.replace(partial, converted)
    return converted


def _decode(values: np.ndarray) -> np.ndarray:
    """Byte strings (as stored in loom files) to str; other arrays unchanged."""
    if values.dtype.kind in "SO":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values


def _loom_to_anndata(path: Path) -> ad.AnnData:
    """Read the osmFISH ``.loom`` file.

    Loom layout: ``/matrix`` is genes x cells, ``/row_attrs/<name>`` one array per gene attribute (gene names in
    ``Gene``), ``/col_attrs/<name>`` one array per cell attribute (``CellID``, ``X``, ``Y``, labels, ...).
    """
    import h5py

    with h5py.File(path, "r") as handle:
        matrix = np.asarray(handle["matrix"][()], dtype=np.float32).T
        genes = _decode(handle["row_attrs"]["Gene"][()])
        obs = pd.DataFrame({key: _decode(handle["col_attrs"][key][()]) for key in handle["col_attrs"]})
    obs.index = pd.Index(obs.pop("CellID").astype(str), name="CellID")
    for key in ("ClusterName", "Region"):
        obs[key] = obs[key].astype("category")
    adata = ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=pd.Index(genes.astype(str))))
    adata.obsm["spatial"] = obs[["X", "Y"]].to_numpy(dtype=np.float64)
    return adata


def _rda_to_anndata(path: Path) -> ad.AnnData:
    """Read the Seurat object saved in the Kang IFN-beta ``.rda`` file (needs the ``rdata`` package)."""
    try:
        import rdata
    except ImportError as err:
        raise ImportError(
            f"Converting {path.name} (an R data file) needs the `rdata` package: pip install rdata. Alternatively "
            f"point {ENV_VAR} at a directory holding the converted kang_ifnb/kang_ifnb1k.h5ad."
        ) from err
    objects = rdata.read_rda(path)
    if len(objects) != 1:
        raise ValueError(f"{path} should hold one Seurat object, found {sorted(objects)}.")
    return _seurat_to_anndata(next(iter(objects.values())))


def _seurat_to_anndata(seurat: Any) -> ad.AnnData:
    """Raw counts and cell metadata of a Seurat (v3/v4) object as ``rdata`` converts it.

    ``rdata`` turns an S4 object into a namespace of its slots: ``seurat.assays["RNA"].counts`` is the
    ``dgCMatrix`` (slots ``i``, ``p``, ``x``, ``Dim``, ``Dimnames``; genes x cells, column-compressed) and the
    ``meta.data`` slot a DataFrame indexed by cell. Dots in column names become underscores.
    """
    counts = getattr(seurat.assays["RNA"], "counts", None)
    if counts is None:
        raise ValueError("Expected a Seurat v3/v4 object whose RNA assay has a `counts` slot (dgCMatrix).")
    n_genes, n_cells = (int(n) for n in counts.Dim)
    genes_by_cells = sparse.csc_matrix(
        (np.asarray(counts.x, dtype=np.float32), np.asarray(counts.i), np.asarray(counts.p)), shape=(n_genes, n_cells)
    )
    genes, cells = (pd.Index(np.asarray(names).astype(str)) for names in counts.Dimnames)
    obs = getattr(seurat, "meta.data").copy()
    obs.columns = [str(column).replace(".", "_") for column in obs.columns]
    obs.index = obs.index.astype(str)
    if not obs.index.equals(cells):
        raise ValueError("The cells of the Seurat meta.data and of its counts matrix differ.")
    for column in obs.columns:
        if pd.api.types.is_string_dtype(obs[column]):
            obs[column] = obs[column].astype("category")
    return ad.AnnData(genes_by_cells.T.tocsr(), obs=obs, var=pd.DataFrame(index=genes))
