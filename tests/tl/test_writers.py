"""Scanpy-style writers of unitednet.tl: latent, predict_groups, predict_modality (also of ensembles), evaluate."""

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import unitednet as un
from unitednet.model import UnitedNetModel
from unitednet.tl import classification_metrics, clustering_metrics, hungarian_accuracy

GROUP_NAMES = ["alpha", "beta", "gamma"]


# models trained once for this module; `reuse_model` removes what each test writes to their MuData
@pytest.fixture(scope="module")
def _supervised_once(train_shared):
    return train_shared("supervised")


@pytest.fixture(scope="module")
def _with_test_cells_once(train_shared):
    return train_shared("supervised", train={"train_size": 0.7, "validation_size": 0.15})


@pytest.fixture(scope="module")
def _unsupervised_once(train_shared):
    return train_shared("unsupervised", setup={}, model={"n_groups": 3})


@pytest.fixture
def supervised(_supervised_once, reuse_model):
    return reuse_model(_supervised_once)


@pytest.fixture
def mdata(supervised):
    """The supervised model's registered MuData."""
    return supervised.adata


@pytest.fixture
def with_test_cells(_with_test_cells_once, reuse_model):
    """A supervised model whose split leaves test cells (70 / 15 / 15)."""
    return reuse_model(_with_test_cells_once)


@pytest.fixture
def unsupervised(_unsupervised_once, reuse_model):
    """Three groups, no labels registered (obs["cell_type"] is still there to score them)."""
    return reuse_model(_unsupervised_once)


# ---------------------------------------------------------------------------------------------------------------------
# latent
# ---------------------------------------------------------------------------------------------------------------------
def test_latent_writes_fused_and_modality_latents(supervised, mdata):
    assert un.tl.latent(supervised) is None
    np.testing.assert_array_equal(mdata.obsm["X_unitednet"], supervised.get_latent_representation())
    assert mdata.obsm["X_unitednet"].shape == (mdata.n_obs, 8)
    for m in ("rna", "atac"):
        np.testing.assert_array_equal(
            mdata.mod[m].obsm["X_unitednet"], supervised.get_latent_representation(modality=m)
        )
    # the fused latent differs from each modality's own latent
    assert not np.allclose(mdata.obsm["X_unitednet"], mdata.mod["rna"].obsm["X_unitednet"])


def test_latent_key_added_and_per_modality(supervised, mdata):
    un.tl.latent(supervised, mdata, key_added="X_custom", per_modality=False, batch_size=7)
    np.testing.assert_allclose(mdata.obsm["X_custom"], supervised.get_latent_representation(), rtol=1e-5, atol=1e-6)
    assert "X_unitednet" not in mdata.obsm
    assert all("X_custom" not in mdata.mod[m].obsm for m in ("rna", "atac"))


@pytest.mark.parametrize("name", ["rna", "atac"])
def test_latent_key_added_equal_to_modality_name(supervised, mdata, name):
    with pytest.raises(ValueError, match=f"key_added='{name}' equals a modality name"):
        un.tl.latent(supervised, key_added=name)
    assert "X_unitednet" not in mdata.obsm


def test_latent_copy_leaves_original_untouched(supervised, mdata, snapshot, assert_unchanged):
    snap = snapshot(mdata)
    obsm_before = set(mdata.obsm)
    result = un.tl.latent(supervised, copy=True)
    assert isinstance(result, md.MuData) and result is not mdata
    np.testing.assert_array_equal(result.obsm["X_unitednet"], supervised.get_latent_representation())
    np.testing.assert_array_equal(
        result.mod["atac"].obsm["X_unitednet"], supervised.get_latent_representation(modality="atac")
    )
    assert set(mdata.obsm) == obsm_before
    assert_unchanged(mdata, snap)


