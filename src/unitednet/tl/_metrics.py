"""Evaluation metrics for group identification and cross-modal prediction.

Pure numpy / scipy / scikit-learn functions; nothing here touches a model or a MuData object.

Group identification
    :func:`hungarian_accuracy`, :func:`match_groups` and :func:`clustering_metrics` compare unsupervised groups
    with reference labels (the group ids are arbitrary); :func:`classification_metrics` compares predicted labels
    with reference labels drawn from the same vocabulary.
Cross-modal prediction
    :func:`regression_metrics` compares a predicted modality with the measured one (cells x features, dense or
    sparse). Per-feature R² averaged over features explodes when a feature is nearly constant in the evaluated
    cells, so the headline number is the variance-weighted (pooled) R²; the per-feature mean is reported only over
    features with variance, together with how many features it used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score

__all__ = [
    "classification_metrics",
    "clustering_metrics",
    "hungarian_accuracy",
    "match_groups",
    "regression_metrics",
]

#: Upper bound on the number of matrix entries densified at once by :func:`regression_metrics`
#: when ``chunk_size`` is left to its default (2**22 float64 entries = 32 MiB per temporary array).
_MAX_CHUNK_ENTRIES = 2**22
_MAX_CHUNK_COLUMNS = 2048


# ---------------------------------------------------------------------------------------------------------------------
# label helpers
# ---------------------------------------------------------------------------------------------------------------------
def _check_labels(labels: ArrayLike, name: str) -> np.ndarray:
    """Return ``labels`` as a 1-D numpy array without missing values."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D (one label per cell), got an array of shape {arr.shape}; "
            f"pass e.g. `np.ravel({name})` or a single obs column."
        )
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty; pass one label per cell.")
    if arr.dtype.kind == "c":
        raise ValueError(f"`{name}` has complex dtype {arr.dtype}; pass integer or string labels.")
    missing = np.asarray(pd.isna(arr), dtype=bool)
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"`{name}` contains {int(missing.sum())} missing label(s) (NaN/None, first at position {first}); "
            "drop those cells or give them an explicit label before computing metrics."
        )
    return arr


