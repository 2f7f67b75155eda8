"""UnitedNetModel.setup_mudata and model construction: registration, inference of likelihoods, input errors."""

import anndata as ad
import mudata as md
import numpy as np
import pytest
from scipy import sparse

from unitednet.model import UnitedNetModel

SCVI_OBS = ("_scvi_labels", "_scvi_batch")
SCVI_UNS = ("_scvi_uuid", "_scvi_manager_uuid")


# ---------------------------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------------------------
def test_setup_registers_all_modalities_by_default(make_mudata, model_kwargs):
    mdata = make_mudata(n_adt=10)
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, **model_kwargs)
    assert model.modalities == ["rna", "atac", "adt"]
    assert model.likelihoods == {"rna": "gaussian", "atac": "bernoulli", "adt": "gaussian"}
    assert {m: model.n_features(m) for m in model.modalities} == {"rna": 24, "atac": 32, "adt": 10}
    assert list(model.var_names("atac")) == [f"peak{i}" for i in range(32)]
    assert model.module.modalities == ["rna", "atac", "adt"]
    assert set(model.module.encoders) == {"rna", "atac", "adt"}
    assert model.module.encoders["atac"].network[0].in_features == 32
    assert model.module.decoders["adt"].network[-1].out_features == 10


def test_setup_registers_a_chosen_subset(make_mudata, model_kwargs):
    mdata = make_mudata(n_adt=10)
    UnitedNetModel.setup_mudata(mdata, modalities=["adt", "atac"])
    model = UnitedNetModel(mdata, **model_kwargs)
    assert model.modalities == ["adt", "atac"]
    assert set(model.module.encoders) == {"adt", "atac"}
    # no labels: translation only, no heads
    assert model.module.n_groups == 0
    assert model.module.heads is None
    assert model.labels_key is None


def test_likelihood_inference(make_mudata):
    mdata = make_mudata(n_adt=6)
    # a binary matrix stored densely is bernoulli too; a sparse non-binary one is gaussian
    mdata.mod["adt"].X = (mdata.mod["adt"].X > 5).astype(np.float32)
    mdata.mod["rna"].X = sparse.csr_matrix(np.abs(mdata.mod["rna"].X))
    UnitedNetModel.setup_mudata(mdata)
    model = UnitedNetModel(mdata, n_latent=4, n_hidden=8, n_layers=1)
    assert model.likelihoods == {"rna": "gaussian", "atac": "bernoulli", "adt": "bernoulli"}


def test_explicit_likelihoods_and_layers(mdata):
    mdata.mod["rna"].layers["raw"] = mdata.mod["rna"].X + 1.0
    UnitedNetModel.setup_mudata(mdata, likelihoods={"atac": "gaussian"}, layers={"rna": "raw"})
    model = UnitedNetModel(mdata, n_latent=4, n_hidden=8, n_layers=1)
    assert model.likelihoods == {"rna": "gaussian", "atac": "gaussian"}
    # the registered layer is what the model reads
    np.testing.assert_array_equal(model._matrix(mdata, "rna"), mdata.mod["rna"].layers["raw"])
    assert model.adata_manager.registry["setup_args"]["layers"] == {"rna": "raw", "atac": None}


def test_setup_only_adds_documented_keys(mdata, snapshot, assert_unchanged, model_kwargs, train_kwargs):
    before = snapshot(mdata)
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type", batch_key="batch")
    assert_unchanged(mdata, before, added_obs=SCVI_OBS, added_uns=SCVI_UNS)
    after_setup = snapshot(mdata)
    model = UnitedNetModel(mdata, **model_kwargs)
    model.train("supervised", **train_kwargs)
    # training adds only the split column
    assert_unchanged(mdata, after_setup, added_obs=("unitednet_split",))
    # and reading results back does not write anything
    after_train = snapshot(mdata)
    model.get_latent_representation()
    model.predict_labels(return_proba=True)
    model.predict_modality(source="rna", target="atac")
    assert_unchanged(mdata, after_train)


def test_setup_anndata_is_not_supported(mdata):
    with pytest.raises(NotImplementedError, match="setup_mudata"):
        UnitedNetModel.setup_anndata(mdata.mod["rna"])


