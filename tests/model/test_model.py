"""Outputs of a trained UnitedNetModel: latents, labels, cross-modal predictions, queries and save / load."""

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

import unitednet
from unitednet.model import UnitedNetModel


def _query(mdata: md.MuData, modalities=("rna",), rows=slice(None)) -> md.MuData:
    """A new MuData holding copies of some modalities of ``mdata`` (no scvi registration)."""
    mods = {m: ad.AnnData(mdata.mod[m].X[rows].copy(), var=mdata.mod[m].var.copy()) for m in modalities}
    for m in mods:
        mods[m].obs_names = mdata.obs_names[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.MuData(mods)


@pytest.fixture
def supervised(mdata, fit):
    return fit(mdata, "supervised")


def test_public_api():
    assert unitednet.UnitedNetModel is UnitedNetModel
    assert unitednet.model.UnitedNetModel is UnitedNetModel


# ---------------------------------------------------------------------------------------------------------------------
# latents, labels, predictions
# ---------------------------------------------------------------------------------------------------------------------
def test_latent_shapes(supervised, mdata):
    fused = supervised.get_latent_representation()
    assert fused.shape == (mdata.n_obs, 8) and fused.dtype == np.float32
    per_mod = {m: supervised.get_latent_representation(modality=m) for m in ("rna", "atac")}
    assert all(z.shape == (mdata.n_obs, 8) for z in per_mod.values())
    # the fused latent is the fusion-weighted sum of the modality latents
    w = supervised.get_fusion_weights()
    assert list(w.index) == ["rna", "atac"] and w.shape == (2, 1)
    np.testing.assert_allclose(w.to_numpy().sum(0), 1.0, rtol=1e-6)
    expected = w.loc["rna", 0] * per_mod["rna"] + w.loc["atac", 0] * per_mod["atac"]
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-5)
    # batch size does not change results
    np.testing.assert_allclose(supervised.get_latent_representation(batch_size=7), fused, rtol=1e-5, atol=1e-6)


