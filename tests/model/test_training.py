"""UnitedNetModel.train and the training plan: tasks, history, splits, isolation of test cells, optimisation details."""

import numpy as np
import pytest
import scvi
import torch
from scipy import sparse
from scvi.dataloaders import AnnDataLoader

from unitednet._constants import OBJECTIVE_LOSSES, REGISTRY_KEYS, modality_key
from unitednet.model import UnitedNetModel
from unitednet.module import UnitedNetModule
from unitednet.train import UnitedNetTrainingPlan, stratified_split
from unitednet.train._plan import _SELECTION_TERMS

TRANSLATION_TERMS = ("contrastive", "reconstruction", "translation", "generator", "discriminator")


def _history_terms(model) -> set[str]:
    return set(model.history)


def _assert_one_row_per_epoch(model, n_epochs: int, keys) -> None:
    for key in keys:
        frame = model.history[key]
        assert len(frame) == n_epochs, key
        assert np.isfinite(frame.to_numpy(dtype=float)).all(), key


# ---------------------------------------------------------------------------------------------------------------------
# tasks and history
# ---------------------------------------------------------------------------------------------------------------------
def test_supervised_training_history(mdata, fit):
    model = fit(mdata, "supervised", train={"max_epochs": 3})
    assert model.is_trained_ and model.task_ == "supervised"
    expected = {f"{t}_{s}" for t in (*TRANSLATION_TERMS, "classification") for s in ("train", "validation")}
    expected |= {"validation_loss", "translation_loss_train", "classification_loss_train"}
    assert expected <= _history_terms(model)
    assert not {"ddc_train", "self_entropy_train"} & _history_terms(model)
    _assert_one_row_per_epoch(model, 3, expected)
    # cross-entropy of 3 balanced classes starts near log(3): a real loss, not a placeholder
    assert 0.05 < float(model.history["classification_train"].iloc[0, 0]) < 3.0


def test_unsupervised_training_history_and_groups(mdata, fit):
    model = fit(mdata, "unsupervised", setup={}, model={"n_groups": 3})
    expected = {f"{t}_{s}" for t in (*TRANSLATION_TERMS, "ddc", "self_entropy") for s in ("train", "validation")}
    expected |= {"validation_loss", "clustering_loss_train"}
    assert expected <= _history_terms(model)
    assert "classification_train" not in _history_terms(model)
    _assert_one_row_per_epoch(model, 2, expected)
    groups = model.predict_labels()
    assert set(groups) <= {"0", "1", "2"}
    assert model.group_names == ["0", "1", "2"]


def test_translation_training_three_modalities(make_mudata, fit):
    mdata = make_mudata(n_adt=8)
    model = fit(mdata, "translation", setup={})
    expected = {f"{t}_{s}" for t in TRANSLATION_TERMS for s in ("train", "validation")} | {"validation_loss"}
    assert expected <= _history_terms(model)
    assert not {"classification_train", "ddc_train"} & _history_terms(model)
    _assert_one_row_per_epoch(model, 2, expected)
    with pytest.raises(ValueError, match="no group heads"):
        model.predict_labels()
    assert model.predict_modality(source="adt", target="atac").shape == (mdata.n_obs, 32)


def test_single_modality_model_trains(mdata, fit):
    model = fit(mdata, "translation", setup={"modalities": ["rna"]})
    # no pair of modalities: translation and contrastive terms are 0, reconstruction is real
    assert float(model.history["translation_train"].iloc[-1, 0]) == 0.0
    assert float(model.history["contrastive_train"].iloc[-1, 0]) == 0.0
    assert float(model.history["reconstruction_train"].iloc[-1, 0]) > 0.0
    assert model.get_latent_representation().shape == (mdata.n_obs, 8)