def test_setup_mudata_rejects_anndata(mdata):
    with pytest.raises(TypeError, match="Expected a MuData"):
        UnitedNetModel.setup_mudata(mdata.mod["rna"])


# ---------------------------------------------------------------------------------------------------------------------
# input errors
# ---------------------------------------------------------------------------------------------------------------------
def test_unknown_modality(mdata):
    with pytest.raises(KeyError, match=r"\['protein'\] are not in the MuData"):
        UnitedNetModel.setup_mudata(mdata, modalities=["rna", "protein"])


def test_unknown_layer(mdata):
    with pytest.raises(KeyError, match="Layer 'counts' not found in modality 'rna'"):
        UnitedNetModel.setup_mudata(mdata, layers={"rna": "counts"})


def test_layers_naming_unregistered_modality(mdata):
    with pytest.raises(KeyError, match=r"`layers` names modalities \['atac'\] that are not being set up"):
        UnitedNetModel.setup_mudata(mdata, modalities=["rna"], layers={"atac": None})
    with pytest.raises(KeyError, match=r"`likelihoods` names modalities \['adt'\]"):
        UnitedNetModel.setup_mudata(mdata, likelihoods={"adt": "gaussian"})


@pytest.mark.parametrize("arg", ["labels_key", "batch_key"])
def test_unknown_obs_keys(mdata, arg):
    with pytest.raises(KeyError, match=f"{arg}='nope' is not a column of mdata.obs"):
        UnitedNetModel.setup_mudata(mdata, **{arg: "nope"})


def test_missing_labels(mdata):
    mdata.obs["cell_type"] = mdata.obs["cell_type"].astype(object)
    mdata.obs.iloc[3, mdata.obs.columns.get_loc("cell_type")] = None
    with pytest.raises(ValueError, match=r"mdata.obs\['cell_type'\] has 1 missing values"):
        UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")


def test_cells_not_shared(make_mudata):
    full = make_mudata()
    rna = full.mod["rna"]
    atac = full.mod["atac"][10:].copy()
    mdata = md.MuData({"rna": rna, "atac": atac})
    with pytest.raises(ValueError, match=r"Modality 'atac' does not hold exactly the MuData's cells.*intersect_obs"):
        UnitedNetModel.setup_mudata(mdata)


def test_nan_values_rejected(mdata):
    mdata.mod["rna"].X[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"Modality 'rna' \(X\) contains 1 NaN or infinite values"):
        UnitedNetModel.setup_mudata(mdata)


def test_inf_values_rejected_in_sparse_layer(mdata):
    X = mdata.mod["atac"].X.copy().astype(np.float32)
    X.data[0] = np.inf
    mdata.mod["atac"].layers["bad"] = X
    with pytest.raises(ValueError, match=r"Modality 'atac' \(layer 'bad'\) contains 1 NaN or infinite"):
        UnitedNetModel.setup_mudata(mdata, layers={"atac": "bad"})


def test_non_binary_data_declared_bernoulli(mdata):
    with pytest.raises(ValueError, match=r"'rna' \(X\) is declared 'bernoulli' but holds values other than 0 and 1"):
        UnitedNetModel.setup_mudata(mdata, likelihoods={"rna": "bernoulli"})


def test_unknown_likelihood(mdata):
    with pytest.raises(
        ValueError, match=r"Likelihood of 'rna' must be one of \['gaussian', 'bernoulli', 'nb'\], got 'poisson'"
    ):
        UnitedNetModel.setup_mudata(mdata, likelihoods={"rna": "poisson"})


def test_duplicated_or_empty_modalities(mdata):
    with pytest.raises(ValueError, match="listed twice"):
        UnitedNetModel.setup_mudata(mdata, modalities=["rna", "rna"])
    with pytest.raises(ValueError, match="at least one modality"):
        UnitedNetModel.setup_mudata(mdata, modalities=[])


def test_single_cell_label_rejected_when_stratifying(make_mudata, model_kwargs, train_kwargs):
    mdata = make_mudata(group_sizes=(60, 59, 1))
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, **model_kwargs)
    with pytest.raises(ValueError, match=r"Cannot stratify the split: 1 label/batch group\(s\) have a single cell"):
        model.train("supervised", **train_kwargs)
    # the user's own split avoids the problem
    mdata.obs["my_split"] = np.where(np.arange(mdata.n_obs) % 5 == 0, "validation", "train")
    model.train("supervised", split_key="my_split", **train_kwargs)
    assert model.is_trained_


