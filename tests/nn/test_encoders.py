"""Encoder variants (mlp, variational, residual) and hidden-layer normalisation (batch, layer, none)."""

import numpy as np
import pytest
import torch
from torch import nn

import unitednet as un
from unitednet.model import UnitedNetModel
from unitednet.nn import MLP, GroupHeads, ResidualMLP, VariationalEncoder, make_encoder

pytestmark = pytest.mark.filterwarnings("ignore:unrecognized nn.Module:UserWarning")


def _types(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules()}


# ---------------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "variational", "residual"])
@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_encoder_shapes_and_norm_layers(kind, norm):
    torch.manual_seed(0)
    encoder = make_encoder(kind, 12, 5, n_hidden=16, n_layers=2, dropout_rate=0.1, norm=norm)
    x = torch.randn(9, 12)
    encoder.train()
    assert encoder(x).shape == (9, 5)
    encoder.eval()
    assert encoder(x).shape == (9, 5)
    types = _types(encoder)
    assert (nn.BatchNorm1d in types) == (norm == "batch")
    assert (nn.LayerNorm in types) == (norm == "layer")
    # the last linear layer registered is the one producing the output (GradNorm measures gradients there)
    last = [m for m in encoder.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == (10 if kind == "variational" else 5)


def test_norm_resolution_keeps_use_batch_norm_as_an_alias():
    assert nn.BatchNorm1d in _types(MLP(4, 2, n_hidden=8))
    assert nn.BatchNorm1d not in _types(MLP(4, 2, n_hidden=8, use_batch_norm=False))
    assert nn.LayerNorm in _types(MLP(4, 2, n_hidden=8, use_batch_norm=False, norm="layer"))
    assert nn.LayerNorm in _types(GroupHeads(4, 3, n_hidden=8, norm="layer"))
    with pytest.raises(ValueError, match="norm='batch' contradicts use_batch_norm=False"):
        MLP(4, 2, use_batch_norm=False, norm="batch")
    with pytest.raises(ValueError, match=r"norm must be one of \['batch', 'layer', 'none'\], got 'group'"):
        MLP(4, 2, norm="group")
    with pytest.raises(ValueError, match=r"encoder must be one of \['mlp', 'variational', 'residual'\]"):
        make_encoder("transformer", 4, 2)


def test_variational_encoder_samples_in_training_and_gives_the_mean_in_evaluation():
    torch.manual_seed(0)
    encoder = VariationalEncoder(6, 3, n_hidden=8, n_layers=1, dropout_rate=0.0, norm="none")
    x = torch.randn(20, 6)
    encoder.train()
    z, mean, logvar, kl = encoder.encode(x)
    assert z.shape == mean.shape == logvar.shape == (20, 3) and kl.shape == (20,)
    assert not torch.allclose(encoder(x), encoder(x))  # two samples differ
    # KL of N(mean, exp(logvar)) to N(0, 1), summed over dimensions
    expected = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(1)
    torch.testing.assert_close(kl, expected)
    assert bool((kl >= 0).all())
    encoder.eval()
    torch.testing.assert_close(encoder(x), encoder(x))
    torch.testing.assert_close(encoder(x), encoder.encode(x)[1])


def test_residual_blocks_add_to_their_input():
    torch.manual_seed(0)
    net = ResidualMLP(5, 2, n_hidden=7, n_layers=1, dropout_rate=0.0, norm="none")
    for p in net.blocks[0].parameters():
        nn.init.zeros_(p)  # a zero block: the network is output(input(x))
    x = torch.randn(4, 5)
    torch.testing.assert_close(net(x), net.output(net.input(x)))


# ---------------------------------------------------------------------------------------------------------------------
# in the model
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def _variants_once(train_shared):
    return {
        "variational": train_shared("supervised", model={"encoder": "variational"}),
        "residual": train_shared("supervised", model={"encoder": "residual", "norm": "none"}),
        "layer": train_shared("supervised", model={"norm": "layer"}),
    }


@pytest.fixture
def variants(_variants_once, reuse_model):
    return {k: reuse_model(v) for k, v in _variants_once.items()}


def _batch(model, n=64):
    x = next(iter(model._batches(model.adata, model.modalities, n)))
    return {f"X_{m}": v for m, v in x.items()}


def test_variational_model_trains_a_kl_term_that_reaches_the_encoders_only(variants):
    model = variants["variational"]
    module = model.module
    assert "kl_train" in model.history and "kl_validation" in model.history
    assert np.isfinite(model.history["kl_train"].to_numpy(dtype=float)).all()
    module.train()
    tensors = _batch(model)
    inf, gen = module.forward_all(tensors)
    terms = module.loss(tensors, inf, gen, objective="translation").extra_metrics
    assert float(terms["kl"]) > 0
    module.zero_grad()
    terms["kl"].backward()
    encoder_grads = [p.grad for p in module.encoders.parameters()]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in encoder_grads)
    others = [p for n, p in module.named_parameters() if not n.startswith("encoders.")]
    assert all(p.grad is None for p in others)
    module.zero_grad()
    module.eval()
    # inference is deterministic (posterior means)
    np.testing.assert_array_equal(model.get_latent_representation(), model.get_latent_representation())


def test_deterministic_encoders_have_no_kl_term(variants):
    model = variants["residual"]
    assert "kl_train" not in model.history
    assert isinstance(model.module.encoders["rna"], ResidualMLP)


@pytest.mark.parametrize("variant", ["variational", "residual", "layer"])
def test_variants_save_and_load(variants, variant, tmp_path):
    model = variants[variant]
    model.save(tmp_path / variant, overwrite=True)
    loaded = UnitedNetModel.load(tmp_path / variant, adata=model.adata)
    assert type(loaded.module.encoders["rna"]) is type(model.module.encoders["rna"])
    assert loaded.module.norm == model.module.norm
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-6)
    np.testing.assert_allclose(
        loaded.predict_modality(source="rna", target="atac"), model.predict_modality(source="rna", target="atac")
    )


@pytest.mark.parametrize("variant", ["variational", "residual"])
def test_relevance_of_variational_and_residual_models_is_additive(variants, variant):
    model = variants[variant]
    # check_additivity=True (the default): shap raises when the attributions do not add up
    un.tl.feature_relevance(model, n_cells_per_group=5)
    assert np.isfinite(np.asarray(model.adata.mod["rna"].varm["unitednet_relevance"])).all()
    un.tl.cross_modal_relevance(model, source="rna", target="atac", n_cells_per_group=5, n_target_features=3)


def test_deep_explainer_refuses_layer_norm_and_gradient_explainer_works(variants):
    model = variants["layer"]
    with pytest.raises(ValueError, match=r"layer normalisation \(norm='layer'\).*method='gradient'"):
        un.tl.feature_relevance(model, n_cells_per_group=5)
    with pytest.raises(ValueError, match=r"layer normalisation"):
        un.tl.cross_modal_relevance(model, source="rna", target="atac")
    un.tl.feature_relevance(model, n_cells_per_group=5, method="gradient")
    assert np.isfinite(np.asarray(model.adata.mod["rna"].varm["unitednet_relevance"])).all()


def test_model_rejects_contradicting_norm_arguments(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    with pytest.raises(ValueError, match="norm='batch' contradicts use_batch_norm=False"):
        UnitedNetModel(mdata, use_batch_norm=False, norm="batch", **model_kwargs)
    model = UnitedNetModel(mdata, use_batch_norm=False, **model_kwargs)
    assert model.module.norm == "none"
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.module.modules())
