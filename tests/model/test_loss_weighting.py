"""loss_weighting: fixed, uncertainty (Kendall) and GradNorm; which parameters each loss reaches; logged weights."""

import numpy as np
import pytest
import torch

import unitednet as un
from unitednet.model import UnitedNetModel
from unitednet.module import LossBalancer

BALANCED = ["reconstruction", "translation", "contrastive"]


@pytest.fixture(scope="module")
def _weighted_once(train_shared):
    return {mode: train_shared("supervised", model={"loss_weighting": mode}) for mode in ("uncertainty", "gradnorm")}


@pytest.fixture
def weighted(_weighted_once, reuse_model):
    return {mode: reuse_model(model) for mode, model in _weighted_once.items()}


def _batch(model, n=64):
    x = next(iter(model._batches(model.adata, model.modalities, n)))
    tensors = {f"X_{m}": v for m, v in x.items()}
    tensors["labels"] = torch.as_tensor(model.adata.obs["_scvi_labels"].to_numpy()[:n]).view(-1, 1)
    return tensors


def _grad_reached(param, loss) -> bool:
    param.grad = None
    loss.backward(retain_graph=True)
    reached = param.grad is not None and bool(param.grad.abs().sum() > 0)
    param.grad = None
    return reached


def test_balancer_rejects_unknown_modes():
    with pytest.raises(ValueError, match=r"loss_weighting must be one of \['fixed', 'uncertainty', 'gradnorm'\]"):
        LossBalancer("softmax", BALANCED)
    with pytest.raises(ValueError, match="gradnorm_alpha must be >= 0"):
        LossBalancer("gradnorm", BALANCED, alpha=-1)


def test_fixed_weighting_has_no_parameters_and_logs_no_weights(fit, mdata):
    model = fit(mdata)
    assert list(model.module.loss_balancer.parameters()) == []
    assert "loss_balancer" not in model.module.parameter_groups()
    assert not [k for k in model.history if k.startswith("weight_")]


def test_uncertainty_loss_is_kendalls_and_its_log_variances_learn_from_the_translation_objective(weighted):
    model = weighted["uncertainty"]
    module = model.module
    balancer = module.loss_balancer
    assert balancer.terms == BALANCED
    s = balancer.log_variances
    groups = module.parameter_groups()
    assert any(p is s for p in groups["translation"])
    assert not any(p is s for name, g in groups.items() if name != "translation" for p in g)
    module.train()
    tensors = _batch(model)
    inf, gen = module.forward_all(tensors)
    out = module.loss(tensors, inf, gen, objective="translation")
    terms, w = out.extra_metrics, module.loss_weights
    sc = s.detach().clamp(-6, 6)
    expected = sum(torch.exp(-sc[i]) * w[k] * terms[k] + sc[i] for i, k in enumerate(BALANCED))
    expected = expected + w["generator"] * terms["generator"]
    torch.testing.assert_close(out.loss.detach(), expected.detach())
    assert _grad_reached(s, out.loss)
    # the classification and discriminator losses do not reach the log-variances
    cls = module.loss(tensors, inf, gen, objective="classification").loss
    assert not _grad_reached(s, cls)
    assert not _grad_reached(s, module.discriminator_loss(tensors, gen))
    module.zero_grad()
    module.eval()
    # the log-variances moved in training; the weights logged at the end of the kept epoch are loss_weights * exp(-s)
    assert not torch.equal(s.detach(), torch.zeros(3))
    assert len(model.history["weight_reconstruction"]) == 2  # one row per epoch
    kept = {k: float(model.history[f"weight_{k}"].iloc[model.best_epoch_, 0]) for k in BALANCED}
    for i, k in enumerate(BALANCED):
        assert kept[k] == pytest.approx(w[k] * float(torch.exp(-s[i].detach())), rel=1e-5)