def test_latent_on_query_with_rna_only(supervised, mdata, make_query):
    query = make_query(mdata, ("rna",))
    un.tl.latent(supervised, query)
    assert list(query.mod) == ["rna"]
    np.testing.assert_allclose(query.obsm["X_unitednet"], supervised.get_latent_representation(query), rtol=1e-6)
    # one modality: the fused latent is that modality's latent
    np.testing.assert_allclose(query.obsm["X_unitednet"], query.mod["rna"].obsm["X_unitednet"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        query.mod["rna"].obsm["X_unitednet"], supervised.get_latent_representation(modality="rna"), rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------------------------------------------------------------
# predict_groups
# ---------------------------------------------------------------------------------------------------------------------
def _check_groups(mdata, model, query=None, key="unitednet_group"):
    groups = mdata.obs[key]
    assert isinstance(groups.dtype, pd.CategoricalDtype)
    assert list(groups.cat.categories) == model.group_names
    proba = mdata.obsm[f"{key}_proba"]
    assert isinstance(proba, pd.DataFrame)
    assert list(proba.columns) == model.group_names
    assert proba.index.equals(mdata.obs_names)
    np.testing.assert_allclose(proba.sum(1).to_numpy(), 1.0, rtol=1e-5)
    assert ((proba.to_numpy() >= 0) & (proba.to_numpy() <= 1)).all()
    np.testing.assert_array_equal(groups.astype(str).to_numpy(), proba.idxmax(axis=1).to_numpy())
    np.testing.assert_array_equal(groups.astype(str).to_numpy(), model.predict_labels(query))


def test_predict_groups_supervised(supervised, mdata):
    assert un.tl.predict_groups(supervised) is None
    _check_groups(mdata, supervised)
    assert supervised.group_names == GROUP_NAMES
    assert "unitednet_group" in mdata.obs and "unitednet_group_proba" in mdata.obsm


def test_predict_groups_unsupervised_custom_key(unsupervised):
    model, mdata = unsupervised, unsupervised.adata
    un.tl.predict_groups(model, key_added="clusters")
    _check_groups(mdata, model, key="clusters")
    assert list(mdata.obs["clusters"].cat.categories) == ["0", "1", "2"]


def test_predict_groups_on_rna_only_query(supervised, mdata, make_query):
    query = make_query(mdata, ("rna",))
    un.tl.predict_groups(supervised, query)
    _check_groups(query, supervised, query=query)
    assert "unitednet_group" not in mdata.obs  # the registered MuData is not touched


def test_predict_groups_copy(supervised, mdata, snapshot, assert_unchanged):
    snap = snapshot(mdata)
    result = un.tl.predict_groups(supervised, copy=True)
    _check_groups(result, supervised, query=result)
    assert "unitednet_group_proba" not in mdata.obsm
    assert_unchanged(mdata, snap)


def test_predict_groups_needs_a_mudata(supervised, mdata):
    with pytest.raises(TypeError, match="Expected a MuData, got AnnData"):
        un.tl.predict_groups(supervised, mdata.mod["rna"])


# ---------------------------------------------------------------------------------------------------------------------
# predict_modality
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("source", "target", "n_vars"), [("rna", "atac", 32), ("atac", "rna", 24)])
def test_predict_modality_writes_layer(supervised, mdata, source, target, n_vars):
    x_before = mdata.mod[target].X.copy()
    assert un.tl.predict_modality(supervised, source=source, target=target) is None
    layer = mdata.mod[target].layers[f"unitednet_from_{source}"]
    assert layer.shape == (mdata.n_obs, n_vars)
    np.testing.assert_array_equal(layer, supervised.predict_modality(source=source, target=target))
    # measured data stays as it was
    if sparse.issparse(x_before):
        assert (mdata.mod[target].X != x_before).nnz == 0
    else:
        np.testing.assert_array_equal(mdata.mod[target].X, x_before)


def test_predict_modality_key_added_and_copy(supervised, mdata, snapshot, assert_unchanged):
    snap = snapshot(mdata)
    result = un.tl.predict_modality(supervised, source="rna", target="atac", key_added="pred", copy=True)
    np.testing.assert_array_equal(
        result.mod["atac"].layers["pred"], supervised.predict_modality(source="rna", target="atac")
    )
    assert "unitednet_from_rna" not in result.mod["atac"].layers
    assert_unchanged(mdata, snap)


def test_predict_modality_adds_missing_target(supervised, mdata, make_query):
    query = make_query(mdata, ("rna",))
    rna_x = query.mod["rna"].X
    expected = supervised.predict_modality(query, source="rna", target="atac")
    un.tl.predict_modality(supervised, query, source="rna", target="atac")
    assert list(query.mod) == ["rna", "atac"]
    atac = query.mod["atac"]
    assert atac.shape == (mdata.n_obs, 32)
    assert atac.var_names.equals(supervised.var_names("atac"))
    assert atac.obs_names.equals(query.obs_names)
    # X is an all-zero sparse placeholder; the prediction lives in the layer only
    assert sparse.issparse(atac.X) and atac.X.nnz == 0 and atac.X.shape == (mdata.n_obs, 32)
    np.testing.assert_array_equal(atac.layers["unitednet_from_rna"], expected)
    assert query.mod["rna"].X is rna_x
    assert query.n_obs == mdata.n_obs


def test_predict_modality_follows_the_query_feature_order(supervised, mdata, make_query):
    query = make_query(mdata, ("rna", "atac"))
    reordered = query.mod["atac"].var_names[::-1]
    query.mod["atac"] = query.mod["atac"][:, reordered].copy()
    un.tl.predict_modality(supervised, query, source="rna", target="atac")
    expected = pd.DataFrame(
        supervised.predict_modality(source="rna", target="atac"), columns=supervised.var_names("atac")
    )
    np.testing.assert_allclose(
        query.mod["atac"].layers["unitednet_from_rna"], expected[list(reordered)].to_numpy(), rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------------------------------
# predict_modality with several models (an ensemble): their mean prediction
# ---------------------------------------------------------------------------------------------------------------------
ENSEMBLE_BATCH = 40  # 150 cells: three full batches and one of 30


@pytest.fixture
def other(supervised, tmp_path):
    """A second model on the same MuData object whose decoders predict differently (weights shifted)."""
    supervised.save(tmp_path / "m", overwrite=True)
    twin = UnitedNetModel.load(tmp_path / "m", adata=supervised.adata)
    with torch.no_grad():
        for name in ("rna", "atac"):
            for p in twin.module.decoders[name].parameters():
                p.add_(0.05 * torch.randn_like(p))
    return twin


@pytest.mark.parametrize(("source", "target"), [("atac", "rna"), ("rna", "atac")])
def test_ensemble_writes_the_mean_prediction(supervised, other, source, target):
    first = supervised.predict_modality(source=source, target=target)
    second = other.predict_modality(source=source, target=target)
    assert np.abs(first - second).max() > 1e-3  # the two models differ, so the mean is not either of them
    x_before = supervised.adata.mod[target].X.copy()
    assert un.tl.predict_modality([supervised, other], source=source, target=target, batch_size=ENSEMBLE_BATCH) is None
    layer = supervised.adata.mod[target].layers[f"unitednet_from_{source}"]
    assert layer.dtype == np.float32 and layer.shape == first.shape
    np.testing.assert_allclose(layer, (first.astype(np.float64) + second) / 2, rtol=1e-6, atol=1e-7)
    x_after = supervised.adata.mod[target].X  # measured data stays as it was
    assert (x_after != x_before).nnz == 0 if sparse.issparse(x_before) else np.array_equal(x_after, x_before)


def test_ensemble_of_one_is_the_model(supervised):
    un.tl.predict_modality((supervised,), source="rna", target="atac", key_added="one")
    np.testing.assert_array_equal(
        supervised.adata.mod["atac"].layers["one"], supervised.predict_modality(source="rna", target="atac")
    )


def test_ensemble_streams_the_same_mean_to_a_file(supervised, other, tmp_path):
    un.tl.predict_modality(
        [supervised, other], source="atac", target="rna", key_added="mean", batch_size=ENSEMBLE_BATCH
    )
    path = tmp_path / "mean.h5ad"
    result = un.tl.predict_modality(
        [supervised, other], source="atac", target="rna", batch_size=ENSEMBLE_BATCH, out=path
    )
    try:
        np.testing.assert_array_equal(result.X[:], supervised.adata.mod["rna"].layers["mean"])
        assert result.obs_names.equals(supervised.adata.obs_names)
        assert result.var_names.equals(supervised.var_names("rna"))
    finally:
        result.file.close()


def test_ensemble_predicts_a_query(supervised, other, make_query):
    query = make_query(supervised.adata, ("atac",))
    un.tl.predict_modality([supervised, other], query, source="atac", target="rna")
    first = supervised.predict_modality(query, source="atac", target="rna").astype(np.float64)
    expected = (first + other.predict_modality(query, source="atac", target="rna")) / 2
    np.testing.assert_allclose(query.mod["rna"].layers["unitednet_from_atac"], expected, rtol=1e-6, atol=1e-7)


def test_ensemble_of_models_on_other_mudata_objects(supervised, make_mudata, fit, snapshot, assert_unchanged):
    # refusals of mismatched ensembles are cases of tests/test_bad_inputs.py (ensemble_mismatch)
    snap = snapshot(supervised.adata)
    with pytest.raises(ValueError, match="empty sequence"):
        un.tl.predict_modality([], source="rna", target="atac")
    assert_unchanged(supervised.adata, snap)
    # with the MuData given, a model registered on another MuData (same features) joins the ensemble
    elsewhere = fit(make_mudata(), "supervised")
    un.tl.predict_modality([supervised, elsewhere], supervised.adata, source="rna", target="atac", key_added="mixed")
    expected = (
        supervised.predict_modality(source="rna", target="atac").astype(np.float64)
        + elsewhere.predict_modality(supervised.adata, source="rna", target="atac")
    ) / 2
    np.testing.assert_allclose(supervised.adata.mod["atac"].layers["mixed"], expected, rtol=1e-6, atol=1e-7)


def test_ensemble_member_without_the_target(supervised, make_mudata, fit):
    with_adt = fit(make_mudata(n_adt=8), "supervised")
    with pytest.raises(KeyError, match=r"Model 0 of the ensemble has no modality 'adt'; registered: \['rna', 'atac'\]"):
        un.tl.predict_modality([supervised, with_adt], with_adt.adata, source="rna", target="adt")
    # a single model keeps its own message
    with pytest.raises(KeyError, match="Unknown target modality 'adt'"):
        un.tl.predict_modality(supervised, source="rna", target="adt")


# ---------------------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------------------
def _check_matrices(result, modalities=("rna", "atac")):
    for key, metric in (("r2", "r2_variance_weighted"), ("pearson", "pearson_mean")):
        df = result[key]
        assert isinstance(df, pd.DataFrame)
        assert list(df.index) == list(modalities) and list(df.columns) == list(modalities)
        assert df.index.name == "target" and df.columns.name == "source"
        assert np.isnan(np.diag(df.to_numpy())).all()
        for s in modalities:
            for t in modalities:
                if s != t:
                    assert df.loc[t, s] == pytest.approx(result["cross_modal"][f"{s}->{t}"][metric])


def test_evaluate_supervised(supervised, mdata):
    result = un.tl.evaluate(supervised)
    assert result["n_cells"] == mdata.n_obs
    groups = result["groups"]
    assert set(groups) == {"accuracy", "balanced_accuracy", "macro_f1", "ari", "nmi"}
    truth = mdata.obs["cell_type"].astype(str).to_numpy()
    pred = supervised.predict_labels()
    assert groups["accuracy"] == pytest.approx((truth == pred).mean())
    expected = {**clustering_metrics(truth, pred), **classification_metrics(truth, pred)}
    for key, value in groups.items():
        assert value == pytest.approx(expected[key])
    assert set(result["cross_modal"]) == {"rna->atac", "atac->rna"}
    for scores in result["cross_modal"].values():
        assert {"r2_variance_weighted", "pearson_mean", "rmse", "mae"} <= set(scores)
        assert scores["rmse"] >= scores["mae"] >= 0
    _check_matrices(result)
    assert mdata.uns["unitednet"]["metrics"] is result


def test_evaluate_unsupervised_uses_hungarian_accuracy(unsupervised):
    model, mdata = unsupervised, unsupervised.adata
    result = un.tl.evaluate(model, labels_key="cell_type", key_added="clusters")
    truth = mdata.obs["cell_type"].astype(str).to_numpy()
    pred = model.predict_labels()
    assert set(result["groups"]) == {"accuracy", "ari", "nmi"}
    assert result["groups"]["accuracy"] == pytest.approx(hungarian_accuracy(truth, pred))
    assert mdata.uns["unitednet"]["clusters"] is result
    assert "metrics" not in mdata.uns["unitednet"]


def test_evaluate_without_labels_scores_modalities_only(unsupervised):
    result = un.tl.evaluate(unsupervised)
    assert "groups" not in result
    _check_matrices(result)


def test_evaluate_translation_model_with_registered_labels(make_mudata, fit):
    # labels registered, so the model has (untrained) group heads: only cross-modal metrics apply
    model = fit(make_mudata(), "translation")
    result = un.tl.evaluate(model)
    assert "groups" not in result
    _check_matrices(result)


def test_evaluate_split_restricts_to_those_cells(with_test_cells):
    mdata = with_test_cells.adata
    split = mdata.obs["unitednet_split"].to_numpy()
    is_test = split == "test"
    assert 0 < is_test.sum() < mdata.n_obs
    result = un.tl.evaluate(with_test_cells, split="test")
    assert result["n_cells"] == int(is_test.sum())
    truth = mdata.obs["cell_type"].astype(str).to_numpy()[is_test]
    pred = with_test_cells.predict_labels()[is_test]
    assert result["groups"]["accuracy"] == pytest.approx((truth == pred).mean())
    atac = mdata.mod["atac"].X[is_test].toarray()
    pred_atac = with_test_cells.predict_modality(source="rna", target="atac")[is_test]
    rmse = np.sqrt(np.mean((atac - pred_atac) ** 2))
    assert result["cross_modal"]["rna->atac"]["rmse"] == pytest.approx(rmse, rel=1e-5)
    # written on the MuData passed in, not on the subset
    assert mdata.uns["unitednet"]["metrics"]["n_cells"] == int(is_test.sum())
    validation = un.tl.evaluate(with_test_cells, split="validation", key_added="val")
    assert validation["n_cells"] == int((split == "validation").sum())


def test_evaluate_split_errors(with_test_cells, make_query):
    mdata = with_test_cells.adata
    with pytest.raises(ValueError, match="No cell has unitednet_split == 'tset'"):
        un.tl.evaluate(with_test_cells, split="tset")
    query = make_query(mdata, ("rna", "atac"), obs=("cell_type",))
    with pytest.raises(KeyError, match=r"split='test' needs mdata.obs\['unitednet_split'\]"):
        un.tl.evaluate(with_test_cells, query, split="test")


def test_evaluate_query_pairs_and_labels(supervised, mdata, make_query):
    query = make_query(mdata, ("rna", "atac"), obs=("cell_type",))
    result = un.tl.evaluate(supervised, query, pairs=[("rna", "atac")])
    assert set(result["cross_modal"]) == {"rna->atac"}
    assert np.isnan(result["r2"].loc["rna", "atac"])
    assert result["r2"].loc["atac", "rna"] == pytest.approx(result["cross_modal"]["rna->atac"]["r2_variance_weighted"])
    assert result["groups"]["accuracy"] == pytest.approx(un.tl.evaluate(supervised)["groups"]["accuracy"])
    assert query.uns["unitednet"]["metrics"] is result
    # an unlabelled query gets cross-modal metrics only; a named labels column must exist
    unlabelled = make_query(mdata, ("rna", "atac"))
    assert "groups" not in un.tl.evaluate(supervised, unlabelled)
    with pytest.raises(KeyError, match="labels_key='cell_type' is not a column"):
        un.tl.evaluate(supervised, unlabelled, labels_key="cell_type")


# ---------------------------------------------------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------------------------------------------------
def test_annotated_mudata_round_trips_through_h5mu(supervised, mdata, make_query, tmp_path):
    un.tl.latent(supervised)
    un.tl.predict_groups(supervised)
    un.tl.predict_modality(supervised, source="rna", target="atac")
    un.tl.predict_modality(supervised, source="atac", target="rna")
    result = un.tl.evaluate(supervised)
    mdata.write_h5mu(tmp_path / "annotated.h5mu")
    back = md.read_h5mu(tmp_path / "annotated.h5mu")

    np.testing.assert_array_equal(back.obsm["X_unitednet"], mdata.obsm["X_unitednet"])
    for m in ("rna", "atac"):
        np.testing.assert_array_equal(back.mod[m].obsm["X_unitednet"], mdata.mod[m].obsm["X_unitednet"])
    pd.testing.assert_series_equal(back.obs["unitednet_group"], mdata.obs["unitednet_group"])
    pd.testing.assert_frame_equal(back.obsm["unitednet_group_proba"], mdata.obsm["unitednet_group_proba"])
    np.testing.assert_array_equal(
        back.mod["atac"].layers["unitednet_from_rna"], mdata.mod["atac"].layers["unitednet_from_rna"]
    )
    np.testing.assert_array_equal(
        back.mod["rna"].layers["unitednet_from_atac"], mdata.mod["rna"].layers["unitednet_from_atac"]
    )
    assert list(back.obs["unitednet_split"].cat.categories) == ["train", "validation", "test"]
    stored = back.uns["unitednet"]["metrics"]
    assert stored["n_cells"] == mdata.n_obs
    assert stored["groups"] == pytest.approx(result["groups"])
    assert stored["cross_modal"]["rna->atac"] == pytest.approx(result["cross_modal"]["rna->atac"])
    np.testing.assert_allclose(stored["r2"].to_numpy(), result["r2"].to_numpy())
    assert list(stored["r2"].index) == ["rna", "atac"] and list(stored["r2"].columns) == ["rna", "atac"]

    # a query that got a predicted modality added round-trips too
    query = make_query(mdata, ("rna",))
    un.tl.predict_modality(supervised, query, source="rna", target="atac")
    query.write_h5mu(tmp_path / "query.h5mu")
    qback = md.read_h5mu(tmp_path / "query.h5mu")
    assert qback.mod["atac"].X.nnz == 0
    np.testing.assert_array_equal(
        qback.mod["atac"].layers["unitednet_from_rna"], query.mod["atac"].layers["unitednet_from_rna"]
    )


def test_predicted_placeholder_modality_is_never_read_as_data(mdata, fit):
    model = fit(mdata, "supervised")
    query = md.MuData({"rna": mdata.mod["rna"][:30].copy()})
    before = model.get_latent_representation(query)
    labels = model.predict_labels(query)
    un.tl.predict_modality(model, query, source="rna", target="atac")
    assert query.mod["atac"].uns["unitednet"]["predicted_only"] is True
    np.testing.assert_array_equal(model.get_latent_representation(query), before)
    np.testing.assert_array_equal(model.predict_labels(query), labels)
    with pytest.raises(ValueError, match="hold only predictions"):
        model.predict_modality(query, source="atac", target="rna")