def test_objective_order_override(mdata, fit, monkeypatch):
    seen = []
    original = UnitedNetModule.loss

    def recording_loss(self, *args, objective="translation", **kwargs):
        if self.training:
            seen.append(objective)
        return original(self, *args, objective=objective, **kwargs)

    monkeypatch.setattr(UnitedNetModule, "loss", recording_loss)
    model = fit(mdata, "supervised", train={"objective_order": ("classification", "translation"), "max_epochs": 1})
    plan = model.trainer.lightning_module
    assert plan.objectives == ["classification", "translation"]
    n_batches = int(np.ceil((model.split_ == "train").sum() / 32))
    assert seen == ["classification"] * n_batches + ["translation"] * n_batches
    assert {"classification_train", "contrastive_train", "classification_validation"} <= _history_terms(model)


@pytest.mark.parametrize("order", [("translation", "regression"), ("translation", "translation"), ()])
def test_objective_order_rejects_bad_names(mdata, model_kwargs, order):
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, **model_kwargs)
    with pytest.raises(ValueError, match="objective_order must list distinct objectives of"):
        model.train("supervised", objective_order=order)


@pytest.mark.parametrize(
    ("task", "order"),
    [("translation", ("classification", "translation")), ("supervised", ("translation", "clustering"))],
)
def test_objective_order_must_fit_the_task(mdata, model_kwargs, task, order):
    # group names are label names exactly for supervised training: classification belongs to that task only
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, **model_kwargs)
    with pytest.raises(ValueError, match=f"does not fit task='{task}'.*'classification' objective"):
        model.train(task, objective_order=order)


def test_early_stopping(mdata, fit):
    # random labels, half the cells for validation: the validation loss rises after a few epochs
    mdata.obs["cell_type"] = mdata.obs["cell_type"].sample(frac=1, random_state=0).to_numpy()
    model = fit(
        mdata,
        "supervised",
        model={"n_hidden": 64, "dropout_rate": 0.0},
        train={
            "max_epochs": 30,
            "lr": 0.01,
            "train_size": 0.5,
            "validation_size": 0.5,
            "early_stopping": True,
            "early_stopping_patience": 2,
        },
    )
    val_loss = model.history["validation_loss"].iloc[:, 0].to_numpy(dtype=float)
    assert len(val_loss) < 30
    assert len(model.history["classification_train"]) == len(val_loss)
    assert model.best_epoch_ == int(np.argmin(val_loss)) == len(val_loss) - 3


# ---------------------------------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------------------------------
def test_split_proportions_stratified(make_mudata, fit):
    mdata = make_mudata(group_sizes=(80, 50, 20))
    model = fit(mdata, "supervised", train={"train_size": 0.7, "validation_size": 0.1, "max_epochs": 1})
    split = mdata.obs["unitednet_split"]
    assert list(split.cat.categories) == ["train", "validation", "test"]
    np.testing.assert_array_equal(split.astype(str).to_numpy(), model.split_)
    for label, n in zip(("alpha", "beta", "gamma"), (80, 50, 20), strict=True):
        counts = split[mdata.obs["cell_type"] == label].value_counts()
        assert counts["validation"] == round(0.1 * n)
        assert counts["test"] == round(0.2 * n)
        assert counts["train"] == n - round(0.1 * n) - round(0.2 * n)
    np.testing.assert_array_equal(np.sort(model.validation_indices), np.flatnonzero(model.split_ == "validation"))
    np.testing.assert_array_equal(np.sort(model.test_indices), np.flatnonzero(model.split_ == "test"))


def test_every_label_keeps_a_training_cell():
    labels = np.array(["a"] * 2 + ["b"] * 3 + ["c"] * 50)
    train, val, test = stratified_split(len(labels), 0.4, 0.3, labels, seed=3)
    assert set(labels[train]) == {"a", "b", "c"}
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == len(np.intersect1d(val, test)) == 0
    assert len(train) + len(val) + len(test) == len(labels)
    with pytest.raises(ValueError, match="train_size must be in"):
        stratified_split(10, 0.0, 0.1)
    with pytest.raises(ValueError, match="train_size \\+ validation_size <= 1"):
        stratified_split(10, 0.8, 0.3)


