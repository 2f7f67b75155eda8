"""Likelihoods per modality: the negative binomial ("nb") for raw counts, validation and inference in setup_mudata."""

import logging
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse, stats

import unitednet as un
from unitednet.model import UnitedNetModel
from unitednet.module._losses import nb_log_likelihood, reconstruction_error

pytestmark = pytest.mark.filterwarnings("ignore:unrecognized nn.Module:UserWarning")


def _with_counts(mdata: md.MuData, n_genes: int = 20, seed: int = 1, sparse_counts: bool = True) -> md.MuData:
    """``mdata`` plus a ``cnt`` modality of negative-binomial counts whose means depend on the cell's group."""
    rng = np.random.default_rng(seed)
    codes = mdata.obs["cell_type"].cat.codes.to_numpy()
    means = rng.gamma(2.0, 3.0, size=(3, n_genes))
    mu = means[codes] * rng.uniform(0.5, 1.5, size=(mdata.n_obs, 1))  # library-size variation
    counts = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    X = sparse.csr_matrix(counts) if sparse_counts else counts
    cnt = ad.AnnData(X, obs=pd.DataFrame(index=mdata.obs_names.copy()))
    cnt.var_names = [f"cnt{i}" for i in range(n_genes)]
    mods = {m: mdata.mod[m] for m in mdata.mod} | {"cnt": cnt}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = md.MuData(mods)
    out.obs = mdata.obs.copy()
    return out


@pytest.fixture(scope="module")
def _nb_model_once():
    import scvi
    from tests.conftest import MODEL_KWARGS, TRAIN_KWARGS, _make_mudata

    previous = scvi.settings.seed
    scvi.settings.seed = 0
    try:
        mdata = _with_counts(_make_mudata())
        UnitedNetModel.setup_mudata(mdata, modalities=["rna", "cnt"], likelihoods={"cnt": "nb"}, labels_key="cell_type")
        model = UnitedNetModel(mdata, **MODEL_KWARGS)
        theta0 = model.module.log_theta["cnt"].detach().clone()
        model.train("supervised", **{**TRAIN_KWARGS, "max_epochs": 3})
    finally:
        scvi.settings.seed = previous
    return model, theta0


@pytest.fixture
def nb_model(_nb_model_once, reuse_model):
    model, theta0 = _nb_model_once
    return reuse_model(model), theta0


# ---------------------------------------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------------------------------------
def test_nb_log_likelihood_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 60, size=(7, 5)).astype(np.float64)
    mu = rng.gamma(2.0, 5.0, size=(7, 5))
    theta = rng.gamma(2.0, 2.0, size=5)
    expected = stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    got = nb_log_likelihood(torch.tensor(x), torch.tensor(np.log(mu)), torch.tensor(np.log(theta)))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-8)


def test_nb_reconstruction_error_is_smallest_near_the_true_mean_and_needs_a_dispersion():
    x = torch.full((200, 1), 10.0)
    errors = [
        float(reconstruction_error(torch.full_like(x, np.log(mu)), x, "nb", torch.zeros(1))) for mu in (2, 10, 50)
    ]
    assert errors[1] < errors[0] and errors[1] < errors[2]
    with pytest.raises(ValueError, match="log inverse dispersion"):
        reconstruction_error(x, x, "nb")


# ---------------------------------------------------------------------------------------------------------------------
# setup_mudata: validation and inference
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "problem"), [(-1.0, r"1 negative values \(minimum -1\)"), (0.5, r"1 non-integer values \(e\.g\. 0\.5\)")]
)
@pytest.mark.parametrize("sparse_counts", [True, False])
def test_nb_rejects_negative_or_fractional_values(mdata, value, problem, sparse_counts):
    data = _with_counts(mdata, sparse_counts=sparse_counts)
    X = data.mod["cnt"].X.toarray() if sparse_counts else data.mod["cnt"].X.copy()
    X[3, 2] = value
    data.mod["cnt"].X = sparse.csr_matrix(X) if sparse_counts else X
    with pytest.raises(ValueError, match=rf"Modality 'cnt' \(X\) is declared 'nb'.*holds {problem}.*layers=.*gaussian"):
        UnitedNetModel.setup_mudata(data, likelihoods={"cnt": "nb"})


