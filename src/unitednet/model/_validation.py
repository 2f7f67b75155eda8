"""Input checks at the API boundary: each names the problem and the fix."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from mudata import MuData
from scipy import sparse

from unitednet._constants import LIKELIHOODS

logger = logging.getLogger(__name__)


def matrix_values(X) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densification of sparse data)."""
    if sparse.issparse(X):
        return X.data
    return np.asarray(X)


def check_finite(X, where: str) -> None:
    """Raise if a matrix holds NaN or infinite values."""
    values = matrix_values(X)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values. Impute or remove them (e.g. replace with 0 or drop "
            "the affected features) before setting up the model."
        )


def is_binary(X) -> bool:
    """Whether every value of a matrix is 0 or 1."""
    values = matrix_values(X)
    return bool(np.isin(values, (0, 1)).all())


def count_problem(X) -> str | None:
    """Why a matrix cannot be raw counts (negative or non-integer values), or ``None`` when it can."""
    values = matrix_values(X)
    if values.size == 0:
        return None
    n_negative = int((values < 0).sum())
    if n_negative:
        return f"{n_negative} negative values (minimum {values.min():.4g})"
    if np.issubdtype(values.dtype, np.floating):
        n_fraction = int((values != np.round(values)).sum())
        if n_fraction:
            example = values[values != np.round(values)][0]
            return f"{n_fraction} non-integer values (e.g. {example:.4g})"
    return None


def resolve_likelihood(X, likelihood: str | None, modality: str, where: str) -> str:
    """The likelihood of a modality: the declared one after checking that the data fit it, or the inferred one.

    Inference: ``"bernoulli"`` when every value is 0 or 1, ``"gaussian"`` otherwise. ``"nb"`` is never inferred (that
    would change how existing count matrices are modelled); when the data are non-negative integers an INFO message
    suggests it.
    """
    if likelihood is None:
        if is_binary(X):
            return "bernoulli"
        if count_problem(X) is None:
            logger.info(
                "%s holds non-negative integers (raw counts?) and is modelled as 'gaussian'; pass "
                "likelihoods={'%s': 'nb'} to model it with a negative binomial.",
                where,
                modality,
            )
        return "gaussian"
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"Likelihood of {modality!r} must be one of {list(LIKELIHOODS)}, got {likelihood!r}.")
    if likelihood == "bernoulli" and not is_binary(X):
        raise ValueError(
            f"{where} is declared 'bernoulli' but holds values other than 0 and 1. Binarise it first "
            f"(e.g. `mdata.mod['{modality}'].layers['binary'] = (X > 0).astype('float32')` and layers="
            f"{{'{modality}': 'binary'}}) or use likelihoods={{'{modality}': 'gaussian'}}."
        )
    if likelihood == "nb":
        problem = count_problem(X)
        if problem is not None:
            raise ValueError(
                f"{where} is declared 'nb' (negative binomial, raw counts) but holds {problem}. Register the raw "
                f"counts instead (e.g. layers={{'{modality}': 'counts'}}), or model normalised data with "
                f"likelihoods={{'{modality}': 'gaussian'}}."
            )
    return likelihood


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