def _check_label_pair(labels_true: ArrayLike, labels_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate both label vectors and their lengths."""
    true = _check_labels(labels_true, "labels_true")
    pred = _check_labels(labels_pred, "labels_pred")
    if true.shape[0] != pred.shape[0]:
        raise ValueError(
            f"`labels_true` has {true.shape[0]} labels but `labels_pred` has {pred.shape[0]}; "
            "pass one label per cell for the same cells, in the same order."
        )
    return true, pred


def _factorize(arr: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique labels and the integer code of every entry."""
    try:
        uniques, codes = np.unique(arr, return_inverse=True)
    except TypeError as err:
        raise ValueError(
            f"`{name}` mixes label types that cannot be compared (e.g. strings and numbers); "
            f"convert them to one type, e.g. `np.asarray({name}).astype(str)`."
        ) from err
    return uniques, np.asarray(codes).ravel()


def _is_string_like(arr: np.ndarray) -> bool:
    """Whether every label is a string (as opposed to a number)."""
    if arr.dtype.kind in "US":
        return True
    if arr.dtype.kind == "O":
        return all(isinstance(v, str | bytes) for v in arr)
    return False


def _to_python(value: Any) -> Any:
    """Numpy scalars to the equivalent Python scalar (dict keys that print and compare naturally)."""
    return value.item() if isinstance(value, np.generic) else value


def _hungarian(
    labels_true: ArrayLike, labels_pred: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of predicted groups (rows) to true labels (columns)."""
    true, pred = _check_label_pair(labels_true, labels_pred)
    uniq_true, code_true = _factorize(true, "labels_true")
    uniq_pred, code_pred = _factorize(pred, "labels_pred")
    n_true, n_pred = uniq_true.shape[0], uniq_pred.shape[0]
    # contingency[i, j] = number of cells in predicted group i with true label j
    contingency = np.bincount(code_pred * n_true + code_true, minlength=n_pred * n_true).reshape(n_pred, n_true)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    return uniq_true, uniq_pred, contingency, rows, cols


# ---------------------------------------------------------------------------------------------------------------------
# group identification
# ---------------------------------------------------------------------------------------------------------------------
def hungarian_accuracy(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Accuracy of unsupervised groups under the best one-to-one matching to the reference labels.

    Builds the contingency matrix ``C[i, j]`` (cells in predicted group ``i`` with true label ``j``) and finds the
    one-to-one assignment of predicted groups to true labels maximising the number of matched cells
    (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`). The accuracy is that number divided by the
    number of cells. The numbers of predicted groups and true labels may differ: only ``min(n_pred, n_true)`` pairs
    are matched and cells of unmatched groups count as errors. The value is invariant under any relabelling of the
    predicted groups and symmetric in its two arguments.

    Parameters
    ----------
    labels_true
        Reference label of every cell, 1-D (strings, integers, or a categorical column). No missing values.
    labels_pred
        Predicted group of every cell, same length and order as ``labels_true``. Group ids are arbitrary and need
        not share a vocabulary with ``labels_true``.

    Returns
    -------
    float
        Fraction of cells whose predicted group is matched to their true label, in ``[0, 1]``.

    Raises
    ------
    ValueError
        If the inputs are not 1-D, are empty, differ in length, contain missing values, or mix label types.

    See Also
    --------
    match_groups : the matching used here.
    """
    _, _, contingency, rows, cols = _hungarian(labels_true, labels_pred)
    n_cells = int(contingency.sum())
    return float(contingency[rows, cols].sum() / n_cells)


def match_groups(labels_true: ArrayLike, labels_pred: ArrayLike) -> dict[Any, Any]:
    """Mapping from predicted groups to true labels under the best one-to-one matching.

    The matching is the one :func:`hungarian_accuracy` scores: it maximises the number of cells whose predicted
    group is mapped to their true label, each true label receiving at most one predicted group.

    Parameters
    ----------
    labels_true
        Reference label of every cell, 1-D. No missing values.
    labels_pred
        Predicted group of every cell, same length and order as ``labels_true``.

    Returns
    -------
    dict
        One entry per predicted group that occurs in ``labels_pred`` (keys in sorted order): its matched true label,
        or ``None`` when there are more predicted groups than true labels and the group was left unmatched.
        Numpy scalars are converted to Python scalars, so ``mapping[0]`` and ``mapping["B"]`` work directly.
        Use e.g. ``pd.Series(labels_pred).map(mapping)`` to relabel the predictions.

    Raises
    ------
    ValueError
        If the inputs are not 1-D, are empty, differ in length, contain missing values, or mix label types.
    """
    uniq_true, uniq_pred, _, rows, cols = _hungarian(labels_true, labels_pred)
    mapping: dict[Any, Any] = {_to_python(group): None for group in uniq_pred}
    for row, col in zip(rows, cols, strict=True):
        mapping[_to_python(uniq_pred[row])] = _to_python(uniq_true[col])
    return mapping


def clustering_metrics(labels_true: ArrayLike, labels_pred: ArrayLike) -> dict[str, float]:
    """Agreement between unsupervised groups and reference labels.

    Parameters
    ----------
    labels_true
        Reference label of every cell, 1-D. No missing values.
    labels_pred
        Predicted group of every cell (arbitrary ids), same length and order as ``labels_true``.

    Returns
    -------
    dict[str, float]
        ``accuracy``
            Hungarian-matched accuracy, :func:`hungarian_accuracy`, in ``[0, 1]``.
        ``ari``
            Adjusted Rand index, :func:`sklearn.metrics.adjusted_rand_score` (1 for identical partitions,
            about 0 for random ones, can be negative).
        ``nmi``
            Normalised mutual information with arithmetic-mean normalisation,
            :func:`sklearn.metrics.normalized_mutual_info_score`, in ``[0, 1]``.

    Raises
    ------
    ValueError
        If the inputs are not 1-D, are empty, differ in length, contain missing values, or mix label types.
    """
    true, pred = _check_label_pair(labels_true, labels_pred)
    # Factorising first gives sklearn integer codes, so mixed-type errors come from our validation.
    _, code_true = _factorize(true, "labels_true")
    _, code_pred = _factorize(pred, "labels_pred")
    return {
        "accuracy": hungarian_accuracy(true, pred),
        "ari": float(adjusted_rand_score(code_true, code_pred)),
        "nmi": float(normalized_mutual_info_score(code_true, code_pred)),
    }


def classification_metrics(labels_true: ArrayLike, labels_pred: ArrayLike) -> dict[str, float]:
    """Agreement between predicted and reference labels drawn from the same vocabulary.

    Parameters
    ----------
    labels_true
        Reference label of every cell, 1-D. No missing values.
    labels_pred
        Predicted label of every cell, same length and order, and same kind of labels (all strings or all
        numbers) as ``labels_true``.

    Returns
    -------
    dict[str, float]
        ``accuracy``
            Fraction of cells with ``labels_pred == labels_true``.
        ``balanced_accuracy``
            Mean over the classes present in ``labels_true`` of the recall (fraction of that class's cells predicted
            as that class). Predicted classes absent from ``labels_true`` only lower the recall of the classes
            they were taken from (same value as :func:`sklearn.metrics.balanced_accuracy_score`, without its
            warning).
        ``macro_f1``
            Unweighted mean of the per-class F1 score over the union of the classes in ``labels_true`` and
            ``labels_pred`` (:func:`sklearn.metrics.f1_score` with ``average="macro"``); a class never predicted
            or never present scores 0.

    Raises
    ------
    ValueError
        If the inputs are not 1-D, are empty, differ in length, contain missing values, or one holds strings and
        the other numbers.
    """
    true, pred = _check_label_pair(labels_true, labels_pred)
    uniq_true, _ = _factorize(true, "labels_true")
    _factorize(pred, "labels_pred")
    if _is_string_like(true) != _is_string_like(pred):
        kinds = {True: "strings", False: "numbers"}
        raise ValueError(
            f"`labels_true` holds {kinds[_is_string_like(true)]} but `labels_pred` holds "
            f"{kinds[_is_string_like(pred)]}; classification metrics compare labels directly, so map both to the "
            "same vocabulary (for arbitrary cluster ids use `clustering_metrics`)."
        )
    correct = true == pred
    recalls = [correct[true == label].mean() for label in uniq_true]
    return {
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0.0)),
    }


