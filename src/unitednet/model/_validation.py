"""Input checks at the API boundary: each names the problem and the fix."""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import h5py
import numpy as np
from anndata.abc import CSCDataset, CSRDataset
from mudata import MuData
from scipy import sparse

from unitednet._constants import LIKELIHOODS
from unitednet.train._data import ColumnSelection

logger = logging.getLogger(__name__)


def value_chunks(X, chunk_size: int = 1 << 22) -> Iterator[np.ndarray]:
    """The stored values of a matrix, in 1-D chunks: sparse data are never densified, backed data never read whole.

    Handles numpy arrays, scipy sparse matrices, h5py datasets, anndata's backed sparse datasets (``backed=True``) and
    column selections of the latter two (:class:`~unitednet.train._data.ColumnSelection`).
    """
    if sparse.issparse(X):
        yield X.data
    elif isinstance(X, CSRDataset | CSCDataset):
        data = X.group["data"]
        for start in range(0, data.shape[0], chunk_size):
            yield np.asarray(data[start : start + chunk_size])
    elif isinstance(X, ColumnSelection):
        rows = max(1, chunk_size // max(1, X.shape[1]))
        for start in range(0, X.shape[0], rows):
            block = X[np.arange(start, min(start + rows, X.shape[0]))]
            yield block.data if sparse.issparse(block) else np.asarray(block).ravel()
    elif isinstance(X, h5py.Dataset):
        rows = max(1, chunk_size // max(1, X.shape[1] if X.ndim > 1 else 1))
        for start in range(0, X.shape[0], rows):
            yield np.asarray(X[start : start + rows]).ravel()
    else:
        yield np.asarray(X).ravel()


def _raise_if_nonfinite(n_bad: int, where: str) -> None:
    if n_bad:
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values. Impute or remove them (e.g. replace with 0 or drop "
            "the affected features) before setting up the model."
        )


def _n_nonfinite(values: np.ndarray) -> int:
    return int((~np.isfinite(values)).sum()) if np.issubdtype(values.dtype, np.floating) else 0


def check_finite(X, where: str) -> None:
    """Raise if a matrix holds NaN or infinite values."""
    _raise_if_nonfinite(sum(_n_nonfinite(values) for values in value_chunks(X)), where)


def is_binary(X) -> bool:
    """Whether every value of a matrix is 0 or 1."""
    return all(np.isin(values, (0, 1)).all() for values in value_chunks(X))


@dataclass(frozen=True)
class ValueSummary:
    """What set-up checks of a matrix's stored values, gathered in one pass by :func:`summarize_values`."""

    n_nonfinite: int
    binary: bool
    n_negative: int
    minimum: float
    n_fraction: int
    fraction_example: float | None

    def count_problem(self) -> str | None:
        """Why the matrix cannot be raw counts (negative or non-integer values), or ``None`` when it can."""
        if self.n_negative:
            return f"{self.n_negative} negative values (minimum {self.minimum:.4g})"
        if self.n_fraction:
            return f"{self.n_fraction} non-integer values (e.g. {self.fraction_example:.4g})"
        return None


def summarize_values(X) -> ValueSummary:
    """Non-finite, binary, negative and non-integer values of a matrix, in one pass.

    The values are read chunk by chunk (see :func:`value_chunks`): a backed matrix is read a single time, never whole.
    """
    n_nonfinite = n_negative = n_fraction = 0
    binary, minimum, example = True, np.inf, None
    for values in value_chunks(X):
        if values.size == 0:
            continue
        n_nonfinite += _n_nonfinite(values)
        binary = binary and bool(np.isin(values, (0, 1)).all())
        negative = values < 0
        if negative.any():
            n_negative += int(negative.sum())
            minimum = min(minimum, float(values.min()))
        if np.issubdtype(values.dtype, np.floating):
            fraction = values != np.round(values)
            if fraction.any():
                n_fraction += int(fraction.sum())
                example = values[fraction][0] if example is None else example
    return ValueSummary(n_nonfinite, binary, n_negative, minimum, n_fraction, example)


def resolve_likelihood(X, likelihood: str | None, modality: str, where: str) -> str:
    """The likelihood of a modality: the declared one after checking that the data fit it, or the inferred one.

    Raises first if the matrix holds NaN or infinite values. Inference: ``"bernoulli"`` when every value is 0 or 1,
    ``"gaussian"`` otherwise. ``"nb"`` is never inferred (that would change how existing count matrices are
    modelled); when the data are non-negative integers an INFO message suggests it. The values are read once.
    """
    summary = summarize_values(X)
    _raise_if_nonfinite(summary.n_nonfinite, where)
    if likelihood is None:
        if summary.binary:
            return "bernoulli"
        if summary.count_problem() is None:
            logger.info(
                "%s holds non-negative integers (raw counts?) and is modelled as 'gaussian'; pass "
                "likelihoods={'%s': 'nb'} to model it with a negative binomial.",
                where,
                modality,
            )
        return "gaussian"
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"Likelihood of {modality!r} must be one of {list(LIKELIHOODS)}, got {likelihood!r}.")
    if likelihood == "bernoulli" and not summary.binary:
        raise ValueError(
            f"{where} is declared 'bernoulli' but holds values other than 0 and 1. Binarise it first "
            f"(e.g. `mdata.mod['{modality}'].layers['binary'] = (X > 0).astype('float32')` and layers="
            f"{{'{modality}': 'binary'}}) or use likelihoods={{'{modality}': 'gaussian'}}."
        )
    if likelihood == "nb":
        problem = summary.count_problem()
        if problem is not None:
            raise ValueError(
                f"{where} is declared 'nb' (negative binomial, raw counts) but holds {problem}. Register the raw "
                f"counts instead (e.g. layers={{'{modality}': 'counts'}}), or model normalised data with "
                f"likelihoods={{'{modality}': 'gaussian'}}."
            )
    return likelihood


def check_mudata(mdata) -> None:
    """Raise unless ``mdata`` is a MuData with at least one cell and unique cell names."""
    if not isinstance(mdata, MuData):
        raise TypeError(
            f"Expected a MuData object, got {type(mdata).__name__}. Wrap AnnData objects with "
            "`mudata.MuData({'rna': adata_rna, ...})`."
        )
    if mdata.n_obs == 0:
        raise ValueError("The MuData has no cells (n_obs == 0); give at least one cell.")
    if not mdata.obs_names.is_unique:
        dup = list(mdata.obs_names[mdata.obs_names.duplicated()].unique()[:5])
        raise ValueError(
            f"The MuData's cell names (obs_names) are not unique (e.g. {dup}): cells could not be told apart. Make "
            "them unique in every modality first (e.g. `adata.obs_names_make_unique()` on each modality, then "
            "`mdata.update()`)."
        )


def check_modalities(mdata: MuData, modalities: Sequence[str]) -> None:
    """Raise on unknown modality names, names unusable as module keys, empty or ill-named features, or unpaired cells.

    Cells of every modality must be exactly the MuData's cells in the same order: a modality holding the same cells
    in another order is refused (never silently re-aligned) with the command that aligns it.
    """
    unknown = [m for m in modalities if m not in mdata.mod]
    if unknown:
        hint = _rename_hint(unknown, list(mdata.mod))
        raise KeyError(f"Modalities {unknown} are not in the MuData; available: {list(mdata.mod)}.{hint}")
    bad = [m for m in modalities if "." in m or m == ""]
    if bad:
        raise ValueError(
            f"Modality names {bad} cannot contain '.'; rename them, e.g. `mdata.mod['new'] = mdata.mod.pop(old)`."
        )
    for m in modalities:
        adata = mdata.mod[m]
        if adata.n_vars == 0:
            raise ValueError(
                f"Modality {m!r} has no features (0 columns); leave it out with `modalities=[...]` or fill it."
            )
        if not adata.var_names.is_unique:
            dup = list(adata.var_names[adata.var_names.duplicated()].unique()[:5])
            raise ValueError(
                f"Feature names of modality {m!r} are not unique (e.g. {dup}); features are matched by name. Make "
                f"them unique with `mdata.mod['{m}'].var_names_make_unique()` (then `mdata.update()`)."
            )
        if adata.obs_names.equals(mdata.obs_names):
            continue
        if adata.n_obs == mdata.n_obs and adata.obs_names.sort_values().equals(mdata.obs_names.sort_values()):
            raise ValueError(
                f"Modality {m!r} holds the MuData's cells in another order. UnitedNet pairs cells by position and "
                f"does not re-order your data: align it with `mdata.mod['{m}'] = mdata.mod['{m}'][mdata.obs_names]"
                ".copy()` (then `mdata.update()`)."
            )
        raise ValueError(
            f"Modality {m!r} does not hold exactly the MuData's cells in the same order ({adata.n_obs} of "
            f"{mdata.n_obs} cells). UnitedNet needs paired cells: keep the shared ones with "
            "`muon.pp.intersect_obs(mdata)` (or subset every modality to the same obs_names)."
        )


def _rename_hint(names: Sequence[str], candidates: Sequence[str]) -> str:
    """' Did you mean ...?' for names that match a candidate up to letter case."""
    lower = {c.lower(): c for c in candidates}
    pairs = [(n, lower[n.lower()]) for n in names if n.lower() in lower]
    if not pairs:
        return ""
    return " Names are case-sensitive: " + ", ".join(f"{a!r} is not {b!r}" for a, b in pairs) + "."


def check_query_modalities(mdata: MuData, registered: Sequence[str]) -> None:
    """Refuse query modalities that differ from a registered one only by letter case; warn about unknown ones.

    Unknown modalities are harmless when the query holds every registered one; when some are missing, an unknown
    modality may be a renamed one, so the warning names both.
    """
    missing = [m for m in registered if m not in mdata.mod]
    extra = [m for m in mdata.mod if m not in registered]
    near = {m: r for m in extra for r in missing if m.lower() == r.lower()}
    if near:
        raise KeyError(
            "Query modalities "
            + ", ".join(f"{q!r}" for q in near)
            + " differ from the model's "
            + ", ".join(f"{r!r}" for r in near.values())
            + " only by letter case. Rename them, e.g. "
            + "; ".join(f"`query.mod['{r}'] = query.mod.pop('{q}')`" for q, r in near.items())
            + "."
        )
    if extra and missing:
        warnings.warn(
            f"Query modalities {extra} are not modalities of the model and are ignored; the model's modalities "
            f"{missing} are missing from the query, so only {[m for m in registered if m in mdata.mod]} are used. "
            "Rename a query modality if it holds one of the missing ones.",
            UserWarning,
            stacklevel=5,  # the caller of the model's (inference-mode wrapped) method
        )


def check_positive_int(value, name: str, minimum: int = 1, why: str = "") -> int:
    """Return ``value`` as an int, raising unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{why}; got {value!r}.")
    return int(value)


def check_loss_weights(weights: Mapping[str, float] | None, valid: Sequence[str]) -> None:
    """Raise on unknown loss names or weights that are not finite non-negative numbers."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(valid))
    if unknown:
        raise KeyError(f"Unknown loss weights {unknown}; valid names are {list(valid)}.")
    bad = {}
    for name, w in weights.items():
        try:
            number = float(w)
        except (TypeError, ValueError):
            bad[name] = w
            continue
        if not math.isfinite(number) or number < 0:
            bad[name] = w
    if bad:
        raise ValueError(f"Loss weights must be finite numbers >= 0; got {bad}.")
