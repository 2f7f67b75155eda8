"""Perturbation tools: writers (predicted profiles, identified perturbation), metrics and the plot."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import unitednet
from unitednet.model import UnitedNetPerturbationModel

N_GENES = 30
UP = [0, 1, 2, 3, 4]  # genes raised by the perturbation, in decreasing size
DOWN = [5, 6]


def _observed(n_ctrl: int = 60, n_pert: int = 70, seed: int = 0) -> ad.AnnData:
    """Control and perturbed cells; the perturbation raises genes 0-4 by 5, 4, 3, 2, 1 and lowers genes 5-6 by 2."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(1, 3, size=N_GENES)
    ctrl = base + rng.normal(scale=0.3, size=(n_ctrl, N_GENES))
    effect = np.zeros(N_GENES)
    effect[UP] = [5, 4, 3, 2, 1]
    effect[DOWN] = -2
    pert = base + effect + rng.normal(scale=0.3, size=(n_pert, N_GENES))
    obs = pd.DataFrame({"condition": ["CTRL"] * n_ctrl + ["STIM"] * n_pert})
    obs.index = [f"c{i}" for i in range(len(obs))]
    adata = ad.AnnData(np.vstack([ctrl, pert]).astype(np.float32), obs=obs)
    adata.var_names = [f"g{i}" for i in range(N_GENES)]
    return adata


def _metrics(observed, predicted, **kwargs):
    return unitednet.tl.perturbation_metrics(
        observed, predicted, perturbation_key="condition", control="CTRL", perturbed="STIM", **kwargs
    )


# ---------------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------------
def test_metrics_of_perfect_and_no_change_predictions():
    adata = _observed()
    pert = adata[adata.obs["condition"] == "STIM"]
    ctrl = adata[adata.obs["condition"] == "CTRL"]
    perfect = _metrics(adata, pert.copy(), n_degs=(5, 10))
    assert perfect["n_control"] == 60 and perfect["n_perturbed"] == 70 and perfect["n_predicted"] == 70
    for key in ("r2_all", "r2_top5", "r2_top10", "r2_squared_pearson_top5", "pearson_delta_all"):
        assert perfect[key] == pytest.approx(1.0)
    assert perfect["energy_distance"] == pytest.approx(0.0, abs=1e-9)
    assert perfect["energy_distance_control"] > 1.0
    # the 7 changed genes (raised or lowered) are the top DEGs
    assert set(perfect["degs"][:7]) == {f"g{i}" for i in UP + DOWN}
    assert len(perfect["degs"]) == 10
    means = perfect["means"]
    assert list(means.columns) == ["control", "observed", "predicted", "deg_rank"]
    assert means.loc[perfect["degs"][0], "deg_rank"] == 0 and (means["deg_rank"] >= 0).all()
    np.testing.assert_allclose(means["observed"], np.asarray(pert.X).mean(0), rtol=1e-6)

    none = _metrics(adata, np.asarray(ctrl.X), n_degs=(5,))
    assert none["r2_top5"] == pytest.approx(none["r2_control_top5"])
    assert none["r2_top5"] < 0  # the control means miss every DEG
    assert np.isnan(none["pearson_delta_all"])  # the predicted change is exactly zero
    assert none["energy_distance"] == pytest.approx(none["energy_distance_control"])


def test_metrics_half_effect_and_given_degs():
    adata = _observed()
    ctrl = np.asarray(adata[adata.obs["condition"] == "CTRL"].X, dtype=np.float64)
    pert = np.asarray(adata[adata.obs["condition"] == "STIM"].X, dtype=np.float64)
    half = ctrl + (pert.mean(0) - ctrl.mean(0)) / 2
    m = _metrics(adata, half, degs=["g0", "g1", "g2"], n_degs=(3,), n_comps=None)
    assert m["degs"] == ["g0", "g1", "g2"]
    assert m["pearson_delta_top3"] == pytest.approx(1.0)  # right direction
    obs_mean, ctrl_mean = pert.mean(0)[:3], ctrl.mean(0)[:3]
    pred_mean = (obs_mean + ctrl_mean) / 2
    expected = 1 - ((obs_mean - pred_mean) ** 2).sum() / ((obs_mean - obs_mean.mean()) ** 2).sum()
    assert m["r2_top3"] == pytest.approx(expected, rel=1e-6)
    assert m["r2_top3"] < 1 and m["r2_top3"] > m["r2_control_top3"]


def test_energy_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 3))
    assert unitednet.tl._perturbation.energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    near = unitednet.tl._perturbation.energy_distance(a, a + 0.1)
    far = unitednet.tl._perturbation.energy_distance(a, a + 3.0)
    assert 0 < near < far


