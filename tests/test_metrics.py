import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from sklearn.metrics import (
    adjusted_rand_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    normalized_mutual_info_score,
    r2_score,
)

from unitednet.tl._metrics import (
    classification_metrics,
    clustering_metrics,
    hungarian_accuracy,
    match_groups,
    regression_metrics,
)


# ---------------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def regression_data():
    rng = np.random.default_rng(0)
    n_cells, n_features = 60, 25
    y_true = rng.normal(size=(n_cells, n_features)) * rng.uniform(0.5, 3.0, size=n_features)
    y_pred = y_true + rng.normal(scale=0.7, size=(n_cells, n_features))
    return y_true, y_pred


@pytest.fixture
def sparse_regression_data():
    rng = np.random.default_rng(1)
    y_true = sparse.random(80, 30, density=0.3, format="csr", random_state=rng) * 5
    y_pred = sparse.random(80, 30, density=0.4, format="csr", random_state=rng) * 5 + 0.5 * y_true
    return y_true, y_pred


# ---------------------------------------------------------------------------------------------------------------------
# Hungarian matching
# ---------------------------------------------------------------------------------------------------------------------
def test_hungarian_permuted_ids_is_perfect():
    true = np.array(["T", "T", "B", "B", "NK", "NK", "NK"])
    pred = np.array([2, 2, 0, 0, 5, 5, 5])
    assert hungarian_accuracy(true, pred) == 1.0
    assert match_groups(true, pred) == {0: "B", 2: "T", 5: "NK"}


def test_hungarian_known_contingency_beats_greedy():
    # predicted a: 3 x-cells, 2 y-cells; predicted b: 2 x-cells.
    # Greedy (a->x) matches 3 cells; the optimum (a->y, b->x) matches 4 of 7.
    true = ["x", "x", "x", "y", "y", "x", "x"]
    pred = ["a", "a", "a", "a", "a", "b", "b"]
    assert hungarian_accuracy(true, pred) == pytest.approx(4 / 7)
    assert match_groups(true, pred) == {"a": "y", "b": "x"}


def test_hungarian_more_predicted_groups_than_labels():
    true = [0, 0, 0, 1, 1, 1]
    pred = [7, 7, 8, 9, 9, 9]
    assert hungarian_accuracy(true, pred) == pytest.approx(5 / 6)
    mapping = match_groups(true, pred)
    assert mapping == {7: 0, 8: None, 9: 1}
    assert all(type(k) is int for k in mapping)


def test_hungarian_fewer_predicted_groups_than_labels():
    true = ["a", "a", "b", "b", "c", "c"]
    pred = [1, 1, 1, 1, 1, 1]
    assert hungarian_accuracy(true, pred) == pytest.approx(2 / 6)
    mapping = match_groups(true, pred)
    assert list(mapping) == [1]
    assert mapping[1] in {"a", "b", "c"}


def test_hungarian_accepts_categorical_and_series():
    true = pd.Categorical(["a", "b", "a", "c"], categories=["a", "b", "c", "unused"])
    pred = pd.Series([3, 4, 3, 5])
    assert hungarian_accuracy(true, pred) == 1.0