def test_gradnorm_factors_learn_only_from_the_gradnorm_loss(weighted):
    model = weighted["gradnorm"]
    module = model.module
    balancer = module.loss_balancer
    factors = balancer.factors
    groups = module.parameter_groups()
    assert groups["loss_balancer"] == [factors]
    assert not any(p is factors for name, g in groups.items() if name != "loss_balancer" for p in g)
    # trained: the factors moved, stay positive and sum to the number of terms; the first losses are recorded
    assert not torch.allclose(factors.detach(), torch.ones(3))
    assert float(factors.detach().sum()) == pytest.approx(3.0, rel=1e-5) and bool((factors > 0).all())
    assert bool(torch.isfinite(balancer.initial_losses).all())
    module.train()
    tensors = _batch(model)
    inf, gen = module.forward_all(tensors)
    out = module.loss(tensors, inf, gen, objective="translation")
    # the objective's loss uses the factors as constants
    assert not _grad_reached(factors, out.loss)
    terms, w = out.extra_metrics, module.loss_weights
    expected = sum(factors.detach()[i] * w[k] * terms[k] for i, k in enumerate(BALANCED))
    torch.testing.assert_close(out.loss.detach(), (expected + w["generator"] * terms["generator"]).detach())
    # the GradNorm loss reaches the factors and no network parameter
    gn = module.gradnorm_loss(out.extra_metrics)
    module.zero_grad()
    gn.backward()
    assert factors.grad is not None and bool(factors.grad.abs().sum() > 0)
    others = [p for n, p in module.named_parameters() if p is not factors]
    assert all(p.grad is None for p in others)
    module.zero_grad()
    module.eval()
    assert {f"weight_{k}" for k in BALANCED} <= set(model.history)


def test_gradnorm_moves_weight_towards_the_term_that_trains_slowest():
    # two terms with equal gradient norms; term "b" has kept its initial loss while "a" halved: "b" gains weight
    balancer = LossBalancer("gradnorm", ["a", "b"], alpha=1.0)
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD(balancer.parameters(), lr=0.05)
    for a_loss in (1.0, 0.5, 0.5, 0.5):
        # each term has gradient 1 on w; their values are a_loss and 1
        terms = {"a": w.sum() - w.detach().sum() + a_loss, "b": w.sum() - w.detach().sum() + 1.0}
        opt.zero_grad()
        balancer.gradnorm_loss(terms, [w]).backward()
        opt.step()
        balancer.renormalise()
    f = balancer.factors.detach()
    assert f[1] > f[0] and float(f.sum()) == pytest.approx(2.0)


@pytest.mark.parametrize("mode", ["uncertainty", "gradnorm"])
def test_weighted_models_save_and_load(weighted, mode, tmp_path):
    model = weighted[mode]
    model.save(tmp_path / mode, overwrite=True)
    loaded = UnitedNetModel.load(tmp_path / mode, adata=model.adata)
    assert loaded.module.loss_balancer.mode == mode
    for (name, a), b in zip(
        model.module.loss_balancer.state_dict().items(), loaded.module.loss_balancer.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation())


def test_one_modality_balances_reconstruction_only(make_mudata, model_kwargs, train_kwargs):
    mdata = make_mudata()
    UnitedNetModel.setup_mudata(mdata, modalities=["rna"], labels_key="cell_type")
    model = UnitedNetModel(mdata, loss_weighting="uncertainty", **model_kwargs)
    assert model.module.loss_balancer.terms == ["reconstruction"]
    model.train("supervised", **train_kwargs)
    assert np.isfinite(model.history["weight_reconstruction"].to_numpy(dtype=float)).all()


def test_history_plot_draws_the_effective_weights(weighted, mpl_agg):
    model = weighted["gradnorm"]
    fig = un.pl.history(model, terms=["translation"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["translation", "effective loss weights"]
    lines = fig.axes[1].get_lines()
    assert sorted(line.get_label() for line in lines) == sorted(BALANCED)
    np.testing.assert_allclose(
        lines[0].get_ydata(), model.history[f"weight_{lines[0].get_label()}"].iloc[:, 0].to_numpy(dtype=float)
    )
    fig = un.pl.history(model, terms=["translation"], weights=False)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["translation"]


def test_history_plot_asks_for_weights_that_were_not_logged(fit, mdata, mpl_agg):
    model = fit(mdata)
    with pytest.raises(KeyError, match="no effective loss weights.*loss_weighting"):
        un.pl.history(model, weights=True)