def test_split_key_validation_drawn_from_training_cells(mdata, fit):
    user = np.where(np.arange(mdata.n_obs) % 4 == 0, "test", "train")
    mdata.obs["my_split"] = user
    model = fit(mdata, "supervised", train={"split_key": "my_split", "validation_size": 0.2, "max_epochs": 1})
    split = mdata.obs["unitednet_split"].astype(str).to_numpy()
    np.testing.assert_array_equal(model.split_, split)
    # the test cells are exactly the user's; validation cells come out of the user's training cells
    np.testing.assert_array_equal(split == "test", user == "test")
    assert (user[split == "validation"] == "train").all()
    n_user_train = (user == "train").sum()
    assert abs((split == "validation").sum() - 0.2 * n_user_train) <= 3
    assert set(mdata.obs["cell_type"][split == "train"]) == {"alpha", "beta", "gamma"}


def test_split_key_with_explicit_validation(mdata, fit):
    user = np.array(["train", "validation", "train", "test", "train"] * 30)
    mdata.obs["my_split"] = user
    model = fit(mdata, "supervised", train={"split_key": "my_split", "max_epochs": 1})
    np.testing.assert_array_equal(mdata.obs["unitednet_split"].astype(str).to_numpy(), user)
    np.testing.assert_array_equal(model.split_, user)


def test_split_key_errors(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, **model_kwargs)
    with pytest.raises(KeyError, match="split_key='nope' is not a column of mdata.obs"):
        model.train(split_key="nope")
    mdata.obs["bad_split"] = np.where(np.arange(mdata.n_obs) % 2, "train", "holdout")
    with pytest.raises(ValueError, match=r"must hold 'train', 'validation' or 'test'; found \['holdout'\]"):
        model.train(split_key="bad_split")


def _train_with_test_values(make_mudata, model_kwargs, train_kwargs, rows_to_change, change: bool):
    scvi.settings.seed = 0
    mdata = make_mudata()
    mdata.obs["my_split"] = np.where(np.arange(mdata.n_obs) % 5 == 0, "test", "train")
    mdata.obs.iloc[1::10, mdata.obs.columns.get_loc("my_split")] = "validation"
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    if change:
        rows = rows_to_change(mdata.obs["my_split"].to_numpy())
        mdata.mod["rna"].X[rows] = 50.0 + 10.0 * mdata.mod["rna"].X[rows]
        atac = mdata.mod["atac"].X.toarray()
        atac[rows] = 1.0 - atac[rows]
        mdata.mod["atac"].X = sparse.csr_matrix(atac)
    model = UnitedNetModel(mdata, **model_kwargs)
    model.train("supervised", split_key="my_split", **train_kwargs)
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def test_test_cells_never_read_by_training(make_mudata, model_kwargs, train_kwargs):
    def test_rows(split):
        return np.flatnonzero(split == "test")

    def train_rows(split):
        return np.flatnonzero(split == "train")[:5]

    reference = _train_with_test_values(make_mudata, model_kwargs, train_kwargs, test_rows, change=False)
    changed_test = _train_with_test_values(make_mudata, model_kwargs, train_kwargs, test_rows, change=True)
    changed_train = _train_with_test_values(make_mudata, model_kwargs, train_kwargs, train_rows, change=True)
    assert reference.keys() == changed_test.keys()
    for key in reference:
        torch.testing.assert_close(changed_test[key], reference[key], rtol=0, atol=0, msg=key)
    # control: the comparison is sensitive, changing five training cells does change the weights and statistics
    assert not torch.equal(changed_train["standardizers.rna.loc"], reference["standardizers.rna.loc"])
    key = "encoders.atac.network.0.weight_t"  # the sparse modality's first layer (stored transposed)
    assert not torch.equal(changed_train[key], reference[key])