def test_metrics_read_mudata_and_layers(make_mudata):
    adata = _observed()
    adata.layers["log"] = adata.X.copy()
    adata.X = np.zeros_like(adata.X)
    import mudata as md

    mdata = md.MuData({"rna": adata})
    mdata.obs["condition"] = adata.obs["condition"].to_numpy()
    predicted = adata[adata.obs["condition"] == "STIM"].copy()
    m = unitednet.tl.perturbation_metrics(
        mdata, predicted, perturbation_key="condition", control="CTRL", perturbed="STIM", modality="rna", layer="log"
    )
    assert m["r2_all"] == pytest.approx(1.0)
    # predicted genes in another order are matched by name
    shuffled = predicted[:, predicted.var_names[::-1]].copy()
    assert _metrics(adata, shuffled, layer="log")["r2_all"] == pytest.approx(1.0)


def test_metrics_errors():
    adata = _observed()
    good = np.asarray(adata.X[:5])
    with pytest.raises(KeyError, match="perturbation_key='cond' is not a column"):
        unitednet.tl.perturbation_metrics(adata, good, perturbation_key="cond", control="CTRL", perturbed="STIM")
    with pytest.raises(ValueError, match="Only 0 observed perturbed cells"):
        unitednet.tl.perturbation_metrics(adata, good, perturbation_key="condition", control="CTRL", perturbed="KO")
    with pytest.raises(ValueError, match="predicted must be cells x 30 genes"):
        _metrics(adata, good[:, :4])
    missing = ad.AnnData(good[:, :4], var=pd.DataFrame(index=[f"g{i}" for i in range(4)]))
    with pytest.raises(ValueError, match="lacks 26 observed genes"):
        _metrics(adata, missing)
    with pytest.raises(KeyError, match="degs names genes that are not observed"):
        _metrics(adata, good, degs=["nope"])
    with pytest.raises(KeyError, match="no layer 'log'"):
        _metrics(adata, good, layer="log")
    with pytest.raises(TypeError, match="AnnData or a MuData"):
        unitednet.tl.perturbation_metrics(good, good, perturbation_key="c", control="a", perturbed="b")


# ---------------------------------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pert_model():
    """A small perturbation model on tiny RNA + ATAC data with a condition column (seed 0)."""
    import scvi
    from tests.conftest import MODEL_KWARGS, TRAIN_KWARGS, _make_mudata

    previous = scvi.settings.seed
    scvi.settings.seed = 0
    try:
        mdata = _make_mudata(n_cells=120)
        stim = np.arange(mdata.n_obs) % 2 == 1
        mdata.obs["condition"] = pd.Categorical(np.where(stim, "STIM", "CTRL"))
        mdata.mod["rna"].X[stim, :4] += 3.0
        UnitedNetPerturbationModel.setup_mudata(
            mdata, perturbation_key="condition", control_category="CTRL", labels_key="cell_type"
        )
        model = UnitedNetPerturbationModel(mdata, **MODEL_KWARGS)
        model.train(**TRAIN_KWARGS)
    finally:
        scvi.settings.seed = previous
    return model


def test_predict_perturbation_writer(pert_model, reuse_model, snapshot, assert_unchanged):
    model = reuse_model(pert_model)
    mdata = model.adata
    before = snapshot(mdata)
    copied = unitednet.tl.predict_perturbation(model, copy=True)
    assert_unchanged(mdata, before)  # copy=True leaves the registered MuData alone
    layer = copied.mod["rna"].layers["unitednet_perturbed_STIM"]
    assert layer.shape == (mdata.n_obs, 24)
    ctrl = (mdata.obs["condition"] == "CTRL").to_numpy()
    np.testing.assert_allclose(layer[ctrl], model.predict_perturbation(target="STIM").X, rtol=1e-6)
    # cells already stimulated keep their measured profile (zero move, default neighbours mode)
    np.testing.assert_allclose(layer[~ctrl], mdata.mod["rna"].X[~ctrl], atol=1e-5)
    assert copied.uns["unitednet"]["perturbation"]["unitednet_perturbed_STIM"] == {
        "target": "STIM",
        "modality": "rna",
        "mode": "neighbours",
        "n_models": 1,
    }
    # in place, another key, the control profiles of the stimulated cells, decoded
    assert unitednet.tl.predict_perturbation(model, target="CTRL", key_added="back", mode="decode") is None
    assert mdata.mod["rna"].layers["back"].shape == (mdata.n_obs, 24)
    assert mdata.uns["unitednet"]["perturbation"]["back"]["mode"] == "decode"
    # the atac modality (probabilities)
    unitednet.tl.predict_perturbation(model, modality="atac", key_added="atac_stim")
    atac = mdata.mod["atac"].layers["atac_stim"]
    assert atac.shape == (mdata.n_obs, 32) and atac.min() >= 0 and atac.max() <= 1


def _another(model, seed: int, mdata=None):
    """A second perturbation model trained like ``model`` with another seed (on ``mdata``, registered anew)."""
    import scvi
    from tests.conftest import MODEL_KWARGS, TRAIN_KWARGS

    previous = scvi.settings.seed
    scvi.settings.seed = seed
    try:
        if mdata is not None:
            UnitedNetPerturbationModel.setup_mudata(
                mdata, perturbation_key="condition", control_category="CTRL", labels_key="cell_type"
            )
        other = UnitedNetPerturbationModel(model.adata if mdata is None else mdata, **MODEL_KWARGS)
        other.train(**TRAIN_KWARGS)
    finally:
        scvi.settings.seed = previous
    return other


