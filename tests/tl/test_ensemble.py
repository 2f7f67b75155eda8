"""tl.predict_modality with several models: the ensemble's mean prediction, in memory and streamed to a file."""

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

import unitednet as un
from unitednet.model import UnitedNetModel

BATCH = 40  # 150 cells: three full batches and one of 30


@pytest.fixture(scope="module")
def _supervised_once(train_shared):
    return train_shared("supervised")


@pytest.fixture
def model(_supervised_once, reuse_model):
    return reuse_model(_supervised_once)


@pytest.fixture
def other(model, tmp_path):
    """A second model on the same MuData object whose decoders predict differently (weights shifted)."""
    model.save(tmp_path / "m", overwrite=True)
    twin = UnitedNetModel.load(tmp_path / "m", adata=model.adata)
    with torch.no_grad():
        for name in ("rna", "atac"):
            for p in twin.module.decoders[name].parameters():
                p.add_(0.05 * torch.randn_like(p))
    return twin


@pytest.mark.parametrize(("source", "target"), [("atac", "rna"), ("rna", "atac")])
def test_ensemble_writes_the_mean_prediction(model, other, source, target):
    first = model.predict_modality(source=source, target=target)
    second = other.predict_modality(source=source, target=target)
    assert np.abs(first - second).max() > 1e-3  # the two models differ, so the mean is not either of them
    x_before = model.adata.mod[target].X.copy()
    assert un.tl.predict_modality([model, other], source=source, target=target, batch_size=BATCH) is None
    layer = model.adata.mod[target].layers[f"unitednet_from_{source}"]
    assert layer.dtype == np.float32 and layer.shape == first.shape
    np.testing.assert_allclose(layer, (first.astype(np.float64) + second) / 2, rtol=1e-6, atol=1e-7)
    x_after = model.adata.mod[target].X  # measured data stays as it was
    assert (x_after != x_before).nnz == 0 if sparse.issparse(x_before) else np.array_equal(x_after, x_before)


def test_ensemble_of_one_is_the_model(model):
    un.tl.predict_modality((model,), source="rna", target="atac", key_added="one")
    np.testing.assert_array_equal(
        model.adata.mod["atac"].layers["one"], model.predict_modality(source="rna", target="atac")
    )


def test_ensemble_streams_the_same_mean_to_a_file(model, other, tmp_path):
    un.tl.predict_modality([model, other], source="atac", target="rna", key_added="mean", batch_size=BATCH)
    path = tmp_path / "mean.h5ad"
    result = un.tl.predict_modality([model, other], source="atac", target="rna", batch_size=BATCH, out=path)
    try:
        np.testing.assert_array_equal(result.X[:], model.adata.mod["rna"].layers["mean"])
        assert result.obs_names.equals(model.adata.obs_names)
        assert result.var_names.equals(model.var_names("rna"))
    finally:
        result.file.close()
    assert isinstance(ad.read_h5ad(path), ad.AnnData)


def test_ensemble_predicts_a_query(model, other, make_query):
    query = make_query(model.adata, ("atac",))
    un.tl.predict_modality([model, other], query, source="atac", target="rna")
    first = model.predict_modality(query, source="atac", target="rna").astype(np.float64)
    expected = (first + other.predict_modality(query, source="atac", target="rna")) / 2
    np.testing.assert_allclose(query.mod["rna"].layers["unitednet_from_atac"], expected, rtol=1e-6, atol=1e-7)


def test_ensemble_of_models_on_other_mudata_objects(model, make_mudata, fit, snapshot, assert_unchanged):
    # refusals of mismatched ensembles are cases of tests/test_bad_inputs.py (ensemble_mismatch)
    snap = snapshot(model.adata)
    with pytest.raises(ValueError, match="empty sequence"):
        un.tl.predict_modality([], source="rna", target="atac")
    assert_unchanged(model.adata, snap)
    # with the MuData given, a model registered on another MuData (same features) joins the ensemble
    elsewhere = fit(make_mudata(), "supervised")
    un.tl.predict_modality([model, elsewhere], model.adata, source="rna", target="atac", key_added="mixed")
    expected = (
        model.predict_modality(source="rna", target="atac").astype(np.float64)
        + elsewhere.predict_modality(model.adata, source="rna", target="atac")
    ) / 2
    np.testing.assert_allclose(model.adata.mod["atac"].layers["mixed"], expected, rtol=1e-6, atol=1e-7)


def test_ensemble_member_without_the_target(model, make_mudata, fit):
    with_adt = fit(make_mudata(n_adt=8), "supervised")
    with pytest.raises(KeyError, match=r"Model 0 of the ensemble has no modality 'adt'; registered: \['rna', 'atac'\]"):
        un.tl.predict_modality([model, with_adt], with_adt.adata, source="rna", target="adt")
    # a single model keeps its own message
    with pytest.raises(KeyError, match="Unknown target modality 'adt'"):
        un.tl.predict_modality(model, source="rna", target="adt")
