"""Input checks at the API boundary: each names the problem and the fix."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from mudata import MuData
from scipy import sparse


def matrix_values(X) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densification of sparse data)."""
    if sparse.issparse(X):
        return X.data
    return np.asarray(X)


def value_blocks(X, chunk_size: int = 10_000) -> Iterator[np.ndarray]:
    """The stored values of a matrix: at once in memory, a block of rows at a time when it is backed on disk."""
    if isinstance(X, np.ndarray) or sparse.issparse(X):
        yield matrix_values(X)
        return
    for start in range(0, X.shape[0], chunk_size):
        yield matrix_values(X[start : start + chunk_size])


def check_finite(X, where: str) -> None:
    """Raise if a matrix holds NaN or infinite values (an on-disk matrix is read a block of rows at a time)."""
    n_bad = 0
    for values in value_blocks(X):
        if np.issubdtype(values.dtype, np.floating):
            n_bad += int((~np.isfinite(values)).sum())
    if n_bad:
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values. Impute or remove them (e.g. replace with 0 or drop "
            "the affected features) before setting up the model."
        )


def is_binary(X) -> bool:
    """Whether every value of a matrix is 0 or 1 (an on-disk matrix is read a block of rows at a time)."""
    return all(bool(np.isin(values, (0, 1)).all()) for values in value_blocks(X))


def check_mudata(mdata) -> None:
    """Raise unless ``mdata`` is a MuData."""
    if not isinstance(mdata, MuData):
        raise TypeError(
            f"Expected a MuData object, got {type(mdata).__name__}. Wrap AnnData objects with "
            "`mudata.MuData({'rna': adata_rna, ...})`."
        )


def check_modalities(mdata: MuData, modalities: Sequence[str]) -> None:
    """Raise on unknown modality names, names unusable as module keys, or cells not shared by all modalities."""
    unknown = [m for m in modalities if m not in mdata.mod]
    if unknown:
        raise KeyError(f"Modalities {unknown} are not in the MuData; available: {list(mdata.mod)}.")
    bad = [m for m in modalities if "." in m or m == ""]
    if bad:
        raise ValueError(
            f"Modality names {bad} cannot contain '.'; rename them, e.g. `mdata.mod['new'] = mdata.mod.pop(old)`."
        )
    for m in modalities:
        if not mdata.mod[m].obs_names.equals(mdata.obs_names):
            raise ValueError(
                f"Modality {m!r} does not hold exactly the MuData's cells in the same order ({mdata.mod[m].n_obs} of "
                f"{mdata.n_obs} cells). UnitedNet needs paired cells: keep the shared ones with "
                "`muon.pp.intersect_obs(mdata)` (or subset every modality to the same obs_names)."
            )
