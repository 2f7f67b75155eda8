"""UnitedNetModel.setup_mudata and model construction: registration, inference of likelihoods, input errors."""

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


def test_loss_weights_override_defaults(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata)
    assert UnitedNetModel(mdata, **model_kwargs).module.loss_weights["translation"] == 3.0
    model = UnitedNetModel(mdata, loss_weights={"translation": 1.0}, **model_kwargs)
    assert model.module.loss_weights["translation"] == 1.0
    assert model.module.loss_weights["generator"] == 0.1
    assert model.module.loss_weights["reconstruction"] == 1.0


def test_bad_sizes_rejected(mdata):
    UnitedNetModel.setup_mudata(mdata)
    with pytest.raises(ValueError, match="n_latent must be an integer >= 1"):
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


def test_untrained_model_refuses_outputs(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata)
    model = UnitedNetModel(mdata, **model_kwargs)
    with pytest.raises(RuntimeError, match="not trained yet"):
        model.get_latent_representation()