@pytest.mark.parametrize(
    ("labels_true", "labels_pred", "match"),
    [
        ([0, 1, 2], [0, 1], "has 3 labels but `labels_pred` has 2"),
        ([0.0, np.nan, 1.0], [0, 1, 1], r"`labels_true` contains 1 missing label"),
        (["a", None, "b"], [0, 1, 1], r"`labels_true` contains 1 missing label"),
        ([0, 1, 1], pd.Categorical(["a", np.nan, "b"]), r"`labels_pred` contains 1 missing label"),
        (np.zeros((3, 2)), [0, 1, 1], r"`labels_true` must be 1-D"),
        ([], [], r"`labels_true` is empty"),
        (np.array(["a", 1, "b"], dtype=object), [0, 1, 1], r"`labels_true` mixes label types"),
    ],
)
def test_label_validation(labels_true, labels_pred, match):
    for func in (hungarian_accuracy, match_groups, clustering_metrics, classification_metrics):
        with pytest.raises(ValueError, match=match):
            func(labels_true, labels_pred)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5)), min_size=1, max_size=40),
    st.permutations(range(6)),
)
def test_hungarian_properties(pairs, permutation):
    true = np.array([t for t, _ in pairs])
    pred = np.array([p for _, p in pairs])
    acc = hungarian_accuracy(true, pred)
    n = len(pairs)
    assert 0.0 < acc <= 1.0
    # at least the largest contingency cell is matched
    assert acc * n >= max(np.sum((true == t) & (pred == p)) for t, p in pairs) - 1e-9
    # invariant under relabelling of the predicted groups (here also into strings)
    relabelled = np.array([f"g{permutation[p]}" for p in pred])
    assert hungarian_accuracy(true, relabelled) == acc
    # symmetric in its arguments
    assert hungarian_accuracy(pred, true) == acc
    # relabelling the predictions with the matching reaches exactly the Hungarian accuracy
    mapping = match_groups(true, pred)
    mapped = np.array([mapping[p] if mapping[p] is not None else -1 for p in pred])
    assert np.mean(mapped == true) == pytest.approx(acc)
    assert sum(v is not None for v in mapping.values()) == min(len(set(true)), len(set(pred)))


# ---------------------------------------------------------------------------------------------------------------------
# clustering / classification
# ---------------------------------------------------------------------------------------------------------------------
def test_clustering_metrics_permuted_ids():
    true = ["a", "a", "b", "b", "c", "c"]
    pred = [9, 9, 3, 3, 1, 1]
    result = clustering_metrics(true, pred)
    assert set(result) == {"accuracy", "ari", "nmi"}
    assert result == pytest.approx({"accuracy": 1.0, "ari": 1.0, "nmi": 1.0})
    assert all(type(v) is float for v in result.values())


def test_clustering_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 4, size=200)
    pred = np.where(rng.random(200) < 0.7, true, rng.integers(0, 6, size=200))
    result = clustering_metrics(true, pred)
    assert result["ari"] == pytest.approx(adjusted_rand_score(true, pred))
    assert result["nmi"] == pytest.approx(normalized_mutual_info_score(true, pred))
    assert result["accuracy"] == hungarian_accuracy(true, pred)


def test_classification_metrics_known_values():
    # class 0: P = 3/4, R = 1, F1 = 6/7; class 1: never predicted, F1 = 0
    result = classification_metrics([0, 0, 0, 1], [0, 0, 0, 0])
    assert result == pytest.approx({"accuracy": 0.75, "balanced_accuracy": 0.5, "macro_f1": 3 / 7})