def test_predict_perturbation_ensemble(pert_model, reuse_model):
    model = reuse_model(pert_model)
    mdata = model.adata
    other = _another(model, seed=1)
    for m, key in ((model, "first"), (other, "second")):
        unitednet.tl.predict_perturbation(m, key_added=key)
    first, second = mdata.mod["rna"].layers["first"], mdata.mod["rna"].layers["second"]
    ctrl = (mdata.obs["condition"] == "CTRL").to_numpy()
    assert np.abs(first[ctrl] - second[ctrl]).max() > 1e-3  # two seeds predict differently
    unitednet.tl.predict_perturbation([model, other], key_added="mean")
    np.testing.assert_allclose(
        mdata.mod["rna"].layers["mean"], (first.astype(np.float64) + second) / 2, rtol=1e-6, atol=1e-6
    )
    assert mdata.uns["unitednet"]["perturbation"]["mean"] == {
        "target": "STIM",
        "modality": "rna",
        "mode": "neighbours",
        "n_models": 2,
    }


def test_predict_perturbation_ensemble_of_other_perturbations(pert_model, reuse_model, snapshot, assert_unchanged):
    model = reuse_model(pert_model)
    renamed = model.adata.copy()
    renamed.obs["condition"] = renamed.obs["condition"].cat.rename_categories({"STIM": "IFN"})
    other = _another(model, seed=0, mdata=renamed)
    before = snapshot(model.adata)
    with pytest.raises(ValueError, match=r"Model 1 of the ensemble is registered with other perturbations"):
        unitednet.tl.predict_perturbation([model, other], model.adata)
    with pytest.raises(TypeError, match="has no perturbation parts"):
        unitednet.tl.predict_perturbation([model, object()])
    assert_unchanged(model.adata, before)


def test_predict_perturbation_writer_errors(pert_model, reuse_model, make_query):
    model = reuse_model(pert_model)
    query = make_query(model.adata, modalities=("rna",))
    with pytest.raises(KeyError, match="has no 'condition' column"):
        unitednet.tl.predict_perturbation(model, query)
    with pytest.raises(KeyError, match="no modality 'atac' to write into"):
        unitednet.tl.predict_perturbation(model, query, source="CTRL", modality="atac")
    # a query without the column: every cell taken as control
    unitednet.tl.predict_perturbation(model, query, source="CTRL")
    assert query.mod["rna"].layers["unitednet_perturbed_STIM"].shape == (query.n_obs, 24)
    # with the column, cells under another perturbation cannot be declared control
    with pytest.raises(ValueError, match="Some chosen cells are under \\['STIM'\\]"):
        unitednet.tl.predict_perturbation(model, source="CTRL")
    plain = unitednet.UnitedNetModel
    assert not hasattr(plain, "predict_perturbation")
    with pytest.raises(TypeError, match="has no perturbation parts"):
        unitednet.tl.predict_perturbation(object(), query)


def test_identify_perturbation_writer(pert_model, reuse_model):
    model = reuse_model(pert_model)
    mdata = model.adata
    out = unitednet.tl.identify_perturbation(model, copy=True)
    assert "unitednet_perturbation" not in mdata.obs
    labels = out.obs["unitednet_perturbation"]
    assert list(labels.cat.categories) == ["CTRL", "STIM"]
    np.testing.assert_array_equal(labels.astype(str).to_numpy(), model.identify_perturbation())
    proba = out.obsm["unitednet_perturbation_proba"]
    assert list(proba.columns) == ["CTRL", "STIM"] and proba.index.equals(mdata.obs_names)
    unitednet.tl.identify_perturbation(model, key_added="ident")
    assert "ident" in mdata.obs and "ident_proba" in mdata.obsm
    with pytest.raises(ValueError, match="clashes with a modality name"):
        unitednet.tl.identify_perturbation(model, key_added="rna")


# ---------------------------------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------------------------------
def test_perturbation_plot(mpl_agg):
    adata = _observed()
    pert = adata[adata.obs["condition"] == "STIM"].copy()
    metrics = _metrics(adata, pert, n_degs=(5,))
    ax = unitednet.pl.perturbation(metrics, n_degs=5, n_labels=3)
    grey, red = ax.collections[:2]
    assert len(red.get_offsets()) == 5 and len(grey.get_offsets()) == N_GENES - 5
    assert len(ax.texts) == 3
    assert "top 5 DEGs 1.00" in ax.get_title()
    _, ax2 = mpl_agg.subplots()
    assert unitednet.pl.perturbation(metrics["means"], ax=ax2, title="x") is ax2 and ax2.get_title() == "x"
    with pytest.raises(KeyError, match="No 'means' table"):
        unitednet.pl.perturbation({"r2_all": 1.0})
    with pytest.raises(KeyError, match="lacks columns \\['deg_rank'\\]"):
        unitednet.pl.perturbation(metrics["means"].drop(columns="deg_rank"))