def test_nb_rejects_normalised_expression(mdata):
    with pytest.raises(ValueError, match=r"Modality 'rna' \(X\) is declared 'nb'.*negative values"):
        UnitedNetModel.setup_mudata(mdata, likelihoods={"rna": "nb"})


def test_bernoulli_rejects_counts_and_unknown_likelihoods_are_refused(mdata):
    data = _with_counts(mdata)
    with pytest.raises(ValueError, match=r"'cnt' \(X\) is declared 'bernoulli' but holds values other than 0 and 1"):
        UnitedNetModel.setup_mudata(data, likelihoods={"cnt": "bernoulli"})
    with pytest.raises(ValueError, match=r"Likelihood of 'cnt' must be one of \['gaussian', 'bernoulli', 'nb'\]"):
        UnitedNetModel.setup_mudata(data, likelihoods={"cnt": "poisson"})


def test_inference_never_picks_nb_but_suggests_it_for_counts(mdata, caplog):
    data = _with_counts(mdata)
    with caplog.at_level(logging.INFO, logger="unitednet.model._validation"):
        UnitedNetModel.setup_mudata(data)
    model = UnitedNetModel(data, n_latent=4, n_hidden=8, n_layers=1)
    assert model.likelihoods == {"rna": "gaussian", "atac": "bernoulli", "cnt": "gaussian"}
    suggestions = [r.getMessage() for r in caplog.records if "likelihoods={" in r.getMessage()]
    assert len(suggestions) == 1 and "'cnt'" in suggestions[0] and "'nb'" in suggestions[0]


def test_binary_data_may_be_declared_nb(mdata):
    # 0/1 values are valid counts: a binary matrix is inferred bernoulli but may be declared nb
    UnitedNetModel.setup_mudata(mdata, likelihoods={"atac": "nb"})
    model = UnitedNetModel(mdata, n_latent=4, n_hidden=8, n_layers=1)
    assert model.likelihoods["atac"] == "nb"
    assert set(model.module.log_theta.keys()) == {"atac"}


# ---------------------------------------------------------------------------------------------------------------------
# module: encoder input, outputs in data units, which parameters the losses reach
# ---------------------------------------------------------------------------------------------------------------------
def test_nb_encoder_reads_log1p_and_decoder_gives_expected_counts(nb_model):
    model, _ = nb_model
    module = model.module
    x = torch.tensor([[0.0, 3.0, 100.0]])
    torch.testing.assert_close(module.standardize("cnt", x), torch.log1p(x))
    out = torch.tensor([[0.0, float(np.log(3.0)), 20.0]])
    # exp of the log mean, clamped at exp(15)
    torch.testing.assert_close(module.to_data_space("cnt", out), torch.tensor([[1.0, 3.0, float(np.exp(15.0))]]))


def test_nb_dispersion_is_learned_with_the_decoders_only(nb_model):
    model, theta0 = nb_model
    module = model.module
    assert module.log_theta["cnt"].shape == (20,)
    assert not torch.equal(module.log_theta["cnt"].detach(), theta0)  # it was trained
    groups = module.parameter_groups()
    theta = module.log_theta["cnt"]
    assert any(p is theta for p in groups["translation"])
    assert any(p is theta for p in groups["clustering"])
    assert not any(p is theta for p in groups["classification"] + groups["discriminator"])
    # gradients: reconstruction / translation terms reach log_theta, classification does not
    module.train()
    tensors = next(iter(model._batches(model.adata, model.modalities, 64)))
    tensors = {f"X_{m}": v for m, v in tensors.items()}
    tensors["labels"] = torch.as_tensor(model.adata.obs["_scvi_labels"].to_numpy()[:64]).view(-1, 1)
    for objective, reached in (("translation", True), ("classification", False)):
        module.zero_grad()
        inf, gen = module.forward_all(tensors)
        out = module.loss(tensors, inf, gen, objective=objective)
        out.loss.backward()
        grad = theta.grad
        assert (grad is not None and bool(grad.abs().sum() > 0)) == reached, objective
    module.zero_grad()
    module.eval()