def test_classification_metrics_match_sklearn_without_warnings():
    rng = np.random.default_rng(4)
    classes = np.array(["B", "NK", "T", "mono"])
    true = classes[rng.integers(0, 3, size=150)]
    pred = classes[rng.integers(0, 4, size=150)]  # "mono" is predicted but never true
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = classification_metrics(true, pred)
    assert result["accuracy"] == pytest.approx(np.mean(true == pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_balanced = balanced_accuracy_score(true, pred)
    assert result["balanced_accuracy"] == pytest.approx(expected_balanced)
    assert result["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro", zero_division=0.0))


def test_classification_metrics_rejects_mixed_vocabularies():
    with pytest.raises(ValueError, match=r"holds strings but `labels_pred` holds numbers.*clustering_metrics"):
        classification_metrics(["a", "b"], [0, 1])


# ---------------------------------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------------------------------
def test_regression_metrics_match_sklearn(regression_data):
    y_true, y_pred = regression_data
    result = regression_metrics(y_true, y_pred)
    assert result["r2_variance_weighted"] == pytest.approx(
        r2_score(y_true, y_pred, multioutput="variance_weighted"), rel=1e-12
    )
    assert result["r2_mean"] == pytest.approx(r2_score(y_true, y_pred, multioutput="uniform_average"), rel=1e-12)
    assert result["n_features_r2"] == y_true.shape[1]
    assert result["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y_true.ravel(), y_pred.ravel())))
    assert result["mae"] == pytest.approx(mean_absolute_error(y_true.ravel(), y_pred.ravel()))
    feature_r = [np.corrcoef(y_true[:, j], y_pred[:, j])[0, 1] for j in range(y_true.shape[1])]
    cell_r = [np.corrcoef(y_true[i], y_pred[i])[0, 1] for i in range(y_true.shape[0])]
    assert result["pearson_mean"] == pytest.approx(np.mean(feature_r))
    assert result["pearson_cell_mean"] == pytest.approx(np.mean(cell_r))
    assert result["n_features_pearson"] == y_true.shape[1]
    assert result["n_cells_pearson"] == y_true.shape[0]
    assert all(isinstance(v, float) for k, v in result.items() if not k.startswith("n_"))
    assert all(type(v) is int for k, v in result.items() if k.startswith("n_"))


def test_regression_perfect_prediction(regression_data):
    y_true, _ = regression_data
    result = regression_metrics(y_true, y_true.copy())
    expected = {"r2_variance_weighted": 1.0, "r2_mean": 1.0, "pearson_mean": 1.0, "pearson_cell_mean": 1.0}
    assert {k: result[k] for k in expected} == pytest.approx(expected)
    assert result["rmse"] == 0.0
    assert result["mae"] == 0.0


def test_regression_tiny_hand_computed():
    y_true = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])  # feature 1 is constant
    y_pred = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 3.0]])
    result = regression_metrics(y_true, y_pred)
    # feature 0: SS_tot = 8, SS_res = 2, R² = 0.75; feature 1: SS_tot = 0, SS_res = 4
    assert result["r2_variance_weighted"] == pytest.approx(1 - (2 + 4) / 8)
    assert result["r2_mean"] == pytest.approx(0.75)
    assert result["n_features_r2"] == 1
    assert result["pearson_mean"] == pytest.approx(1.0)
    assert result["n_features_pearson"] == 1
    assert result["rmse"] == pytest.approx(np.sqrt(6 / 6))
    assert result["mae"] == pytest.approx(4 / 6)
    # cells: (0,1) vs (1,1) and (4,1) vs (3,3) have no predicted variance; (2,1) vs (2,1) has r = 1
    assert result["n_cells_pearson"] == 1
    assert result["pearson_cell_mean"] == pytest.approx(1.0)


def test_constant_feature_excluded_from_r2_mean(regression_data):
    y_true, y_pred = regression_data
    y_true = y_true.copy()
    y_true[:, 3] = 2.5
    result = regression_metrics(y_true, y_pred)
    assert result["n_features_r2"] == y_true.shape[1] - 1
    assert result["n_features_pearson"] == y_true.shape[1] - 1
    keep = np.arange(y_true.shape[1]) != 3
    assert result["r2_mean"] == pytest.approx(r2_score(y_true[:, keep], y_pred[:, keep]), rel=1e-12)
    # the pooled R² still counts the residuals of the constant feature (sklearn drops them)
    ss_res = ((y_true - y_pred) ** 2).sum()
    ss_tot = ((y_true - y_true.mean(axis=0)) ** 2).sum()
    assert result["r2_variance_weighted"] == pytest.approx(1 - ss_res / ss_tot, rel=1e-12)
    assert result["r2_variance_weighted"] < r2_score(y_true, y_pred, multioutput="variance_weighted")


def test_nearly_constant_feature_does_not_explode(regression_data):
    y_true, y_pred = regression_data
    rng = np.random.default_rng(5)
    y_true = y_true.copy()
    y_true[:, 0] = 1.0 + 1e-6 * rng.normal(size=y_true.shape[0])  # variance ~1e-12
    naive = r2_score(y_true, y_pred, multioutput="raw_values")
    assert naive[0] < -1e9  # what the published per-feature average ran into
    result = regression_metrics(y_true, y_pred)
    assert result["n_features_r2"] == y_true.shape[1] - 1
    assert -1.0 < result["r2_mean"] <= 1.0
    assert -1.0 < result["r2_variance_weighted"] <= 1.0
    assert result["r2_mean"] == pytest.approx(np.mean(naive[1:]), rel=1e-12)
    # lowering the threshold lets the feature in, and the per-feature mean explodes
    assert regression_metrics(y_true, y_pred, min_variance=0.0)["r2_mean"] < -1e7