# ---------------------------------------------------------------------------------------------------------------------
# optimisation details
# ---------------------------------------------------------------------------------------------------------------------
def _small_module(n_heads: int = 1, n_groups: int = 3) -> UnitedNetModule:
    return UnitedNetModule(
        {"rna": 6, "atac": 5},
        {"rna": "gaussian", "atac": "bernoulli"},
        n_groups=n_groups,
        n_latent=4,
        n_hidden=8,
        n_layers=1,
        n_heads=n_heads,
    )


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    module = _small_module()
    plan = UnitedNetTrainingPlan(module, ["translation", "classification"], gradient_clip_norm=1.0)
    plan.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)  # no Trainer attached in a unit test
    assert all(isinstance(params, list) for params in plan._groups.values())
    params = plan._groups["classification"]
    optimizer = torch.optim.SGD(params, lr=1.0)
    for _ in range(2):  # the same list clips again on the second step: it was not consumed
        before = [p.detach().clone() for p in params]
        loss = 1e6 * sum((p**2).sum() for p in params)
        plan._step(optimizer, params, loss)
        step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before, strict=True)))
        assert float(step) == pytest.approx(1.0, rel=1e-4)


def test_optimizers_cover_their_parameter_groups():
    module = _small_module()
    plan = UnitedNetTrainingPlan(module, ["translation", "classification"])
    optimizers = plan.configure_optimizers()
    assert plan._optimizer_names == ["translation", "classification", "discriminator"]
    for name, optimizer in zip(plan._optimizer_names, optimizers, strict=True):
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert in_optimizer == {id(p) for p in plan._groups[name]}, name
        assert len(in_optimizer) > 0
    # discriminators are updated by their own optimizer only
    disc = {id(p) for p in module.discriminators.parameters()}
    assert disc == {id(p) for p in plan._groups["discriminator"]}
    assert not disc & {id(p) for p in plan._groups["translation"]}


def test_training_clips_every_step(mdata, fit, monkeypatch):
    calls = []
    original = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        calls.append((len(parameters), max_norm))
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    model = fit(mdata, "supervised", train={"max_epochs": 1, "plan_kwargs": {"gradient_clip_norm": 7.0}})
    n_batches = int(np.ceil((model.split_ == "train").sum() / 32))
    # translation + discriminator + classification step per batch, each clipping a non-empty parameter list
    assert len(calls) == 3 * n_batches
    assert all(n > 0 and max_norm == 7.0 for n, max_norm in calls)


def test_class_weights_balanced_on_training_labels(make_mudata, fit):
    mdata = make_mudata(group_sizes=(90, 40, 20))
    model = fit(mdata, "supervised", train={"train_size": 0.6, "validation_size": 0.2, "max_epochs": 1})
    train_labels = mdata.obs["cell_type"].to_numpy()[model.split_ == "train"]
    n = len(train_labels)
    expected = [n / (3 * (train_labels == c).sum()) for c in ("alpha", "beta", "gamma")]
    np.testing.assert_allclose(model.module.class_weights.numpy(), expected, rtol=1e-6)
    assert model.module.class_weights[2] > model.module.class_weights[1] > model.module.class_weights[0]


def test_select_head_uses_recent_window():
    module = _small_module(n_heads=3)
    plan = UnitedNetTrainingPlan(module, ["translation", "classification"], head_selection_window=2)
    plan._select_head([torch.tensor([3.0, 1.0, 2.0]), torch.tensor([3.0, 1.0, 2.0])])
    assert int(module.best_head) == 1
    plan._select_head([torch.tensor([2.0, 1.5, 0.0])])  # mean of the last two epochs: [2.5, 1.25, 1.0]
    assert int(module.best_head) == 2
    plan._select_head([torch.tensor([0.0, 5.0, 5.0])])  # window of two: [1.0, 3.25, 2.5]
    assert int(module.best_head) == 0
    plan._select_head([])  # nothing recorded: the choice stays
    assert int(module.best_head) == 0