def test_nb_predictions_are_non_negative_expected_counts(nb_model):
    model, _ = nb_model
    for source in ("rna", "cnt"):
        pred = model.predict_modality(source=source, target="cnt")
        assert pred.shape == (150, 20)
        assert np.isfinite(pred).all() and (pred >= 0).all()
    rna = model.predict_modality(source="cnt", target="rna")
    assert rna.shape == (150, 24) and np.isfinite(rna).all()
    # three epochs on tiny data: the expected counts are already on the scale of the data
    observed = model.adata.mod["cnt"].X.toarray()
    recon = model.predict_modality(source="cnt", target="cnt")
    assert 0.5 < recon.mean() / observed.mean() < 2


def test_nb_metrics_and_writers(nb_model):
    model, _ = nb_model
    mdata = model.adata
    un.tl.predict_modality(model, source="rna", target="cnt")
    layer = mdata.mod["cnt"].layers["unitednet_from_rna"]
    assert layer.shape == (150, 20) and (np.asarray(layer) >= 0).all()
    metrics = un.tl.evaluate(model)
    assert set(metrics["cross_modal"]) == {"rna->cnt", "cnt->rna"}
    scores = metrics["cross_modal"]["rna->cnt"]
    assert np.isfinite(scores["rmse"]) and np.isfinite(scores["r2_variance_weighted"])


def test_nb_decoders_start_at_the_training_mean_counts(nb_model):
    model, _ = nb_model
    module = model.module
    assert module.count_modalities == ["cnt"] and bool(module.count_bias_set)
    # set_count_bias puts log(mean count) into the output bias of the nb decoder (and only there)
    copy = type(module)(
        n_features={"rna": 24, "cnt": 20}, likelihoods={"rna": "gaussian", "cnt": "nb"}, n_latent=4, n_hidden=8
    )
    assert not bool(copy.count_bias_set)
    rna_bias = copy.decoders["rna"].network[-1].bias.detach().clone()
    mean = torch.linspace(0.5, 50.0, 20)
    copy.set_count_bias({"cnt": mean})
    torch.testing.assert_close(copy.decoders["cnt"].network[-1].bias.detach(), torch.log(mean))
    torch.testing.assert_close(copy.decoders["rna"].network[-1].bias.detach(), rna_bias)
    assert bool(copy.count_bias_set)


def test_nb_save_load_round_trip(nb_model, tmp_path):
    model, _ = nb_model
    model.save(tmp_path / "nb", overwrite=True)
    loaded = UnitedNetModel.load(tmp_path / "nb", adata=model.adata)
    assert loaded.likelihoods == model.likelihoods
    torch.testing.assert_close(loaded.module.log_theta["cnt"], model.module.log_theta["cnt"])
    assert bool(loaded.module.count_bias_set)
    np.testing.assert_allclose(
        loaded.predict_modality(source="rna", target="cnt"), model.predict_modality(source="rna", target="cnt")
    )


# ---------------------------------------------------------------------------------------------------------------------
# explanations with count modalities
# ---------------------------------------------------------------------------------------------------------------------
def test_feature_relevance_with_an_nb_source_is_additive(nb_model):
    model, _ = nb_model
    # check_additivity=True (the default): shap raises if the attributions do not add up
    un.tl.feature_relevance(model, n_cells_per_group=5, n_background=20)
    relevance = model.adata.mod["cnt"].varm["unitednet_relevance"]
    assert relevance.shape == (20, 3) and np.isfinite(np.asarray(relevance)).all()
    assert np.asarray(relevance).max() > 0


def test_translation_explanations_with_nb_target_and_source_are_additive(nb_model):
    from unitednet.tl._explain import _background, _explainer, _shap_values, _tensors, _Translation

    model, _ = nb_model
    model.module.eval()
    for source, target in (("rna", "cnt"), ("cnt", "rna")):
        n_target = model.n_features(target)
        wrapper = _Translation(model, source, target, np.arange(3))
        base = _background(model, [source], "group_means", 0, np.random.default_rng(0))
        xs = _tensors(model, model.adata, [source], np.arange(0, 150, 15))
        with torch.no_grad():
            fx = wrapper(*xs).numpy()
            fb = wrapper(*base).numpy()
        # the wrapper gives the prediction in data units
        np.testing.assert_allclose(
            fx, model.predict_modality(source=source, target=target)[::15, :3], rtol=1e-4, atol=1e-5
        )
        assert n_target > 3
        values = _shap_values(_explainer("deep", wrapper, base), "deep", xs, check_additivity=False)[0]
        expected = fx - fb.mean(0)
        np.testing.assert_allclose(values.sum(1), expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))
