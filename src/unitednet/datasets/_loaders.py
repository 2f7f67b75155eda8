"""Loaders of the reference data sets, each returning a :class:`mudata.MuData`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

from . import _files
from ._registry import DATASETS, FILES

DatasetName = Literal["patchseq", "bmmc_multiome", "bmmc_cite", "kang_ifnb", "osmfish"]


def _read(relpath: str) -> ad.AnnData:
    """Read one reference ``.h5ad`` file (located and checked by :func:`_files._resolve`)."""
    path = _files._resolve(relpath)
    with warnings.catch_warnings():
        # the OpenProblems files predate anndata's encoding metadata; reading them is fine
        warnings.simplefilter("ignore", category=ad.OldFormatWarning)
        adata = ad.read_h5ad(path)
    expected = FILES[relpath].shape
    if adata.shape != expected:
        raise ValueError(f"{path} holds {adata.shape[0]} x {adata.shape[1]} (obs x var), expected {expected}.")
    return adata


def _require(adata: ad.AnnData, columns: Sequence[str], what: str) -> None:
    missing = [column for column in columns if column not in adata.obs]
    if missing:
        raise KeyError(f"{what}: obs columns {missing} are missing (present: {list(adata.obs.columns)}).")


def _check_same_cells(mods: Mapping[str, ad.AnnData], columns: Sequence[str]) -> None:
    """Raise a ValueError unless all modalities have the same obs_names, in order, and the same ``columns``."""
    (first, reference), *others = mods.items()
    _require(reference, columns, first)
    if not reference.obs_names.is_unique:
        raise ValueError(f"obs_names of modality {first!r} are not unique.")
    for name, adata in others:
        _require(adata, columns, name)
        if not adata.obs_names.equals(reference.obs_names):
            raise ValueError(f"Modalities {first!r} and {name!r} do not list the same cells in the same order.")
        for column in columns:
            mine, theirs = (a.obs[column].astype(str).to_numpy() for a in (reference, adata))
            if not np.array_equal(mine, theirs):
                row = int(np.flatnonzero(mine != theirs)[0])
                raise ValueError(
                    f"obs[{column!r}] differs between modalities {first!r} and {name!r} "
                    f"(first at row {row}: {mine[row]!r} vs {theirs[row]!r}): the files are not row-aligned."
                )


def _prefix_colliding_var_names(mods: Mapping[str, ad.AnnData]) -> None:
    """Prefix ``"<modality>:"`` to var_names already used by an earlier modality (in place)."""
    seen: set[str] = set()
    for name, adata in mods.items():
        if not adata.var_names.is_unique:
            raise ValueError(f"var_names of modality {name!r} are not unique.")
        clash = adata.var_names.isin(list(seen))
        if clash.any():
            adata.var_names = pd.Index(np.where(clash, name + ":" + adata.var_names, adata.var_names))
        seen.update(adata.var_names)
    if len(seen) != sum(adata.n_vars for adata in mods.values()):
        raise ValueError("var_names are not unique across modalities even after prefixing the modality name.")


def _category(values: pd.Series | np.ndarray, categories: Sequence[str] | None = None) -> pd.Categorical:
    """Categorical copy of ``values`` (unused categories dropped unless ``categories`` is given)."""
    if categories is not None:
        return pd.Categorical(np.asarray(values, dtype=object), categories=list(categories))
    return pd.Categorical(values).remove_unused_categories()


def _assemble(
    mods: dict[str, ad.AnnData],
    obs: Mapping[str, pd.Categorical | np.ndarray],
    obsm: Mapping[str, np.ndarray] | None = None,
) -> md.MuData:
    """MuData of ``mods`` whose global obs holds exactly ``obs`` (modality obs stay in the modalities)."""
    _prefix_colliding_var_names(mods)
    with md.set_options(pull_on_update=False):
        mdata = md.MuData(mods)
    for key, values in obs.items():
        mdata.obs[key] = values
    for key, values in (obsm or {}).items():
        mdata.obsm[key] = values
    return mdata


def patchseq() -> md.MuData:
    """Patch-seq GABAergic interneurons of the mouse visual cortex (Gouwens et al. 2020), as used by UnitedNet.

    448 cells measured three ways. Values are as published (dense ``float32``; RNA is log-scale, Ephys are
    sparse-PCA features, Morph is raw morphometry that needs scaling); there are no raw counts.

    Returns
    -------
    :class:`mudata.MuData` with 448 cells and modalities

    - ``"rna"``: 448 x 1,252 genes.
    - ``"ephys"``: 448 x 68 electrophysiology features.
    - ``"morph"``: 448 x 514 morphology features.

    ``mdata.obs`` (categorical):

    - ``cell_type_TEM``: 27 MET types (transcriptomic-electrophysiological-morphological).
    - ``cell_type_T``: 52 transcriptomic types.

    Each modality keeps the same two columns in its own ``obs``. obs_names are the published ``"0"`` ...
    ``"447"``; the loader checks that the three files list the same cells with the same labels, row by row, and
    raises a :class:`ValueError` otherwise. var_names do not collide across modalities.
    """
    labels = ["cell_type_TEM", "cell_type_T"]
    mods = dict(zip(("rna", "ephys", "morph"), (_read(relpath) for relpath in DATASETS["patchseq"]), strict=True))
    _check_same_cells(mods, labels)
    return _assemble(mods, {label: _category(mods["rna"].obs[label]) for label in labels})


def _bmmc(dataset: Literal["bmmc_multiome", "bmmc_cite"], mod2: str) -> md.MuData:
    rna, other = (_read(relpath) for relpath in DATASETS[dataset])
    mods = {"rna": rna, mod2: other}
    _check_same_cells(mods, ["cell_type", "batch", "is_train"])
    for adata in mods.values():
        # published as CSC; CSR (same values) is what row-wise minibatching wants
        adata.X = sparse.csr_matrix(adata.X)
        adata.layers["counts"] = sparse.csr_matrix(adata.layers["counts"])
    obs = rna.obs
    split = np.where(obs["is_train"].to_numpy(dtype=bool), "train", "test")
    return _assemble(
        mods,
        {
            "cell_type": _category(obs["cell_type"], obs["cell_type"].cat.categories),
            "batch": _category(obs["batch"]),
            "split": _category(split, ["train", "test"]),
        },
    )


def bmmc_multiome() -> md.MuData:
    """NeurIPS 2021 bone-marrow 10x Multiome starter subset (OpenProblems): gene expression + chromatin access.

    Returns
    -------
    :class:`mudata.MuData` with 500 cells and modalities

    - ``"rna"``: 500 x 600 genes. ``X`` normalised as published, ``layers["counts"]`` raw counts.
    - ``"atac"``: 500 x 600 peaks. ``X`` binary as published, ``layers["counts"]`` raw counts.

    Matrices are sparse ``float64``, converted from the published CSC to CSR (values unchanged).

    ``mdata.obs``:

    - ``cell_type``: categorical, 21 cell types.
    - ``batch``: categorical, donor/site sample ``"s1d1"`` (221 cells) or ``"s1d2"`` (279 cells).
    - ``split``: categorical ``"train"`` (the published ``is_train``, i.e. ``s1d1``; 221 cells) or ``"test"``
      (279 cells).

    Each modality keeps its published ``obs`` (QC metrics, ``cell_type``, ``batch``, ``is_train``, ...) and
    ``uns``. The loader checks that both files list the same cells with the same ``cell_type``, ``batch`` and
    ``is_train``. var_names do not collide across modalities.
    """
    return _bmmc("bmmc_multiome", "atac")


def bmmc_cite() -> md.MuData:
    """NeurIPS 2021 bone-marrow CITE-seq starter subset (OpenProblems): gene expression + surface proteins.

    Returns
    -------
    :class:`mudata.MuData` with 600 cells and modalities

    - ``"rna"``: 600 x 1,000 genes. ``X`` normalised as published, ``layers["counts"]`` raw counts.
    - ``"adt"``: 600 x 134 proteins (antibody-derived tags). ``X`` normalised as published,
      ``layers["counts"]`` raw counts.

    Matrices are sparse ``float64``, converted from the published CSC to CSR (values unchanged).
    Three protein names equal gene names (``CD36``, ``CD69``, ``HLA-E``): in ``"adt"`` they are renamed
    ``"adt:CD36"``, ``"adt:CD69"``, ``"adt:HLA-E"`` so that var_names are unique across modalities.

    ``mdata.obs``:

    - ``cell_type``: categorical, 41 cell types.
    - ``batch``: categorical, ``"s1d1"`` (311 cells) or ``"s1d2"`` (289 cells).
    - ``split``: categorical ``"train"`` (the published ``is_train``, i.e. ``s1d1``; 311 cells) or ``"test"``
      (289 cells).

    Each modality keeps its published ``obs`` and ``uns``. The loader checks that both files list the same cells
    with the same ``cell_type``, ``batch`` and ``is_train``.
    """
    return _bmmc("bmmc_cite", "adt")


def kang_ifnb() -> md.MuData:
    """Kang et al. 2018 PBMCs, control vs interferon-beta stimulated (the Seurat ``ifnb`` 1k-cell subset).

    Returns
    -------
    :class:`mudata.MuData` with 832 cells and one modality

    - ``"rna"``: 832 x 14,053 genes, sparse CSR ``float32``. ``X`` holds the published raw integer counts (not
      normalised) and ``layers["counts"]`` a copy of them.

    ``mdata.obs`` (categorical):

    - ``cell_type``: the published ``seurat_annotations``, 6 types (CD14 Mono, CD4 Naive T, CD4 Memory T,
      CD16 Mono, B, CD8 T), each present in both conditions.
    - ``condition``: the published ``stim``, ``"CTRL"`` (391 cells) or ``"STIM"`` (441 cells).

    ``mdata["rna"].obs`` keeps the published columns (``orig_ident``, ``nCount_RNA``, ``nFeature_RNA``, ``stim``,
    ``seurat_annotations``).

    Notes
    -----
    The source is an R data file (``ifnb1k.rda``); without a local converted copy in ``$UNITEDNET_DATA_DIR`` it is
    downloaded and converted, which needs the ``rdata`` package (``pip install rdata``).
    """
    (rna,) = (_read(relpath) for relpath in DATASETS["kang_ifnb"])
    _require(rna, ["seurat_annotations", "stim"], "kang_ifnb")
    rna.layers["counts"] = rna.X.copy()
    return _assemble(
        {"rna": rna},
        {
            "cell_type": _category(rna.obs["seurat_annotations"]),
            "condition": _category(rna.obs["stim"], ["CTRL", "STIM"]),
        },
    )


def osmfish(valid_only: bool = True) -> md.MuData:
    """Spatial transcriptomics (osmFISH) of the mouse somatosensory cortex (Codeluppi et al. 2018).

    Parameters
    ----------
    valid_only
        Keep only the 4,839 cells the authors marked ``Valid`` (the others, ``Region`` and ``ClusterName``
        ``"Excluded"``, lie outside the analysed tissue). ``False`` keeps all 6,471 cells.

    Returns
    -------
    :class:`mudata.MuData` with 4,839 cells (6,471 with ``valid_only=False``) and one modality

    - ``"rna"``: cells x 33 genes, dense ``float32``. ``X`` holds the published molecule counts and
      ``layers["counts"]`` a copy of them.

    ``mdata.obs``:

    - ``Region``: categorical anatomical region, 11 regions (12 with ``"Excluded"`` when ``valid_only=False``).
    - ``ClusterName``: categorical published cell type, 31 (32 with ``"Excluded"`` when ``valid_only=False``).
    - ``Valid``: bool.

    ``mdata.obsm["spatial"]`` and ``mdata["rna"].obsm["spatial"]``: cells x 2 ``float64`` array, the published
    ``X``/``Y`` cell coordinates.

    ``mdata["rna"].obs`` keeps the published columns (``ClusterID``, ``ClusterName``, ``Region``,
    ``Total_molecules``, ``Valid`` as bool, ``X``, ``Y``, ``_tSNE_1``, ``_tSNE_2``, ``size_pix``, ``size_um2``).
    obs_names are the published ``CellID``.

    Notes
    -----
    The source is a ``.loom`` file; without a local converted copy in ``$UNITEDNET_DATA_DIR`` it is downloaded and
    converted.
    """
    (rna,) = (_read(relpath) for relpath in DATASETS["osmfish"])
    _require(rna, ["Region", "ClusterName", "Valid"], "osmfish")
    if "spatial" not in rna.obsm:
        raise KeyError("osmfish: obsm['spatial'] (cell coordinates) is missing from the file.")
    rna.obs["Valid"] = rna.obs["Valid"].astype(bool)
    if valid_only:
        rna = rna[rna.obs["Valid"].to_numpy()].copy()
    for key in ("Region", "ClusterName"):
        rna.obs[key] = _category(rna.obs[key])
    rna.layers["counts"] = rna.X.copy()
    return _assemble(
        {"rna": rna},
        {key: rna.obs[key].values for key in ("Region", "ClusterName", "Valid")},
        {"spatial": np.asarray(rna.obsm["spatial"], dtype=np.float64).copy()},
    )


def verify(name: DatasetName) -> dict[str, Path]:
    """Locate the files of data set ``name`` and check their sha256 afresh.

    Parameters
    ----------
    name
        A loader's name, e.g. ``"patchseq"``.

    Returns
    -------
    Mapping from each file's path relative to ``$UNITEDNET_DATA_DIR`` to its local path. Files found in
    ``$UNITEDNET_DATA_DIR`` are hashed (a :class:`ValueError` names any mismatch); missing ones are downloaded
    (checked by pooch where a checksum is published) as the loaders would.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}; choose one of {sorted(DATASETS)}.")
    return {relpath: _files._resolve(relpath, recheck=True) for relpath in DATASETS[name]}