def test_best_head_is_lowest_loss_head(mdata, fit):
    model = fit(mdata, "supervised", model={"n_heads": 3}, train={"max_epochs": 3})
    plan = model.trainer.lightning_module
    history = torch.stack(plan._head_history)
    assert history.shape == (3, 3)  # one row of head losses per validation epoch
    # the weights of the best epoch are kept, with the head selected at that epoch
    upto = history[: model.best_epoch_ + 1][-plan.head_selection_window :]
    assert int(model.module.best_head) == int(upto.mean(0).argmin())
    logits = model.module.group_logits(torch.zeros(4, 8))
    head = int(model.module.best_head)
    torch.testing.assert_close(logits, model.module.heads.forward_head(torch.zeros(4, 8), head)[1])


def _recomputed_validation_loss(model, batch_size: int = 32) -> float:
    """Validation loss of the current weights, batched as the training plan does (mean weighted by batch size)."""
    plan = model.trainer.lightning_module
    module = model.module
    module.eval()
    val_idx = np.flatnonzero(model.split_ == "validation")
    loader = AnnDataLoader(model.adata_manager, indices=val_idx, batch_size=batch_size, shuffle=False)
    total, n = 0.0, 0
    with torch.no_grad():
        for tensors in loader:
            inference_outputs, generative_outputs = module.forward_all(tensors)
            terms = {}
            for objective in plan.objectives:
                out = module.loss(tensors, inference_outputs, generative_outputs, objective=objective)
                terms.update({k: v for k, v in out.extra_metrics.items() if k != "head_losses"})
            n_batch = out.n_obs_minibatch
            total += n_batch * float(sum(module.loss_weights[k] * v for k, v in terms.items() if k in _SELECTION_TERMS))
            n += n_batch
    return total / n


def test_kept_weights_are_best_validation_epoch(mdata, fit):
    # random labels and half the cells for validation: the model overfits, so the validation loss rises again
    mdata.obs["cell_type"] = mdata.obs["cell_type"].sample(frac=1, random_state=0).to_numpy()
    model = fit(
        mdata,
        "supervised",
        model={"n_hidden": 64, "dropout_rate": 0.0},
        train={"max_epochs": 6, "lr": 0.01, "train_size": 0.5, "validation_size": 0.5},
    )
    val_loss = model.history["validation_loss"].iloc[:, 0].to_numpy(dtype=float)
    assert len(val_loss) == 6
    assert val_loss[-1] > val_loss.min(), "the scenario should end past its best epoch"
    assert model.best_epoch_ == int(np.argmin(val_loss))
    plan = model.trainer.lightning_module
    assert plan.best_validation_loss == pytest.approx(val_loss.min(), rel=1e-6)
    # the restored weights give back the best epoch's validation loss, not the last epoch's
    recomputed = _recomputed_validation_loss(model)
    assert recomputed == pytest.approx(val_loss.min(), rel=1e-4)
    assert recomputed != pytest.approx(val_loss[-1], rel=1e-3)


def test_no_validation_cells(mdata, fit):
    model = fit(mdata, "supervised", train={"train_size": 1.0, "max_epochs": 2})
    assert (model.split_ == "train").all()
    assert "validation_loss" not in model.history
    assert "classification_train" in model.history
    assert model.best_epoch_ is None
    with pytest.raises(ValueError, match="early_stopping needs validation cells"):
        model.train("supervised", train_size=1.0, early_stopping=True, max_epochs=1)


def test_last_batch_of_one_cell_is_dropped(mdata, fit):
    # 129 training cells in batches of 32 leave one cell alone, which batch normalisation cannot train on
    mdata.obs["my_split"] = ["train"] * 129 + ["validation"] * 21
    model = fit(mdata, "supervised", train={"split_key": "my_split", "max_epochs": 1})
    assert (model.split_ == "train").sum() == 129
    assert len(model.trainer.datamodule.train_dataloader()) == 2 * 4


