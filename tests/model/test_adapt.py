"""Query mapping and transductive adaptation: inductive queries, ``model.adapt`` and the masked losses under it."""

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scipy import sparse
from sklearn.metrics import roc_auc_score

from unitednet._constants import REGISTRY_KEYS, RESULT_KEYS, modality_key
from unitednet.model import UnitedNetModel
from unitednet.module import UnitedNetModule
from unitednet.module._module import UNLABELLED, presence_key
from unitednet.train import CellSource, MixedCellLoader


def _split_reference_query(mdata: md.MuData, n_query: int, query_modalities=("rna", "atac")):
    """Reference: the first cells (registered later by the test); query: a new MuData of the last ``n_query`` cells.

    The query holds copies of ``query_modalities`` only, and no obs columns (no labels).
    """
    n_ref = mdata.n_obs - n_query
    reference = mdata[:n_ref].copy()
    mods = {}
    for m in query_modalities:
        X = mdata.mod[m].X[n_ref:]
        mods[m] = ad.AnnData(X.copy(), var=mdata.mod[m].var.copy())
        mods[m].obs_names = mdata.obs_names[n_ref:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        query = md.MuData(mods)
    return reference, query


def _flip_atac(query: md.MuData) -> None:
    atac = query.mod["atac"].X.toarray()
    query.mod["atac"].X = sparse.csr_matrix(1.0 - atac)


# ---------------------------------------------------------------------------------------------------------------------
# inductive query mapping (no training on the query)
# ---------------------------------------------------------------------------------------------------------------------
def test_label_transfer_to_new_rna_only_cells(make_mudata, model_kwargs):
    mdata = make_mudata(n_cells=300, seed=4)
    truth = mdata.obs["cell_type"].to_numpy()[200:]
    reference, query = _split_reference_query(mdata, 100, ("rna",))
    atac_truth = mdata.mod["atac"].X[200:].toarray()
    UnitedNetModel.setup_mudata(reference, labels_key="cell_type")
    model = UnitedNetModel(reference, **model_kwargs)
    model.train("supervised", max_epochs=8, lr=3e-3, batch_size=32, enable_progress_bar=False)

    latent = model.get_latent_representation(query)
    assert latent.shape == (100, 8) and np.isfinite(latent).all()
    labels = model.predict_labels(query)
    assert (labels == truth).mean() > 0.85  # three well-separated groups, from RNA alone
    atac = model.predict_modality(query, source="rna", target="atac")
    assert atac.shape == (100, 32) and ((atac >= 0) & (atac <= 1)).all()
    # the predicted ATAC probabilities rank the query's true peaks (never seen): on these data the per-peak training
    # mean reaches AUROC 0.64 and the true group means 0.74
    assert roc_auc_score(atac_truth.ravel(), atac.ravel()) > 0.68
    # the query was only read: nothing registered on it, nothing written
    assert "_scvi_uuid" not in query.uns and RESULT_KEYS.SPLIT not in query.obs


# ---------------------------------------------------------------------------------------------------------------------
# adapt: the held-out modality and the query labels are never read
# ---------------------------------------------------------------------------------------------------------------------
def _adapt_run(make_mudata, model_kwargs, *, change=None, max_epochs=2):
    """Train on a reference (seed 0) with its own test cells, adapt on the query with ``held_out="atac"``.

    ``change`` alters the data before anything runs: ``"held_out"`` flips the query's ATAC, ``"held_out_nan"`` fills
    it with NaN, ``"labels"`` gives the query a (random) ``cell_type`` column, ``"reference_test"`` alters the
    reference's test cells, ``"query_rna"`` (the control) alters a few query RNA values.
    """
    scvi.settings.seed = 0
    mdata = make_mudata(n_cells=200, seed=2)
    reference, query = _split_reference_query(mdata, 80)
    split = np.where(np.arange(reference.n_obs) % 6 == 0, "test", "train").astype(object)
    split[1::10] = "validation"
    reference.obs["my_split"] = split
    if change == "held_out":
        _flip_atac(query)
    elif change == "held_out_nan":
        query.mod["atac"].X = np.full(query.mod["atac"].shape, np.nan, dtype=np.float32)
    elif change == "labels":
        query.obs["cell_type"] = np.random.default_rng(1).choice(["alpha", "beta", "gamma"], size=query.n_obs)
    elif change == "reference_test":
        rows = split == "test"
        reference.mod["rna"].X[rows] = 100.0 - reference.mod["rna"].X[rows]
    elif change == "query_rna":
        query.mod["rna"].X[:5] = query.mod["rna"].X[:5] + 3.0
    UnitedNetModel.setup_mudata(reference, labels_key="cell_type")
    model = UnitedNetModel(reference, **model_kwargs)
    model.train("supervised", split_key="my_split", max_epochs=2, batch_size=32, enable_progress_bar=False)
    model.adapt(query, held_out="atac", max_epochs=max_epochs, batch_size=32, enable_progress_bar=False)
    rna_only = md.MuData({"rna": query.mod["rna"]})
    outputs = {
        "latent_query": model.get_latent_representation(rna_only),
        "latent_query_rna": model.get_latent_representation(query, modality="rna"),
        "labels_query": model.predict_labels(rna_only, return_proba=True).to_numpy(),
        "atac_from_rna": model.predict_modality(query, source="rna", target="atac"),
        # outputs on the reference's training and validation cells (the test cells' inputs differ in one run)
        "latent_reference": model.get_latent_representation()[split != "test"],
        "labels_reference": model.predict_labels(return_proba=True).to_numpy()[split != "test"],
    }
    history = {k: v.to_numpy(dtype=float) for k, v in model.history.items()}
    state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    return {
        "state": state,
        "outputs": outputs,
        "history": history,
        "split": query.obs[RESULT_KEYS.SPLIT].astype(str).to_numpy(),
        "adaptation": dict(model.adaptation_),
        "query": query,
        "reference": reference,
    }


def _assert_identical(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        torch.testing.assert_close(b["state"][key], a["state"][key], rtol=0, atol=0, msg=key)
    for key in a["outputs"]:
        np.testing.assert_array_equal(b["outputs"][key], a["outputs"][key], err_msg=key)
    assert a["history"].keys() == b["history"].keys()
    for key in a["history"]:
        np.testing.assert_array_equal(b["history"][key], a["history"][key], err_msg=key)
    np.testing.assert_array_equal(b["split"], a["split"])
    assert b["adaptation"] == a["adaptation"]


def test_adapt_never_reads_held_out_modality_labels_or_test_cells(make_mudata, model_kwargs):
    reference = _adapt_run(make_mudata, model_kwargs)
    runs = {}
    for change in ("held_out", "held_out_nan", "labels", "reference_test"):
        runs[change] = _adapt_run(make_mudata, model_kwargs, change=change)
        _assert_identical(reference, runs[change])
    # the changes were real, and the held-out modality is left as given (NaN included: it was never even checked)
    assert (runs["held_out"]["query"].mod["atac"].X != reference["query"].mod["atac"].X).nnz > 0
    assert np.isnan(runs["held_out_nan"]["query"].mod["atac"].X).all()
    assert "cell_type" in runs["labels"]["query"].obs and "cell_type" not in reference["query"].obs
    # control: five query cells' RNA (an adapted-on modality) change the adapted weights and outputs
    control = _adapt_run(make_mudata, model_kwargs, change="query_rna")
    key = "encoders.rna.network.0.weight"
    assert not torch.equal(control["state"][key], reference["state"][key])
    assert not np.array_equal(control["outputs"]["latent_reference"], reference["outputs"]["latent_reference"])


def test_adapt_records_the_query_split(make_mudata, model_kwargs):
    run = _adapt_run(make_mudata, model_kwargs)
    split = run["split"]
    assert set(split) == {"query_train", "query_validation"}
    assert (split == "query_validation").sum() == 8  # validation_size=0.1 of 80 query cells
    assert run["query"].obs[RESULT_KEYS.SPLIT].dtype == "category"
    assert list(run["query"].obs[RESULT_KEYS.SPLIT].cat.categories) == ["query_train", "query_validation"]
    assert run["adaptation"] == {
        "modalities": ["rna"],
        "held_out": ["atac"],
        "objectives": ["translation", "classification"],
        "n_reference_train": int((run["reference"].obs["my_split"] == "train").sum()),
        "n_reference_validation": int((run["reference"].obs["my_split"] == "validation").sum()),
        "n_query_train": 72,
        "n_query_validation": 8,
        "first_epoch": 2,
        "best_epoch": run["adaptation"]["best_epoch"],
    }
    assert run["adaptation"]["best_epoch"] in (0, 1)
    # the reference keeps its own split
    np.testing.assert_array_equal(
        run["reference"].obs[RESULT_KEYS.SPLIT].astype(str).to_numpy(), run["reference"].obs["my_split"].to_numpy()
    )


def test_adapt_writes_only_the_split_to_the_query(make_mudata, fit, snapshot, assert_unchanged):
    mdata = make_mudata(n_cells=180, seed=5)
    reference, query = _split_reference_query(mdata, 60)
    model = fit(reference, "supervised")
    ref_snap, query_snap = snapshot(reference), snapshot(query)
    model.adapt(query, held_out=["atac"], max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert_unchanged(query, query_snap, added_obs=(RESULT_KEYS.SPLIT,))
    assert_unchanged(reference, ref_snap)


def test_adapt_learns_from_the_query(make_mudata, model_kwargs):
    # a query shifted away from the reference: adaptation lowers the RNA reconstruction error of its cells
    scvi.settings.seed = 0
    reference = make_mudata(n_cells=150, seed=6)
    shifted = make_mudata(n_cells=150, seed=6, rna_shift=4.0)
    _, query = _split_reference_query(shifted, 100, ("rna",))
    UnitedNetModel.setup_mudata(reference, labels_key="cell_type")
    model = UnitedNetModel(reference, **model_kwargs)
    model.train("supervised", max_epochs=3, batch_size=32, enable_progress_bar=False)
    truth = query.mod["rna"].X

    def error():
        return float(np.mean((model.predict_modality(query, source="rna", target="rna") - truth) ** 2))

    before = error()
    model.adapt(query, max_epochs=8, batch_size=32, lr=3e-3, enable_progress_bar=False)
    assert model.adaptation_["modalities"] == ["rna"] and model.adaptation_["held_out"] == []
    assert error() < 0.7 * before
    assert "reconstruction_train" in model.history and len(model.history["reconstruction_train"]) == 3 + 8


@pytest.mark.parametrize(
    ("task", "setup", "model_extra", "terms"),
    [
        ("unsupervised", {}, {"n_groups": 3}, {"ddc_train", "self_entropy_train", "translation_train"}),
        ("translation", {}, {}, {"translation_train", "contrastive_train"}),
    ],
)
def test_adapt_other_tasks(make_mudata, fit, task, setup, model_extra, terms):
    mdata = make_mudata(n_cells=180, seed=8, n_adt=5)
    reference, query = _split_reference_query(mdata, 60, ("rna", "adt"))
    model = fit(reference, task, setup=setup, model=model_extra)
    model.adapt(query, max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert model.adaptation_["modalities"] == ["rna", "adt"]
    assert model.adaptation_["objectives"] == list(
        {"unsupervised": ["translation", "clustering"]}.get(task, ["translation"])
    )
    assert terms <= set(model.history)
    latent = model.get_latent_representation(query)
    assert latent.shape == (60, 8) and np.isfinite(latent).all()
    if task == "unsupervised":
        assert set(model.predict_labels(query)) <= {"0", "1", "2"}


def test_adapt_save_load_keeps_the_adaptation(make_mudata, fit, tmp_path):
    mdata = make_mudata(n_cells=180, seed=9)
    reference, query = _split_reference_query(mdata, 60)
    model = fit(reference, "supervised")
    model.adapt(query, held_out="atac", max_epochs=1, batch_size=32, enable_progress_bar=False)
    model.save(tmp_path / "adapted")
    loaded = UnitedNetModel.load(tmp_path / "adapted", adata=reference)
    assert loaded.adaptation_ == model.adaptation_
    np.testing.assert_array_equal(loaded.get_latent_representation(query), model.get_latent_representation(query))
    # training again from the reference discards the record of the adaptation
    loaded.train("supervised", max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert loaded.adaptation_ is None


# ---------------------------------------------------------------------------------------------------------------------
# adapt: errors
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def trained_and_query(make_mudata, fit):
    mdata = make_mudata(n_cells=150, seed=10)
    reference, query = _split_reference_query(mdata, 50)
    return fit(reference, "supervised", train={"max_epochs": 1}), query


def test_adapt_refuses_to_adapt_on_a_held_out_modality(trained_and_query):
    model, query = trained_and_query
    with pytest.raises(ValueError, match=r"\['atac'\] are both held out for evaluation and requested for adaptation"):
        model.adapt(query, held_out="atac", modalities=["rna", "atac"], max_epochs=1)
    assert RESULT_KEYS.SPLIT not in query.obs and model.adaptation_ is None


def test_adapt_argument_errors(trained_and_query, make_mudata, model_kwargs):
    model, query = trained_and_query
    with pytest.raises(KeyError, match=r"held_out names modalities \['protein'\] that are not registered"):
        model.adapt(query, held_out="protein")
    with pytest.raises(ValueError, match="no modality to adapt on"):
        model.adapt(md.MuData({"atac": query.mod["atac"]}), held_out="atac")
    with pytest.raises(KeyError, match=r"The query has no modalities \['atac'\]"):
        model.adapt(md.MuData({"rna": query.mod["rna"]}), modalities=["rna", "atac"])
    with pytest.raises(ValueError, match="objectives of the trained task 'supervised'"):
        model.adapt(query, objective_order=["translation", "clustering"])
    with pytest.raises(ValueError, match="is the registered \\(reference\\) MuData"):
        model.adapt(model.adata)
    with pytest.raises(ValueError, match=r"validation_size must be in \[0, 1\)"):
        model.adapt(query, validation_size=1.0)
    with pytest.raises(TypeError, match="Expected a MuData"):
        model.adapt(query.mod["rna"])
    bad = md.MuData({"rna": query.mod["rna"].copy()})
    bad.mod["rna"].X[0, 0] = np.inf
    with pytest.raises(ValueError, match="Query modality 'rna' contains 1 NaN or infinite"):
        model.adapt(bad)
    untrained_data = make_mudata(n_cells=60)
    UnitedNetModel.setup_mudata(untrained_data, labels_key="cell_type")
    with pytest.raises(RuntimeError, match="not trained yet"):
        UnitedNetModel(untrained_data, **model_kwargs).adapt(query)


def test_adapt_refuses_models_with_fields_it_cannot_supply(trained_and_query, monkeypatch):
    # e.g. a subclass registering perturbation codes: query batches could not hold them
    model, query = trained_and_query
    registry = dict(model.adata_manager.data_registry) | {"perturbation": None}
    monkeypatch.setattr(type(model.adata_manager), "data_registry", property(lambda self: registry))
    with pytest.raises(NotImplementedError, match=r"registers fields \['perturbation'\] that adaptation cannot"):
        model.adapt(query)


# ---------------------------------------------------------------------------------------------------------------------
# module: losses over the modalities each cell holds
# ---------------------------------------------------------------------------------------------------------------------
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


def _tensors(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        modality_key("rna"): torch.randn(n, 6, generator=g),
        modality_key("atac"): (torch.rand(n, 5, generator=g) < 0.4).float(),
        modality_key("adt"): torch.randn(n, 4, generator=g) + 3,
        REGISTRY_KEYS.LABELS_KEY: torch.arange(n).remainder(3).view(-1, 1).float(),
    }


def _all_terms(module, tensors, seed=0):
    """Every loss term of every objective, and the gradient of their sum, for one forward pass."""
    torch.manual_seed(seed)
    module.zero_grad()
    inference_outputs, generative_outputs = module.forward_all(tensors)
    terms = {}
    for objective in ("translation", "classification", "clustering"):
        out = module.loss(tensors, inference_outputs, generative_outputs, objective=objective)
        terms.update({f"{objective}.{k}": v for k, v in out.extra_metrics.items()})
        terms[f"{objective}.loss"] = out.loss
    terms["discriminator"] = module.discriminator_loss(tensors, generative_outputs)
    sum(v.sum() for k, v in terms.items() if not k.endswith("head_losses")).backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_all_present_flags_give_the_full_batch_losses(module, mode):
    getattr(module, mode)()
    tensors = _tensors()
    flagged = dict(tensors) | {presence_key(m): torch.ones(24, dtype=torch.bool) for m in ("rna", "atac", "adt")}
    terms, grads = _all_terms(module, tensors)
    flagged_terms, flagged_grads = _all_terms(module, flagged)
    assert terms.keys() == flagged_terms.keys()
    for key in terms:
        torch.testing.assert_close(flagged_terms[key], terms[key], msg=key)
    for key in grads:
        torch.testing.assert_close(flagged_grads[key], grads[key], msg=key)


def test_values_of_absent_modalities_never_matter(module):
    module.train()
    tensors = _tensors()
    absent = torch.arange(24) >= 16  # cells 16.. lack atac and adt (query-like); 0..15 have everything
    flags = {presence_key("rna"): torch.ones(24, dtype=torch.bool)}
    flags |= {presence_key(m): ~absent for m in ("atac", "adt")}
    a = dict(tensors) | flags
    b = dict(a)
    b[modality_key("atac")] = a[modality_key("atac")].clone()
    b[modality_key("atac")][absent] = 1.0 - b[modality_key("atac")][absent]
    b[modality_key("adt")] = a[modality_key("adt")].clone()
    b[modality_key("adt")][absent] = 1e6
    terms_a, grads_a = _all_terms(module, a)
    terms_b, grads_b = _all_terms(module, b)
    for key in terms_a:
        torch.testing.assert_close(terms_b[key], terms_a[key], rtol=0, atol=0, msg=key)
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], rtol=0, atol=0, msg=key)
    # control: the same change on present cells does change the losses
    c = dict(a)
    c[modality_key("adt")] = a[modality_key("adt")].clone()
    c[modality_key("adt")][:4] = 1e3
    terms_c, _ = _all_terms(module, c)
    assert not torch.equal(terms_c["translation.reconstruction"], terms_a["translation.reconstruction"])


def test_masked_terms_equal_the_subset_computations(module):
    module.eval()
    tensors = _tensors()
    absent = torch.arange(24) >= 16
    flagged = dict(tensors) | {presence_key("rna"): torch.ones(24, dtype=torch.bool), presence_key("atac"): ~absent}
    flagged[presence_key("adt")] = ~absent
    inf, gen = module.forward_all(flagged)
    assert inf["z"]["rna"].shape == (24, 4) and inf["z"]["atac"].shape == (16, 4)
    # cells with rna only: the fused latent is their rna latent; cells with all: the full fusion
    torch.testing.assert_close(inf["z_fused"][absent], inf["z"]["rna"][absent])
    full_inf, full_gen = module.forward_all(tensors)
    torch.testing.assert_close(inf["z_fused"][~absent], full_inf["z_fused"][~absent])
    terms = module._translation_terms(flagged, inf, gen)
    # translation: rna -> atac / adt and back only on the 16 cells with both
    x = {m: module.standardize(m, tensors[modality_key(m)]) for m in ("rna", "atac", "adt")}
    from unitednet.module._losses import reconstruction_error

    expected = []
    for t in ("rna", "atac", "adt"):
        for s in ("rna", "atac", "adt"):
            if s != t:
                pred = full_gen["x_hat"][t][s][~absent]
                expected.append(reconstruction_error(pred, x[t][~absent], module.likelihoods[t]))
    torch.testing.assert_close(terms["translation"], torch.stack(expected).mean())
    recon = [
        reconstruction_error(full_gen["x_hat"]["rna"]["rna"], x["rna"], "gaussian"),
        reconstruction_error(full_gen["x_hat"]["atac"]["atac"][~absent], x["atac"][~absent], "bernoulli"),
        reconstruction_error(full_gen["x_hat"]["adt"]["adt"][~absent], x["adt"][~absent], "gaussian"),
    ]
    torch.testing.assert_close(terms["reconstruction"], torch.stack(recon).mean())


def test_classification_reads_labelled_cells_only(module):
    module.eval()
    tensors = _tensors()
    labels = tensors[REGISTRY_KEYS.LABELS_KEY].clone()
    labels[12:] = UNLABELLED
    flagged = dict(tensors) | {REGISTRY_KEYS.LABELS_KEY: labels}
    inf, gen = module.forward_all(flagged)
    out = module.loss(flagged, inf, gen, objective="classification")
    logits = module.heads(inf["z_fused"])[1]
    expected = torch.stack(
        [
            torch.nn.functional.cross_entropy(lg[:12], labels[:12].view(-1).long(), weight=module.class_weights)
            for lg in logits
        ]
    )
    torch.testing.assert_close(out.extra_metrics["head_losses"], expected)
    # a batch of unlabelled cells only: no term, no gradient, no head comparison
    flagged[REGISTRY_KEYS.LABELS_KEY] = torch.full_like(labels, UNLABELLED)
    out = module.loss(flagged, inf, gen, objective="classification")
    assert out.extra_metrics == {} and not out.loss.requires_grad and float(out.loss) == 0.0


def test_single_present_cell_is_dropped_in_training(module):
    module.train()
    tensors = _tensors(n=10) | {presence_key("adt"): torch.arange(10) == 3}
    inf, _ = module.forward_all(tensors)  # batch norm cannot train on one cell: adt is left out of this batch
    assert set(inf["z"]) == {"rna", "atac"}
    module.eval()
    inf, _ = module.forward_all(tensors)
    assert inf["z"]["adt"].shape == (1, 4)


# ---------------------------------------------------------------------------------------------------------------------
# the mixed loader
# ---------------------------------------------------------------------------------------------------------------------
def test_mixed_loader_batches():
    rng = np.random.default_rng(0)
    ref = {"rna": rng.normal(size=(40, 3)).astype(np.float32), "atac": sparse.random(40, 4, density=0.5, format="csr")}
    query_rna = np.full((30, 3), np.nan, dtype=np.float32)
    query_rna[::2] = rng.normal(size=(15, 3))  # only the even rows belong to the loader; odd rows must never be read
    sources = [
        CellSource(ref, np.arange(0, 40, 2), labels=np.arange(40) % 3),
        CellSource({"rna": query_rna}, np.arange(0, 30, 2)),
    ]
    torch.manual_seed(0)
    loader = MixedCellLoader(sources, {"rna": 3, "atac": 4}, batch_size=10, shuffle=True)
    assert len(loader) == 4 and loader.n_obs == 35
    batches = list(loader)
    assert len(batches) == 4
    n_ref = [int(b[presence_key("atac")].sum()) for b in batches]
    assert n_ref == [5, 5, 5, 5]  # 20 reference cells dealt evenly; the 15 query cells as 4, 4, 4, 3
    assert sum(b[modality_key("rna")].shape[0] for b in batches) == 35
    for b in batches:
        assert torch.isfinite(b[modality_key("rna")]).all()
        assert b[presence_key("rna")].all()
        ref_rows = b[presence_key("atac")]
        labels = b[REGISTRY_KEYS.LABELS_KEY].view(-1)
        assert (labels[~ref_rows] == UNLABELLED).all() and (labels[ref_rows] >= 0).all()
        assert (b[modality_key("atac")][~ref_rows] == 0).all()
    # the reference cells of the batches are exactly the sources' rows, with their values and labels
    seen = torch.cat([b[modality_key("atac")][b[presence_key("atac")]] for b in batches])
    assert seen.shape == (20, 4)
    np.testing.assert_allclose(np.sort(seen.numpy().sum(1)), np.sort(ref["atac"][::2].toarray().sum(1)), rtol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        MixedCellLoader(sources, {"rna": 3}, batch_size=1)


def test_mixed_loader_without_shuffle_is_in_order():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    loader = MixedCellLoader([CellSource({"rna": X}, np.arange(6))], {"rna": 2}, batch_size=4, shuffle=False)
    batches = list(loader)
    np.testing.assert_array_equal(torch.cat([b[modality_key("rna")] for b in batches]).numpy(), X)
    assert pd.Series([b[modality_key("rna")].shape[0] for b in batches]).tolist() == [3, 3]