# ---------------------------------------------------------------------------------------------------------------------
# cross-modal prediction
# ---------------------------------------------------------------------------------------------------------------------
def _check_matrix(y: Any, name: str) -> np.ndarray | sparse.csc_matrix | sparse.csc_array:
    """Validate a cells x features matrix; sparse input is returned in CSC format (never densified)."""
    if sparse.issparse(y):
        if y.ndim != 2:
            raise ValueError(f"`{name}` must be 2-D (cells x features), got a sparse array of shape {y.shape}.")
        if y.dtype.kind not in "biuf":
            raise ValueError(f"`{name}` has non-numeric dtype {y.dtype}; convert it with `.astype(np.float32)`.")
        y = y.tocsc()
        if not np.isfinite(y.data).all():
            raise ValueError(
                f"`{name}` contains NaN or infinite values; remove or impute them before computing metrics."
            )
        return y
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` has non-numeric dtype {arr.dtype}; pass a numeric array or convert it with "
            "`np.asarray(..., dtype=float)`."
        )
    if arr.ndim != 2:
        raise ValueError(
            f"`{name}` must be 2-D (cells x features), got shape {arr.shape}; for a single feature use "
            f"`{name}.reshape(-1, 1)`."
        )
    return arr


def _row_means(y: np.ndarray | sparse.spmatrix | sparse.sparray, name: str) -> np.ndarray:
    """Per-cell mean in float64, without densifying; also detects NaN/inf in dense input."""
    n_features = y.shape[1]
    if sparse.issparse(y):
        sums = np.asarray(y.sum(axis=1, dtype=np.float64)).ravel()
    else:
        sums = y.sum(axis=1, dtype=np.float64)
        # any NaN or infinite entry makes its row sum non-finite
        bad = ~np.isfinite(sums)
        if bad.any():
            raise ValueError(
                f"`{name}` contains NaN or infinite values (first in cell {int(np.flatnonzero(bad)[0])}); "
                "remove or impute them before computing metrics."
            )
    return sums / n_features


def _dense_columns(y: np.ndarray | sparse.spmatrix | sparse.sparray, start: int, stop: int) -> np.ndarray:
    """Float64 copy of columns ``start:stop`` (safe to modify in place)."""
    if sparse.issparse(y):
        return np.asarray(y[:, start:stop].toarray(), dtype=np.float64)
    return np.array(y[:, start:stop], dtype=np.float64)


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def regression_metrics(
    y_true: ArrayLike | sparse.spmatrix | sparse.sparray,
    y_pred: ArrayLike | sparse.spmatrix | sparse.sparray,
    *,
    min_variance: float = 1e-8,
    chunk_size: int | None = None,
) -> dict[str, float]:
    r"""Accuracy of a cross-modal prediction (cells x features).

    Notation: :math:`Y` is ``y_true`` and :math:`\hat Y` is ``y_pred``, both :math:`n` cells x :math:`p` features;
    :math:`\bar Y_{\cdot j}` is the mean of feature :math:`j` over cells,
    :math:`SS^{res}_j = \sum_i (Y_{ij} - \hat Y_{ij})^2` and :math:`SS^{tot}_j = \sum_i (Y_{ij} - \bar Y_{\cdot j})^2`.
    Variances are population variances (``ddof=0``), e.g. :math:`\mathrm{var}_j = SS^{tot}_j / n`.

    The matrices are read a block of columns at a time: sparse input is densified one block at a time and never
    as a whole; dense input is converted to float64 one block at a time.

    Parameters
    ----------
    y_true
        Measured values, shape ``(n_cells, n_features)``; numpy array or scipy sparse matrix/array. No NaN or inf.
    y_pred
        Predicted values, same shape, cells and feature order as ``y_true``; dense or sparse independently of
        ``y_true``. No NaN or inf.
    min_variance
        Features (for ``r2_mean`` and ``pearson_mean``) and cells (for ``pearson_cell_mean``) whose variance is not
        strictly greater than this are left out of the corresponding average, because their R² or Pearson
        correlation is undefined or dominated by rounding. Absolute, in the units of the data squared.
    chunk_size
        Number of feature columns densified at once. ``None`` chooses
        ``min(2048, max(1, 2**22 // n_cells))`` so that a block holds at most about 4 million values.

    Returns
    -------
    dict[str, float]
        ``r2_variance_weighted``
            Pooled R² over all features, :math:`1 - \sum_j SS^{res}_j / \sum_j SS^{tot}_j`. Equals
            ``sklearn.metrics.r2_score(y_true, y_pred, multioutput="variance_weighted")`` whenever every feature
            varies; for a feature that is exactly constant in ``y_true`` sklearn ignores its residuals while this
            value counts them (a wrong prediction of a constant feature is penalised). NaN if no feature has
            variance above ``min_variance``. This is the headline number: it cannot explode on nearly-constant
            features.
        ``r2_mean``
            Unweighted mean over features with :math:`\mathrm{var}_j > ` ``min_variance`` of the per-feature
            :math:`R^2_j = 1 - SS^{res}_j / SS^{tot}_j`; NaN if there is no such feature. Features whose variance is
            only slightly above the threshold can still have a very negative :math:`R^2_j`.
        ``n_features_r2``
            Number of features averaged in ``r2_mean``.
        ``pearson_mean``
            Mean over features of the Pearson correlation between :math:`Y_{\cdot j}` and :math:`\hat Y_{\cdot j}`
            across cells, over features whose variance exceeds ``min_variance`` in both ``y_true`` and ``y_pred``;
            NaN if there is none.
        ``n_features_pearson``
            Number of features averaged in ``pearson_mean``.
        ``pearson_cell_mean``
            Mean over cells of the Pearson correlation between :math:`Y_{i \cdot}` and :math:`\hat Y_{i \cdot}`
            across features, over cells whose variance across features exceeds ``min_variance`` in both
            ``y_true`` and ``y_pred`` (e.g. all-zero cells are left out); NaN if there is none.
        ``n_cells_pearson``
            Number of cells averaged in ``pearson_cell_mean``.
        ``rmse``
            :math:`\sqrt{\sum_{ij} (Y_{ij} - \hat Y_{ij})^2 / (np)}`, over all entries.
        ``mae``
            :math:`\sum_{ij} |Y_{ij} - \hat Y_{ij}| / (np)`, over all entries.

        The ``n_*`` counts are integers.

    Raises
    ------
    ValueError
        If an input is not a 2-D numeric matrix, the shapes differ, there are fewer than 2 cells, an input contains
        NaN or infinite values, ``min_variance`` is negative or ``chunk_size`` is not a positive integer.
    """
    if (
        isinstance(min_variance, bool)
        or not isinstance(min_variance, int | float | np.integer | np.floating)
        or not np.isfinite(min_variance)
        or min_variance < 0
    ):
        raise ValueError(f"`min_variance` must be a finite number >= 0, got {min_variance!r}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size!r}.")

    true = _check_matrix(y_true, "y_true")
    pred = _check_matrix(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(
            f"`y_true` has shape {true.shape} but `y_pred` has shape {pred.shape}; pass the same cells (rows) "
            "and features (columns) in the same order, e.g. subset the prediction to the measured features."
        )
    n_cells, n_features = true.shape
    if n_cells < 2:
        raise ValueError(f"R² and correlations need at least 2 cells, got {n_cells}.")
    if n_features < 1:
        raise ValueError("`y_true` has no features (0 columns); pass at least one feature.")
    if chunk_size is None:
        chunk_size = min(_MAX_CHUNK_COLUMNS, max(1, _MAX_CHUNK_ENTRIES // n_cells))

    cell_mean_true = _row_means(true, "y_true")
    cell_mean_pred = _row_means(pred, "y_pred")

    ss_res = np.empty(n_features)
    ss_tot = np.empty(n_features)
    ss_pred = np.empty(n_features)
    cross = np.empty(n_features)
    abs_err = 0.0
    cell_ss_true = np.zeros(n_cells)
    cell_ss_pred = np.zeros(n_cells)
    cell_cross = np.zeros(n_cells)

    for start in range(0, n_features, chunk_size):
        stop = min(start + chunk_size, n_features)
        t = _dense_columns(true, start, stop)
        q = _dense_columns(pred, start, stop)
        # errors
        diff = t - q
        ss_res[start:stop] = np.einsum("ij,ij->j", diff, diff)
        abs_err += float(np.abs(diff, out=diff).sum())
        del diff
        # per-feature (centred over cells)
        tc = t - t.mean(axis=0)
        qc = q - q.mean(axis=0)
        ss_tot[start:stop] = np.einsum("ij,ij->j", tc, tc)
        ss_pred[start:stop] = np.einsum("ij,ij->j", qc, qc)
        cross[start:stop] = np.einsum("ij,ij->j", tc, qc)
        del tc, qc
        # per-cell (centred over features), accumulated over blocks
        t -= cell_mean_true[:, None]
        q -= cell_mean_pred[:, None]
        cell_ss_true += np.einsum("ij,ij->i", t, t)
        cell_ss_pred += np.einsum("ij,ij->i", q, q)
        cell_cross += np.einsum("ij,ij->i", t, q)
        del t, q

    n_entries = n_cells * n_features
    has_var_true = ss_tot / n_cells > min_variance
    has_var_pred = ss_pred / n_cells > min_variance

    if has_var_true.any():
        r2_variance_weighted = float(1.0 - ss_res.sum() / ss_tot.sum())
    else:
        r2_variance_weighted = float("nan")

    r2_per_feature = 1.0 - ss_res[has_var_true] / ss_tot[has_var_true]

    keep = has_var_true & has_var_pred
    pearson_feature = np.clip(cross[keep] / np.sqrt(ss_tot[keep] * ss_pred[keep]), -1.0, 1.0)

    keep_cells = (cell_ss_true / n_features > min_variance) & (cell_ss_pred / n_features > min_variance)
    pearson_cell = np.clip(
        cell_cross[keep_cells] / np.sqrt(cell_ss_true[keep_cells] * cell_ss_pred[keep_cells]), -1.0, 1.0
    )

    return {
        "r2_variance_weighted": r2_variance_weighted,
        "r2_mean": _mean_or_nan(r2_per_feature),
        "n_features_r2": int(has_var_true.sum()),
        "pearson_mean": _mean_or_nan(pearson_feature),
        "n_features_pearson": int(keep.sum()),
        "pearson_cell_mean": _mean_or_nan(pearson_cell),
        "n_cells_pearson": int(keep_cells.sum()),
        "rmse": float(np.sqrt(ss_res.sum() / n_entries)),
        "mae": abs_err / n_entries,
    }