def test_predict_labels_supervised(supervised, mdata):
    labels = supervised.predict_labels()
    assert labels.shape == (mdata.n_obs,)
    assert set(labels) <= {"alpha", "beta", "gamma"}
    proba = supervised.predict_labels(return_proba=True)
    assert isinstance(proba, pd.DataFrame)
    assert list(proba.columns) == ["alpha", "beta", "gamma"]
    assert proba.index.equals(mdata.obs_names)
    np.testing.assert_allclose(proba.sum(1).to_numpy(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.idxmax(axis=1).to_numpy(), labels)


def test_supervised_training_learns_the_labels(mdata, fit):
    model = fit(mdata, "supervised", train={"max_epochs": 6, "lr": 3e-3})
    accuracy = (model.predict_labels() == mdata.obs["cell_type"].to_numpy()).mean()
    assert accuracy > 0.8  # three well-separated synthetic groups


def test_predict_labels_unsupervised(mdata, fit):
    model = fit(mdata, "unsupervised", setup={}, model={"n_groups": 3})
    proba = model.predict_labels(return_proba=True)
    assert list(proba.columns) == ["0", "1", "2"]
    np.testing.assert_allclose(proba.sum(1).to_numpy(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.predict_labels(), proba.idxmax(axis=1).to_numpy())


def test_predict_modality_shapes_and_ranges(supervised, mdata):
    atac = supervised.predict_modality(source="rna", target="atac")
    assert atac.shape == (mdata.n_obs, 32)
    assert ((atac >= 0) & (atac <= 1)).all()
    rna = supervised.predict_modality(source="atac", target="rna")
    assert rna.shape == (mdata.n_obs, 24)
    assert (rna < 0).any()  # gaussian: not squashed into [0, 1]
    recon = supervised.predict_modality(source="rna", target="rna")
    assert recon.shape == (mdata.n_obs, 24)
    with pytest.raises(KeyError, match="Unknown target modality 'adt'"):
        supervised.predict_modality(source="rna", target="adt")


def test_gaussian_predictions_on_original_scale(make_mudata, fit):
    mdata = make_mudata(rna_shift=100.0)
    model = fit(mdata, "translation", setup={}, train={"max_epochs": 3})
    for source in ("atac", "rna"):
        pred = model.predict_modality(source=source, target="rna")
        assert abs(pred.mean() - 100.0) < 3.0, source
        # per-feature means follow the data, not 0
        np.testing.assert_allclose(pred.mean(0), mdata.mod["rna"].X.mean(0), atol=3.0)
    np.testing.assert_allclose(
        model.module.standardizers["rna"].loc.numpy(),
        mdata.mod["rna"].X[model.split_ == "train"].mean(0),
        rtol=1e-5,
    )


# ---------------------------------------------------------------------------------------------------------------------
# queries
# ---------------------------------------------------------------------------------------------------------------------
def test_query_with_rna_only(supervised, make_mudata):
    new = make_mudata(seed=7, n_cells=60)
    query = _query(new, ("rna",))
    before_X = query.mod["rna"].X.copy()
    before_obs = query.obs.copy()
    before_obsm = set(query.obsm)
    latent = supervised.get_latent_representation(query)
    assert latent.shape == (60, 8)
    # only rna present: the fused latent is the rna latent
    np.testing.assert_allclose(latent, supervised.get_latent_representation(query, modality="rna"), rtol=1e-6)
    labels = supervised.predict_labels(query)
    assert labels.shape == (60,) and set(labels) <= {"alpha", "beta", "gamma"}
    proba = supervised.predict_labels(query, return_proba=True)
    assert proba.index.equals(query.obs_names)
    atac = supervised.predict_modality(query, source="rna", target="atac")
    assert atac.shape == (60, 32) and ((atac >= 0) & (atac <= 1)).all()
    # the query is not modified and the model is not re-registered on it
    np.testing.assert_array_equal(query.mod["rna"].X, before_X)
    pd.testing.assert_frame_equal(query.obs, before_obs)
    assert "_scvi_uuid" not in query.uns
    assert set(query.obsm) == before_obsm and not list(query.mod["rna"].obsm)
    with pytest.raises(KeyError, match=r"\['atac'\] are not in the MuData"):
        supervised.get_latent_representation(query, modality="atac")


def test_query_uses_training_statistics(supervised, mdata):
    # a query of ten cells is standardised with the model's training statistics, not its own
    rows = slice(5, 15)
    query = _query(mdata, ("rna", "atac"), rows=rows)
    np.testing.assert_allclose(
        supervised.get_latent_representation(query), supervised.get_latent_representation()[rows], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(supervised.predict_labels(query), supervised.predict_labels()[rows])
    np.testing.assert_allclose(
        supervised.predict_modality(query, source="atac", target="rna"),
        supervised.predict_modality(source="atac", target="rna")[rows],
        rtol=1e-5,
        atol=1e-5,
    )


def test_standardize_can_be_turned_off(make_mudata, fit):
    mdata = make_mudata(n_adt=5)
    model = fit(mdata, "translation", setup={}, model={"standardize": {"adt": False}}, train={"max_epochs": 1})
    adt = model.module.standardizers["adt"]
    torch.testing.assert_close(adt.loc, torch.zeros(5))
    torch.testing.assert_close(adt.scale, torch.ones(5))
    # rna is still standardised; atac (bernoulli) never is
    assert not torch.allclose(model.module.standardizers["rna"].loc, torch.zeros(24))
    torch.testing.assert_close(model.module.standardizers["atac"].loc, torch.zeros(32))


# ---------------------------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------------------------
def test_save_load_round_trip(make_mudata, fit, tmp_path):
    mdata = make_mudata(group_sizes=(70, 50, 30))
    model = fit(mdata, "supervised", model={"n_heads": 3, "fusion": "feature"}, train={"train_size": 0.8})
    with torch.no_grad():
        model.module.best_head.fill_(2)  # a non-default head must survive
    model.save(tmp_path / "model", overwrite=True)

    loaded = UnitedNetModel.load(tmp_path / "model", adata=make_mudata(group_sizes=(70, 50, 30)))
    assert loaded.is_trained_
    assert loaded.task_ == "supervised"
    np.testing.assert_array_equal(loaded.split_, model.split_)
    assert loaded.best_epoch_ == model.best_epoch_
    assert int(loaded.module.best_head) == 2
    torch.testing.assert_close(loaded.module.class_weights, model.module.class_weights)
    assert not torch.allclose(loaded.module.class_weights, torch.ones(3))
    for m in ("rna",):
        torch.testing.assert_close(loaded.module.standardizers[m].loc, model.module.standardizers[m].loc)
        torch.testing.assert_close(loaded.module.standardizers[m].scale, model.module.standardizers[m].scale)
    assert loaded.module.fusion.logits.shape == (2, 8)
    assert loaded.module.heads.n_heads == 3
    assert set(loaded.history) == set(model.history)

    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    np.testing.assert_array_equal(
        loaded.get_latent_representation(modality="atac"), model.get_latent_representation(modality="atac")
    )
    np.testing.assert_array_equal(loaded.predict_labels(), model.predict_labels())
    pd.testing.assert_frame_equal(
        loaded.predict_labels(return_proba=True), model.predict_labels(return_proba=True), check_exact=True
    )
    for source, target in (("rna", "atac"), ("atac", "rna")):
        np.testing.assert_array_equal(
            loaded.predict_modality(source=source, target=target), model.predict_modality(source=source, target=target)
        )


def test_save_load_unsupervised_and_translation(mdata, make_mudata, fit, tmp_path):
    model = fit(mdata, "unsupervised", setup={}, model={"n_groups": 4})
    model.save(tmp_path / "unsup")
    loaded = UnitedNetModel.load(tmp_path / "unsup", adata=make_mudata())
    assert loaded.task_ == "unsupervised" and loaded.module.n_groups == 4
    assert loaded.group_names == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(loaded.predict_labels(), model.predict_labels())

    other = make_mudata(seed=3)
    model = fit(other, "translation", setup={"modalities": ["atac", "rna"]})
    model.save(tmp_path / "trans")
    loaded = UnitedNetModel.load(tmp_path / "trans", adata=make_mudata(seed=3))
    assert loaded.modalities == ["atac", "rna"] and loaded.module.heads is None
    np.testing.assert_array_equal(
        loaded.predict_modality(source="atac", target="rna"), model.predict_modality(source="atac", target="rna")
    )


def test_save_load_with_anndata(mdata, fit, tmp_path):
    model = fit(mdata, "supervised", train={"max_epochs": 1})
    model.save(tmp_path / "with_data", save_anndata=True)
    loaded = UnitedNetModel.load(tmp_path / "with_data")
    assert isinstance(loaded.adata, md.MuData)
    assert loaded.adata is not mdata
    assert list(loaded.adata.obs["unitednet_split"].astype(str)) == list(model.split_)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_view_anndata_setup(supervised, capsys):
    supervised.view_anndata_setup()
    out = capsys.readouterr().out
    assert "X_atac" in out and "cell_type" in out
