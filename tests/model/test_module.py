"""Pure-torch parts: building blocks (nn), losses and the UnitedNetModule's gradient routing."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unitednet._constants import REGISTRY_KEYS, modality_key
from unitednet.module import UnitedNetModule
from unitednet.module._losses import (
    contrastive_loss,
    ddc_loss,
    lsgan_loss,
    reconstruction_error,
    self_entropy_loss,
)
from unitednet.nn import MLP, Discriminator, GroupHeads, ModalityFusion


@pytest.fixture
def module():
    torch.manual_seed(0)
    return UnitedNetModule(
        {"rna": 6, "atac": 5, "adt": 4},
        {"rna": "gaussian", "atac": "bernoulli", "adt": "gaussian"},
        n_groups=3,
        n_latent=4,
        n_hidden=16,
        n_layers=1,
        n_heads=2,
    )


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(1)
    n = 24
    return {
        modality_key("rna"): torch.randn(n, 6, generator=g),
        modality_key("atac"): (torch.rand(n, 5, generator=g) < 0.4).float(),
        modality_key("adt"): torch.randn(n, 4, generator=g) + 3,
        REGISTRY_KEYS.LABELS_KEY: torch.arange(n).remainder(3).view(-1, 1).float(),
    }


def _grads(params) -> list[torch.Tensor | None]:
    return [p.grad for p in params]


def _all_zero(params) -> bool:
    return all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in params)


def _any_nonzero(params) -> bool:
    return any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in params)


# ---------------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------------
def test_mlp_structure_and_no_inplace_relu():
    mlp = MLP(7, 3, n_hidden=5, n_layers=2, dropout_rate=0.2)
    relus = [m for m in mlp.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2
    assert not any(r.inplace for r in relus)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(7, 5), (5, 5), (5, 3)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in mlp.modules()) == 2
    assert mlp(torch.randn(4, 7)).shape == (4, 3)
    single = MLP(7, 3, n_layers=0)
    assert isinstance(single.network[0], nn.Linear) and len(single.network) == 1


def test_no_inplace_relu_anywhere_in_module(module):
    relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(r.inplace for r in relus)


@pytest.mark.parametrize("mode", ["modality", "feature"])
def test_fusion_weights_sum_to_one_and_renormalise(mode):
    torch.manual_seed(0)
    fusion = ModalityFusion(["a", "b", "c"], n_latent=4, mode=mode)
    with torch.no_grad():
        fusion.logits.copy_(torch.randn_like(fusion.logits))
    w = fusion.weights()
    assert w.shape == ((3, 1) if mode == "modality" else (3, 4))
    torch.testing.assert_close(w.sum(0), torch.ones(w.shape[1]))
    sub = fusion.weights(["a", "c"])
    torch.testing.assert_close(sub.sum(0), torch.ones(w.shape[1]))
    # renormalised over the subset: same ratios as the full weights
    torch.testing.assert_close(sub[0] / sub[1], w[0] / w[2])
    z = {"a": torch.randn(5, 4), "c": torch.randn(5, 4)}
    torch.testing.assert_close(fusion(z), sub[0] * z["a"] + sub[1] * z["c"])
    # order of the given dict does not matter: modalities are addressed by name
    torch.testing.assert_close(fusion({"c": z["c"], "a": z["a"]}), fusion(z))


def test_fusion_rejects_unknown_mode():
    with pytest.raises(ValueError, match="fusion must be 'modality' or 'feature'"):
        ModalityFusion(["a"], 4, mode="attention")


def test_group_head_rows_normalised():
    torch.manual_seed(0)
    heads = GroupHeads(6, n_groups=3, n_heads=2, n_hidden=10)
    heads.eval()
    z = torch.randn(8, 6) * 5
    hidden, logits = heads.forward_head(z, 1)
    assert hidden.shape == (8, 10) and logits.shape == (8, 3)
    # each logit is <hidden, unit row>: bounded by ||hidden||
    bound = hidden.norm(dim=1, keepdim=True)
    assert (logits.abs() <= bound + 1e-5).all()
    # rescaling the raw weights does not change the logits
    with torch.no_grad():
        heads.weights[1].mul_(1000.0)
    torch.testing.assert_close(heads.forward_head(z, 1)[1], logits)
    hiddens, all_logits = heads(z)
    assert len(hiddens) == len(all_logits) == heads.n_heads == 2


def test_discriminator_scores_in_unit_interval():
    disc = Discriminator(5, n_hidden=8)
    scores = disc(torch.randn(7, 5) * 100)
    assert scores.shape == (7,)
    assert ((scores >= 0) & (scores <= 1)).all()


# ---------------------------------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------------------------------
def test_contrastive_aligned_lower_than_shuffled():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 8, generator=g)
    aligned = contrastive_loss(z, z + 0.05 * torch.randn(32, 8, generator=g))
    shuffled = contrastive_loss(z, z[torch.randperm(32, generator=g)])
    assert aligned < 0.5 < shuffled
    assert shuffled > math.log(32) - 2.0


def test_contrastive_group_masking():
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g)
    groups = torch.arange(12).remainder(3)
    masked = contrastive_loss(z_a, z_b, groups, temperature=0.5)
    # by hand: cells of the same group are no negatives
    sim = F.normalize(z_a, dim=1) @ F.normalize(z_b, dim=1).T / 0.5
    keep = (groups[:, None] != groups[None, :]) | torch.eye(12, dtype=torch.bool)
    sim = sim.masked_fill(~keep, float("-inf"))
    target = torch.arange(12)
    expected = 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))
    torch.testing.assert_close(masked, expected)
    assert masked < contrastive_loss(z_a, z_b, None, temperature=0.5)
    # one group only: nothing to contrast with, the loss is 0
    single = contrastive_loss(z_a, z_b, torch.zeros(12, dtype=torch.long))
    torch.testing.assert_close(single, torch.tensor(0.0))


def test_ddc_lower_for_clean_clustering():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    codes = torch.arange(30).remainder(3)
    hidden = centres[codes] + 0.1 * torch.randn(30, 3, generator=g)
    clean = F.one_hot(codes, 3).float() * 0.98 + 0.01 / 1.5
    clean = clean / clean.sum(1, keepdim=True)
    random = torch.softmax(torch.randn(30, 3, generator=g), 1)
    clean_loss, random_loss = ddc_loss(hidden, clean), ddc_loss(hidden, random)
    assert torch.isfinite(clean_loss) and torch.isfinite(random_loss)
    assert clean_loss < random_loss
    with pytest.raises(ValueError, match="at least two groups"):
        ddc_loss(hidden, torch.ones(30, 1))


def test_ddc_differentiable_and_finite_on_identical_cells():
    hidden = torch.ones(6, 4, requires_grad=True)
    probs = torch.full((6, 3), 1 / 3, requires_grad=True)
    loss = ddc_loss(hidden, probs)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(probs.grad).all()


def test_self_entropy():
    balanced = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    torch.testing.assert_close(self_entropy_loss(balanced), torch.tensor(0.0), atol=1e-6, rtol=0)
    collapsed = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    torch.testing.assert_close(self_entropy_loss(collapsed), torch.tensor(math.log(3)), atol=1e-5, rtol=0)
    assert 0 < self_entropy_loss(torch.tensor([[0.6, 0.3, 0.1]])) < math.log(3)


def test_reconstruction_and_lsgan_losses():
    logits = torch.tensor([[2.0, -1.0]])
    x = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(
        reconstruction_error(logits, x, "bernoulli"), F.binary_cross_entropy(torch.sigmoid(logits), x)
    )
    torch.testing.assert_close(reconstruction_error(logits, x, "gaussian"), torch.tensor((1.0 + 1.0) / 2))
    torch.testing.assert_close(lsgan_loss(torch.tensor([0.5, 1.0]), 1.0), torch.tensor(0.125))


# ---------------------------------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------------------------------
def test_module_shapes(module, tensors):
    inference_outputs, generative_outputs = module.forward_all(tensors)
    assert set(inference_outputs["z"]) == {"rna", "atac", "adt"}
    assert inference_outputs["z_fused"].shape == (24, 4)
    x_hat = generative_outputs["x_hat"]
    assert {t: {s: tuple(v.shape) for s, v in row.items()} for t, row in x_hat.items()} == {
        t: dict.fromkeys(("rna", "atac", "adt"), (24, n)) for t, n in (("rna", 6), ("atac", 5), ("adt", 4))
    }
    assert module.group_logits(inference_outputs["z_fused"]).shape == (24, 3)
    partial = module.inference({"atac": tensors[modality_key("atac")]})
    torch.testing.assert_close(partial["z_fused"], partial["z"]["atac"])
    with pytest.raises(ValueError, match="At least one registered modality"):
        module.inference({})


def test_module_loss_terms(module, tensors):
    inference_outputs, generative_outputs = module.forward_all(tensors)
    out = module.loss(tensors, inference_outputs, generative_outputs, objective="translation")
    assert set(out.extra_metrics) == {"reconstruction", "translation", "generator", "contrastive"}
    w = module.loss_weights
    expected = sum(w[k] * v for k, v in out.extra_metrics.items())
    torch.testing.assert_close(out.loss, expected)
    out = module.loss(tensors, inference_outputs, generative_outputs, objective="classification")
    assert set(out.extra_metrics) == {"classification", "head_losses"}
    assert out.extra_metrics["head_losses"].shape == (2,)
    torch.testing.assert_close(out.extra_metrics["classification"], out.extra_metrics["head_losses"].mean())
    out = module.loss(tensors, inference_outputs, generative_outputs, objective="clustering")
    assert set(out.extra_metrics) == {"ddc", "self_entropy", "reconstruction", "head_losses"}
    with pytest.raises(ValueError, match="Unknown objective 'regression'"):
        module.loss(tensors, inference_outputs, generative_outputs, objective="regression")


def test_class_weights_enter_cross_entropy(module, tensors):
    module.eval()
    inference_outputs, generative_outputs = module.forward_all(tensors)
    base = module.loss(tensors, inference_outputs, generative_outputs, objective="classification").loss
    module.class_weights.copy_(torch.tensor([1.0, 0.0, 0.0]))
    only_first = module.loss(tensors, inference_outputs, generative_outputs, objective="classification").loss
    labels = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
    expected = torch.stack(
        [F.cross_entropy(lg[labels == 0], labels[labels == 0]) for lg in module.heads(inference_outputs["z_fused"])[1]]
    ).mean()
    torch.testing.assert_close(only_first, expected)
    assert not torch.isclose(only_first, base)


def test_discriminator_loss_updates_discriminators_only(module, tensors):
    inference_outputs, generative_outputs = module.forward_all(tensors)
    module.zero_grad()
    module.discriminator_loss(tensors, generative_outputs).backward()
    assert _any_nonzero(module.discriminators.parameters())
    for part in (module.encoders, module.decoders, module.fusion, module.heads, module.latent_projector):
        assert _all_zero(part.parameters())


def test_generator_loss_reaches_decoders_and_encoders(module, tensors):
    inference_outputs, generative_outputs = module.forward_all(tensors)
    module.zero_grad()
    terms = module._translation_terms(tensors, inference_outputs, generative_outputs)
    terms["generator"].backward()
    assert _any_nonzero(module.decoders.parameters())
    assert _any_nonzero(module.encoders.parameters())


def test_ddc_leaves_encoders_untouched_but_reconstruction_does_not(module, tensors):
    inference_outputs, generative_outputs = module.forward_all(tensors)
    module.zero_grad()
    out = module.loss(tensors, inference_outputs, generative_outputs, objective="clustering")
    (out.extra_metrics["ddc"] + out.extra_metrics["self_entropy"]).backward(retain_graph=True)
    assert _all_zero(module.encoders.parameters())
    assert _all_zero(module.decoders.parameters())
    assert _any_nonzero(module.fusion.parameters())
    assert _any_nonzero(module.heads.parameters())
    module.zero_grad()
    out.extra_metrics["reconstruction"].backward()
    assert _any_nonzero(module.encoders.parameters())
    assert _any_nonzero(module.decoders.parameters())
    assert _all_zero(module.heads.parameters())


def test_classification_and_translation_gradient_routing(module, tensors):
    inference_outputs, generative_outputs = module.forward_all(tensors)
    module.zero_grad()
    module.loss(tensors, inference_outputs, generative_outputs, objective="classification").loss.backward(
        retain_graph=True
    )
    assert _any_nonzero(module.encoders.parameters())
    assert _any_nonzero(module.fusion.parameters())
    assert _any_nonzero(module.heads.parameters())
    assert _all_zero(module.decoders.parameters())
    module.zero_grad()
    module.loss(tensors, inference_outputs, generative_outputs, objective="translation").loss.backward()
    assert _any_nonzero(module.encoders.parameters())
    assert _any_nonzero(module.decoders.parameters())
    assert _any_nonzero(module.latent_projector.parameters())
    # the predicted groups only choose the contrastive negatives: no gradient into heads or fusion
    assert _all_zero(module.heads.parameters())
    assert _all_zero(module.fusion.parameters())


def test_parameter_groups_are_lists(module):
    groups = module.parameter_groups()
    assert set(groups) == {"translation", "discriminator", "classification", "clustering"}
    for name, params in groups.items():
        assert isinstance(params, list) and params, name
        assert len(params) == len({id(p) for p in params}), name


def test_standardizer_round_trip(module):
    module.set_standardization("rna", torch.arange(6.0), torch.full((6,), 2.0))
    x = torch.randn(3, 6)
    z = module.standardize("rna", x)
    torch.testing.assert_close(z, (x - torch.arange(6.0)) / 2)
    torch.testing.assert_close(module.to_data_space("rna", z), x)
    # bernoulli modalities are not standardised; their outputs are probabilities
    b = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    torch.testing.assert_close(module.standardize("atac", b), b)
    torch.testing.assert_close(module.to_data_space("atac", torch.zeros(1, 5)), torch.full((1, 5), 0.5))


def test_translation_only_module_has_no_heads(tensors):
    module = UnitedNetModule({"rna": 6, "atac": 5}, {"rna": "gaussian", "atac": "bernoulli"}, n_groups=0, n_hidden=8)
    inference_outputs, generative_outputs = module.forward_all(tensors)
    assert module.heads is None
    with pytest.raises(ValueError, match="needs group heads"):
        module.loss(tensors, inference_outputs, generative_outputs, objective="clustering")
    with pytest.raises(ValueError, match="no group heads"):
        module.group_logits(inference_outputs["z_fused"])
    with pytest.raises(NotImplementedError, match="predict_modality"):
        module.sample()