def test_training_is_deterministic_with_seed(make_mudata, model_kwargs, train_kwargs):
    results = []
    for _ in range(2):
        scvi.settings.seed = 0
        mdata = make_mudata()
        UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
        model = UnitedNetModel(mdata, **model_kwargs)
        model.train("supervised", **train_kwargs)
        results.append(
            (
                model.get_latent_representation(),
                model.get_latent_representation(modality="atac"),
                model.predict_labels(return_proba=True).to_numpy(),
                model.predict_modality(source="atac", target="rna"),
            )
        )
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_noise_free_inference_is_repeatable(mdata, fit):
    model = fit(mdata, "supervised")
    np.testing.assert_array_equal(model.get_latent_representation(), model.get_latent_representation())
    np.testing.assert_array_equal(
        model.predict_modality(source="rna", target="atac"), model.predict_modality(source="rna", target="atac")
    )


# ---------------------------------------------------------------------------------------------------------------------
# sparse data
# ---------------------------------------------------------------------------------------------------------------------
def test_sparse_gaussian_modality_densified_per_batch_only(make_mudata, model_kwargs, monkeypatch):
    mdata = make_mudata(sparse_rna=True)
    X = mdata.mod["rna"].X
    assert sparse.issparse(X)
    shapes = []
    for cls in (sparse.csr_matrix, sparse.csr_array):
        for method in ("toarray", "todense"):
            original = getattr(cls, method)

            def recording(self, *args, _original=original, **kwargs):
                shapes.append(self.shape)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, method, recording)
    to_dense = torch.Tensor.to_dense

    def recording_to_dense(self, *args, **kwargs):  # sparse CSR minibatches densified by torch
        shapes.append(tuple(self.shape))
        return to_dense(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to_dense", recording_to_dense)
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, **model_kwargs)
    assert model.likelihoods["rna"] == "gaussian"
    model.train("supervised", max_epochs=1, batch_size=32, enable_progress_bar=False)
    latent = model.get_latent_representation(batch_size=40)
    pred = model.predict_modality(source="rna", target="rna", batch_size=40)
    assert latent.shape == (mdata.n_obs, 8)
    assert np.isfinite(pred).all()
    assert shapes, "sparse batches were never densified: the test did not observe the loader"
    assert max(s[0] for s in shapes) <= 40
    # the user's matrix is the same sparse object, unchanged in type
    assert mdata.mod["rna"].X is X
    assert sparse.issparse(mdata.mod["rna"].X)
    # standardisation statistics from sparse training cells equal the dense computation
    dense_train = X.toarray()[model.split_ == "train"]
    np.testing.assert_allclose(model.module.standardizers["rna"].loc.numpy(), dense_train.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.module.standardizers["rna"].scale.numpy(), dense_train.std(0), rtol=1e-3)


def test_batches_are_batch_sized(mdata, fit):
    model = fit(mdata, "supervised", train={"max_epochs": 1})
    batches = list(model._batches(mdata, ["rna", "atac"], batch_size=64))
    assert [b["atac"].shape for b in batches] == [(64, 32), (64, 32), (22, 32)]
    assert all(b["rna"].dtype == torch.float32 for b in batches)
    np.testing.assert_array_equal(batches[1]["atac"].numpy(), mdata.mod["atac"].X[64:128].toarray())


def test_registry_keys_are_modality_keys(mdata, fit):
    model = fit(mdata, "supervised", train={"max_epochs": 1})
    registered = set(model.adata_manager.data_registry)
    assert {modality_key("rna"), modality_key("atac"), REGISTRY_KEYS.LABELS_KEY} <= registered
    assert set(OBJECTIVE_LOSSES) == {"translation", "classification", "clustering"}