# ---------------------------------------------------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------------------------------------------------
def test_n_groups_defaults_to_label_categories(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, n_heads=2, **model_kwargs)
    assert model.module.n_groups == 3
    assert model.module.heads.n_heads == 2
    assert model.module.heads.weights[0].shape == (3, model_kwargs["n_hidden"])
    assert list(model.label_categories) == ["alpha", "beta", "gamma"]
    assert "n_groups=3" in model._model_summary_string


def test_unsupervised_model_with_n_groups(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata)
    model = UnitedNetModel(mdata, n_groups=4, **model_kwargs)
    assert model.module.n_groups == 4
    assert model.module.heads.weights[0].shape[0] == 4
    assert model.module.class_weights.shape == (4,)


def test_bad_loss_weight_keys(mdata):
    UnitedNetModel.setup_mudata(mdata)
    with pytest.raises(KeyError, match=r"Unknown loss weights \['recon'\]"):
        UnitedNetModel(mdata, loss_weights={"recon": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        UnitedNetModel(mdata, loss_weights={"reconstruction": -1.0})


def test_loss_weights_override_defaults(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata)
    model = UnitedNetModel(mdata, loss_weights={"translation": 3.0}, **model_kwargs)
    assert model.module.loss_weights["translation"] == 3.0
    assert model.module.loss_weights["generator"] == 0.1
    assert model.module.loss_weights["reconstruction"] == 1.0


def test_n_groups_one_rejected(mdata):
    UnitedNetModel.setup_mudata(mdata)
    with pytest.raises(ValueError, match="n_groups must be 0 .* or at least 2"):
        UnitedNetModel(mdata, n_groups=1)


def test_bad_sizes_rejected(mdata):
    UnitedNetModel.setup_mudata(mdata)
    with pytest.raises(ValueError, match="n_latent must be a positive integer"):
        UnitedNetModel(mdata, n_latent=0)
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\)"):
        UnitedNetModel(mdata, dropout_rate=1.0)
    with pytest.raises(KeyError, match=r"`standardize` names unknown modalities \['adt'\]"):
        UnitedNetModel(mdata, standardize={"adt": False})


def test_supervised_training_without_labels(mdata, model_kwargs, train_kwargs):
    UnitedNetModel.setup_mudata(mdata)
    model = UnitedNetModel(mdata, n_groups=3, **model_kwargs)
    with pytest.raises(ValueError, match="Supervised training needs labels.*labels_key"):
        model.train("supervised", **train_kwargs)


def test_supervised_training_with_wrong_n_groups(mdata, model_kwargs, train_kwargs):
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, n_groups=5, **model_kwargs)
    with pytest.raises(ValueError, match="n_groups=5 but the labels have 3 categories"):
        model.train("supervised", **train_kwargs)


@pytest.mark.parametrize(
    ("task", "order", "needed"),
    [
        ("supervised", None, r"\['classification'\]"),
        ("unsupervised", None, r"\['clustering'\]"),
        ("translation", ("translation", "clustering"), r"\['clustering'\]"),
    ],
)
def test_objectives_needing_heads_without_groups(mdata, model_kwargs, train_kwargs, task, order, needed):
    UnitedNetModel.setup_mudata(mdata)
    model = UnitedNetModel(mdata, **model_kwargs)
    assert model.module.n_groups == 0
    with pytest.raises(ValueError, match=f"Objectives {needed} need group heads, but the model has n_groups=0"):
        model.train(task, objective_order=order, **train_kwargs)


def test_unknown_task(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata)
    model = UnitedNetModel(mdata, **model_kwargs)
    with pytest.raises(ValueError, match="task must be one of"):
        model.train("regression")


def test_untrained_model_refuses_outputs(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata)
    model = UnitedNetModel(mdata, **model_kwargs)
    with pytest.raises(RuntimeError, match="not trained yet"):
        model.get_latent_representation()


def test_mudata_with_an_anndata_query_is_rejected(mdata, fit):
    model = fit(mdata, "translation", setup={})
    with pytest.raises(TypeError, match="Expected a MuData"):
        model.get_latent_representation(ad.AnnData(np.zeros((3, 24), dtype=np.float32)))