def test_all_constant_gives_nan():
    y_true = np.ones((5, 3))
    result = regression_metrics(y_true, np.zeros((5, 3)))
    assert np.isnan(result["r2_variance_weighted"])
    assert np.isnan(result["r2_mean"])
    assert np.isnan(result["pearson_mean"])
    assert np.isnan(result["pearson_cell_mean"])
    assert result["n_features_r2"] == 0
    assert result["rmse"] == pytest.approx(1.0)
    assert result["mae"] == pytest.approx(1.0)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("container", [sparse.csr_matrix, sparse.csr_array])
def test_sparse_matches_dense(sparse_regression_data, fmt, container):
    y_true, y_pred = sparse_regression_data
    dense = regression_metrics(y_true.toarray(), y_pred.toarray())
    sp_true = container(y_true).asformat(fmt)
    sp_pred = container(y_pred).asformat(fmt)
    for a, b in [(sp_true, sp_pred), (sp_true, y_pred.toarray()), (y_true.toarray(), sp_pred)]:
        result = regression_metrics(a, b)
        assert result.keys() == dense.keys()
        for key in dense:
            assert result[key] == pytest.approx(dense[key], rel=1e-12, abs=1e-14), key


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 2048])
def test_chunking_does_not_change_results(sparse_regression_data, chunk_size):
    y_true, y_pred = sparse_regression_data
    reference = regression_metrics(y_true.toarray(), y_pred.toarray())
    for a, b in [(y_true, y_pred), (y_true.toarray(), y_pred.toarray())]:
        result = regression_metrics(a, b, chunk_size=chunk_size)
        for key in reference:
            assert result[key] == pytest.approx(reference[key], rel=1e-12, abs=1e-14), key


def test_sparse_input_is_not_modified(sparse_regression_data):
    y_true, y_pred = sparse_regression_data
    before = y_true.copy()
    regression_metrics(y_true, y_pred, chunk_size=4)
    assert (y_true != before).nnz == 0
    assert y_true.format == "csr"


def test_float32_and_int_inputs(regression_data):
    y_true, y_pred = regression_data
    ref = regression_metrics(y_true.astype(np.float32).astype(np.float64), y_pred.astype(np.float32))
    assert regression_metrics(y_true.astype(np.float32), y_pred.astype(np.float32)) == pytest.approx(ref)
    counts = np.arange(12).reshape(4, 3)
    assert regression_metrics(counts, counts)["r2_variance_weighted"] == 1.0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), r"`y_true` has shape \(4, 3\) but `y_pred` has shape \(4, 2\)"),
        (np.zeros((4, 3)), np.zeros((5, 3)), r"same cells \(rows\) and features \(columns\)"),
        (np.zeros(4), np.zeros(4), r"`y_true` must be 2-D.*reshape\(-1, 1\)"),
        (np.zeros((1, 3)), np.zeros((1, 3)), r"at least 2 cells"),
        (np.zeros((3, 0)), np.zeros((3, 0)), r"no features"),
        (np.array([["a", "b"], ["c", "d"]]), np.zeros((2, 2)), r"`y_true` has non-numeric dtype"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), np.zeros((2, 2)), r"`y_true` contains NaN or infinite.*cell 0"),
        (np.zeros((2, 2)), np.array([[1.0, 0.0], [np.inf, 1.0]]), r"`y_pred` contains NaN or infinite.*cell 1"),
        (
            sparse.csr_matrix(np.array([[1.0, np.nan], [0.0, 1.0]])),
            np.zeros((2, 2)),
            r"`y_true` contains NaN or infinite",
        ),
    ],
)
def test_regression_validation(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        regression_metrics(y_true, y_pred)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_variance": -1.0}, r"`min_variance` must be a finite number >= 0"),
        ({"min_variance": np.nan}, r"`min_variance` must be a finite number >= 0"),
        ({"min_variance": "small"}, r"`min_variance` must be a finite number >= 0"),
        ({"chunk_size": 0}, r"`chunk_size` must be a positive integer"),
        ({"chunk_size": 2.5}, r"`chunk_size` must be a positive integer"),
    ],
)
def test_regression_parameter_validation(regression_data, kwargs, match):
    y_true, y_pred = regression_data
    with pytest.raises(ValueError, match=match):
        regression_metrics(y_true, y_pred, **kwargs)
