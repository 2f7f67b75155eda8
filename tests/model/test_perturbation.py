"""UnitedNetPerturbationModel: set-up, held-out cells, counterfactual prediction, identification, two modalities."""

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scvi
import torch

import unitednet
from unitednet.model import UnitedNetModel, UnitedNetPerturbationModel
from unitednet.module import UnitedNetPerturbationModule

SHIFTED_RNA = slice(0, 6)  # genes moved by the perturbation
SHIFTED_ADT = slice(0, 3)
SCVI_OBS = ("_scvi_labels", "_scvi_batch", "_scvi_perturbation")


def _perturbed(make_mudata, n_adt: int = 0, n_cells: int = 180, seed: int = 0) -> md.MuData:
    """Tiny paired data where STIM cells have +3 on the first rna genes (and first adt proteins)."""
    mdata = make_mudata(n_cells=n_cells, n_adt=n_adt, seed=seed)
    rng = np.random.default_rng(seed + 1)
    stim = rng.uniform(size=mdata.n_obs) < 0.5
    mdata.obs["condition"] = pd.Categorical(np.where(stim, "STIM", "CTRL"), categories=["CTRL", "STIM"])
    rna = mdata.mod["rna"].X
    rna[np.ix_(stim, np.arange(24)[SHIFTED_RNA])] += 3.0
    mdata.mod["rna"].layers["raw"] = rna.copy()
    if n_adt:
        mdata.mod["adt"].X[np.ix_(stim, np.arange(n_adt)[SHIFTED_ADT])] += 4.0
    return mdata


def _setup(mdata, **kwargs):
    kwargs = {"perturbation_key": "condition", "control_category": "CTRL", "labels_key": "cell_type", **kwargs}
    UnitedNetPerturbationModel.setup_mudata(mdata, **kwargs)


def _fit(mdata, model_kwargs, train_kwargs, *, setup=None, model=None, train=None, task=None):
    _setup(mdata, **(setup or {}))
    net = UnitedNetPerturbationModel(mdata, **{**model_kwargs, **(model or {})})
    net.train(task, **{**train_kwargs, **(train or {})})
    return net


@pytest.fixture(scope="module")
def trained():
    """RNA + ATAC model trained 15 epochs with the STIM cells of type 'gamma' held out (seed 0)."""
    from tests.conftest import MODEL_KWARGS, TRAIN_KWARGS, _make_mudata

    previous = scvi.settings.seed
    scvi.settings.seed = 0
    try:
        mdata = _perturbed(_make_mudata)
        held = ((mdata.obs["cell_type"] == "gamma") & (mdata.obs["condition"] == "STIM")).to_numpy()
        net = _fit(mdata, MODEL_KWARGS, {**TRAIN_KWARGS, "max_epochs": 15}, train={"held_out": held})
    finally:
        scvi.settings.seed = previous
    return net, held


# ---------------------------------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------------------------------
def test_public_api():
    assert unitednet.model.UnitedNetPerturbationModel is UnitedNetPerturbationModel
    assert unitednet.UnitedNetPerturbationModel is UnitedNetPerturbationModel
    assert issubclass(UnitedNetPerturbationModel, UnitedNetModel)


def test_setup_registers_perturbation_and_changes_nothing_else(make_mudata, snapshot, assert_unchanged):
    mdata = _perturbed(make_mudata)
    before = snapshot(mdata)
    _setup(mdata)
    assert_unchanged(mdata, before, added_obs=SCVI_OBS, added_uns=("_scvi_uuid", "_scvi_manager_uuid"))
    codes = mdata.obs["_scvi_perturbation"].to_numpy()
    np.testing.assert_array_equal(codes, (mdata.obs["condition"] == "STIM").to_numpy().astype(int))
    model = UnitedNetPerturbationModel(mdata, n_latent=4, n_hidden=8, n_layers=1)
    assert model.perturbation_categories == ["CTRL", "STIM"]
    assert model.control_category == "CTRL" and model.perturbation_key == "condition"
    assert isinstance(model.module, UnitedNetPerturbationModule)
    assert model.module.control_index == 0 and model.module.n_perturbations == 2
    assert model.module.align_within_labels
    assert "perturbations ['CTRL', 'STIM']" in model._model_summary_string


def test_control_category_not_first(make_mudata):
    mdata = _perturbed(make_mudata)
    mdata.obs["condition"] = mdata.obs["condition"].cat.rename_categories({"CTRL": "zz_ctrl"})
    _setup(mdata, control_category="zz_ctrl")
    model = UnitedNetPerturbationModel(mdata, n_latent=4, n_hidden=8, n_layers=1)
    assert model.module.control_index == model.perturbation_categories.index("zz_ctrl")
    # the control row of the directions is always zero
    model.module.set_shifts(torch.ones(2, 4))
    shifts = model.module.shifts()
    assert torch.all(shifts[model.module.control_index] == 0)
    assert torch.all(shifts[1 - model.module.control_index] == 1)


def test_setup_errors(make_mudata):
    mdata = _perturbed(make_mudata)
    with pytest.raises(KeyError, match="perturbation_key='nope' is not a column"):
        _setup(mdata, perturbation_key="nope")
    with pytest.raises(ValueError, match="control_category='ctl' is not a value"):
        _setup(mdata, control_category="ctl")
    single = _perturbed(make_mudata)
    single.obs["condition"] = "CTRL"
    with pytest.raises(ValueError, match="needs control cells and cells of at least one perturbation"):
        _setup(single)
    missing = _perturbed(make_mudata)
    missing.obs["condition"] = missing.obs["condition"].astype(object)
    missing.obs.iloc[3, missing.obs.columns.get_loc("condition")] = None
    with pytest.raises(ValueError, match="1 missing values"):
        _setup(missing)
    plain = _perturbed(make_mudata)
    UnitedNetModel.setup_mudata(plain, labels_key="cell_type")
    with pytest.raises(ValueError, match="not set up for perturbations"):
        UnitedNetPerturbationModel(plain)


def test_loss_weights(make_mudata):
    mdata = _perturbed(make_mudata)
    _setup(mdata)
    model = UnitedNetPerturbationModel(
        mdata, n_latent=4, loss_weights={"perturbation_alignment": 0.5, "translation": 0.2}
    )
    assert model.module.loss_weights["perturbation_alignment"] == 0.5
    assert model.module.loss_weights["perturbation_identification"] == 1.0
    assert model.module.loss_weights["translation"] == 0.2
    assert model.init_params_["non_kwargs"]["loss_weights"] == {"translation": 0.2, "perturbation_alignment": 0.5}
    with pytest.raises(KeyError, match="Unknown loss weights \\['alignment'\\]"):
        UnitedNetPerturbationModel(mdata, loss_weights={"alignment": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        UnitedNetPerturbationModel(mdata, loss_weights={"perturbation_identification": -1.0})


# ---------------------------------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------------------------------
def test_alignment_term_measures_the_spread_of_shifts_over_labels():
    module = UnitedNetPerturbationModule(
        {"rna": 5}, {"rna": "gaussian"}, n_perturbations=3, control_index=1, n_latent=2
    )
    codes = torch.tensor([1, 1, 0, 0, 2, 1, 0, 2])
    strata = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    base = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5, 5], [5, 5], [5, 5]])
    direction = torch.tensor([[3.0, 1.0], [0.0, 0.0], [-1.0, 2.0]])
    # every label shifted by the same direction: no spread
    z = base + direction[codes]
    assert float(module._alignment(z, codes, strata)) == pytest.approx(0.0, abs=1e-6)
    # perturbation 0 shifted by (1, 0) more in label 0: shifts (4, 1) and (3, 1), spread 0.25, size (17 + 10) / 2;
    # perturbation 2 still has no spread (shifts (-1, 2) twice), size 5
    z_off = z.clone()
    z_off[(codes == 0) & (strata == 0)] += torch.tensor([1.0, 0.0])
    expected = (0.25 + 0.0) / 2 / ((13.5 + 5.0) / 2)
    assert float(module._alignment(z_off, codes, strata)) == pytest.approx(expected, rel=1e-5)
    # scaling every latent leaves it unchanged (no reward for shrinking the shifts)
    assert float(module._alignment(3 * z_off, codes, strata)) == pytest.approx(expected, rel=1e-5)
    # one label only: nothing to align
    assert module._alignment(z_off, codes, torch.zeros_like(strata)) is None
    # counterfactual moves along the directions
    module.set_shifts(direction)
    assert torch.all(module.shifts()[1] == 0)
    torch.testing.assert_close(module.counterfactual(z, codes, torch.full_like(codes, 1)), base)


def test_shift_estimates_average_strata():
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0], [10.0, 0.0], [14.0, 0.0], [1.0, 1.0]])
    codes = torch.tensor([0, 1, 0, 1, 0])
    strata = torch.tensor([0, 0, 1, 1, 2])  # stratum 2 has no perturbed cell
    est, found = UnitedNetPerturbationModule.shift_estimates(z, codes, strata, 3, 0)
    assert found.tolist() == [False, True, False]
    torch.testing.assert_close(est[1], torch.tensor([3.0, 1.0]))  # mean of (2, 2) and (4, 0)
    torch.testing.assert_close(est[[0, 2]], torch.zeros(2, 2))


def test_counterfactual_identification_term():
    torch.manual_seed(0)
    module = UnitedNetPerturbationModule({"rna": 5}, {"rna": "gaussian"}, n_latent=3, n_hidden=4).eval()
    codes = torch.tensor([0, 0, 1, 1, 0, 1])
    strata = torch.tensor([0, 0, 0, 1, 1, 1])
    z = torch.randn(6, 3, requires_grad=True)
    loss = module._counterfactual_identification(z, codes, strata)
    # control cells moved by the label-balanced batch shift, all labelled with the only perturbation
    shifts, _ = UnitedNetPerturbationModule.shift_estimates(z.detach(), codes, strata, 2, 0)
    logits = module.perturbation_logits(z[codes == 0].detach() + shifts[1])
    expected = torch.nn.functional.cross_entropy(logits, torch.ones(3, dtype=torch.long))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert z.grad is None or torch.all(z.grad == 0)  # only the head learns from counterfactual cells
    assert module._counterfactual_identification(z, torch.zeros_like(codes), strata) is None


def test_neighbour_weights():
    centroids = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    z = torch.tensor([[0.1, 0.0], [9.0, 0.0]])
    w = UnitedNetPerturbationModule.neighbour_weights(z, centroids, 0.1, 1.0)
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    assert w[0].argmax() == 0 and w[1].argmax() == 2
    # softmax of minus the squared distances over the temperature (shifted by the row minimum)
    d = torch.tensor([0.01, 0.81, 98.01])
    torch.testing.assert_close(w[0], torch.softmax(-d / 0.1, 0))
    # an infinite temperature weighs the strata equally; a lower one sharpens the weights
    torch.testing.assert_close(
        UnitedNetPerturbationModule.neighbour_weights(z, centroids, float("inf"), 1.0), torch.full((2, 3), 1 / 3)
    )
    flat = UnitedNetPerturbationModule.neighbour_weights(z, centroids, 100.0, 1.0)
    assert float(flat[0, 0]) < float(w[0, 0])


def test_select_neighbour_temperature_by_leave_one_stratum_out():
    # two pairs of strata: the strata of a pair lie close together and respond alike, the pairs differ
    centroids = torch.tensor([[0.0, 0.0], [0.5, 0.0], [10.0, 0.0], [10.5, 0.0]])
    cells = [c + 0.1 * torch.randn(5, 2, generator=torch.Generator().manual_seed(i)) for i, c in enumerate(centroids)]
    pair = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 3.0]])
    temps = (0.01, 0.1, 1.0, float("inf"))
    temperature, scale = UnitedNetPerturbationModule.select_neighbour_temperature(
        cells, centroids, {"rna": pair}, {"rna": 1.0}, temps
    )
    distances = torch.cdist(centroids, centroids) ** 2
    assert scale == pytest.approx(float(distances[tuple(torch.triu_indices(4, 4, 1))].median()))
    assert temperature < 1.0
    # every stratum responds alike: every temperature predicts as well, and the tie goes to equal weights
    same = torch.tensor([[3.0, 1.0, 0.0]]).repeat(4, 1)
    temperature, _ = UnitedNetPerturbationModule.select_neighbour_temperature(
        cells, centroids, {"rna": same}, {"rna": 1.0}, temps
    )
    assert np.isinf(temperature)
    # fewer than three strata: nothing to leave out against, equal weights
    temperature, _ = UnitedNetPerturbationModule.select_neighbour_temperature(
        cells[:2], centroids[:2], {"rna": pair[:2]}, {"rna": 1.0}, temps
    )
    assert np.isinf(temperature)


def test_perturbation_head_trains_in_the_translation_objective():
    module = UnitedNetPerturbationModule({"rna": 5}, {"rna": "gaussian"}, n_groups=2, n_latent=3, n_hidden=4)
    groups = module.parameter_groups()
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert all(id(p) in ids["translation"] for p in module.identification_head.parameters())
    assert not any(id(p) in ids["classification"] for p in module.identification_head.parameters())
    assert "perturbation_shift" in dict(module.named_buffers())  # estimated, not a gradient-trained parameter


# ---------------------------------------------------------------------------------------------------------------------
# training with held-out cells
# ---------------------------------------------------------------------------------------------------------------------
def test_held_out_cells_never_enter_training(trained):
    model, held = trained
    split = model.adata.obs["unitednet_split"].astype(str).to_numpy()
    assert (split[held] == "test").all()
    assert set(split[~held]) == {"train", "validation"}
    assert np.array_equal(split == "test", held)
    hist = model.history
    for term in ("perturbation_alignment", "perturbation_identification"):
        assert f"{term}_train" in hist and f"{term}_validation" in hist
        assert np.isfinite(hist[f"{term}_train"].to_numpy()).all()
    # the directions are the label-balanced mean latent shifts of the training cells; the control row is zero
    shifts = model.get_perturbation_shifts()
    assert list(shifts.index) == ["CTRL", "STIM"]
    assert (shifts.loc["CTRL"] == 0).all()
    train = model.split_ == "train"
    obs = model.adata.obs
    stim = (obs["condition"] == "STIM").to_numpy()
    per_modality = []
    for m in ("rna", "atac"):
        z = model.get_latent_representation(modality=m)
        deltas = []
        for t in ("alpha", "beta"):  # gamma has no training STIM cells
            cells = train & (obs["cell_type"] == t).to_numpy()
            deltas.append(z[cells & stim].mean(0) - z[cells & ~stim].mean(0))
        per_modality.append(np.mean(deltas, 0))
    expected = np.mean(per_modality, 0)
    np.testing.assert_allclose(shifts.loc["STIM"].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    # calibration: the label-balanced observed change of the training cells
    x = model.adata.mod["rna"].X
    observed = np.mean(
        [
            x[train & stim & (obs["cell_type"] == t).to_numpy()].mean(0)
            - x[train & ~stim & (obs["cell_type"] == t).to_numpy()].mean(0)
            for t in ("alpha", "beta")
        ],
        0,
    )
    calibration = model.module.calibration("rna").numpy()
    assert calibration.shape == (2, 2, 24)
    np.testing.assert_allclose(calibration[0, 1], observed, rtol=1e-4, atol=1e-4)
    assert np.all(calibration[:, 0] == 0) and np.abs(calibration[1, 1]).sum() > 0


def _weights_after_training(mdata, held, model_kwargs, train_kwargs):
    scvi.settings.seed = 0
    net = _fit(mdata, model_kwargs, train_kwargs, train={"held_out": held, "max_epochs": 2})
    return {k: v.clone() for k, v in net.module.state_dict().items()}


def test_held_out_values_do_not_change_trained_weights(make_mudata, model_kwargs, train_kwargs):
    mdata = _perturbed(make_mudata)
    held = ((mdata.obs["cell_type"] == "gamma") & (mdata.obs["condition"] == "STIM")).to_numpy()
    reference = _weights_after_training(mdata, held, model_kwargs, train_kwargs)

    changed = _perturbed(make_mudata)
    rng = np.random.default_rng(5)
    changed.mod["rna"].X[held] = rng.normal(50.0, 10.0, size=(held.sum(), 24)).astype(np.float32)
    atac = changed.mod["atac"].X.toarray()
    atac[held] = 1.0 - atac[held]
    changed.mod["atac"].X = type(changed.mod["atac"].X)(atac)
    same = _weights_after_training(changed, held, model_kwargs, train_kwargs)
    assert reference.keys() == same.keys()
    for key in reference:
        torch.testing.assert_close(same[key], reference[key], rtol=0, atol=0, msg=key)

    # the check has teeth: changing one training cell changes the weights
    control = _perturbed(make_mudata)
    first_train = int(np.flatnonzero(~held)[0])
    control.mod["rna"].X[first_train] += 5.0
    other = _weights_after_training(control, held, model_kwargs, train_kwargs)
    assert any(not torch.equal(other[k], reference[k]) for k in reference if reference[k].is_floating_point())


def test_held_out_accepts_names_and_positions(make_mudata, model_kwargs, train_kwargs):
    mdata = _perturbed(make_mudata)
    held = ((mdata.obs["cell_type"] == "beta") & (mdata.obs["condition"] == "STIM")).to_numpy()
    model = _fit(mdata, model_kwargs, train_kwargs, train={"held_out": list(mdata.obs_names[held])})
    assert (mdata.obs["unitednet_split"].to_numpy()[held] == "test").all()
    model.train(held_out=np.flatnonzero(held), **train_kwargs)
    assert (mdata.obs["unitednet_split"].to_numpy()[held] == "test").all()
    model.train(held_out=pd.Series(held, index=mdata.obs_names), **train_kwargs)
    assert (mdata.obs["unitednet_split"].to_numpy() == "test").sum() == held.sum()
    with pytest.raises(KeyError, match="names cells that are not in the MuData"):
        model.train(held_out=["nope"], **train_kwargs)
    with pytest.raises(ValueError, match="one entry per cell"):
        model.train(held_out=held[:5], **train_kwargs)
    with pytest.raises(ValueError, match="No control cells are left"):
        model.train(held_out=(mdata.obs["condition"] == "CTRL").to_numpy(), **train_kwargs)
    with pytest.warns(UserWarning, match="No training cells under perturbations \\['STIM'\\]"):
        model.train(held_out=(mdata.obs["condition"] == "STIM").to_numpy(), **train_kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------------------------------
def test_predict_perturbation_on_unseen_perturbed_type(trained):
    model, held = trained
    mdata = model.adata
    gamma_ctrl = ((mdata.obs["cell_type"] == "gamma") & (mdata.obs["condition"] == "CTRL")).to_numpy()
    pred = model.predict_perturbation(target="STIM", indices=gamma_ctrl)
    assert isinstance(pred, ad.AnnData)
    assert pred.shape == (gamma_ctrl.sum(), 24) and pred.X.dtype == np.float32
    assert list(pred.obs_names) == list(mdata.obs_names[gamma_ctrl])
    assert list(pred.var_names) == list(mdata.mod["rna"].var_names)
    assert (pred.obs["condition"] == "STIM").all()
    assert pred.uns["unitednet"]["perturbation"] == {
        "source": "CTRL",
        "target": "STIM",
        "modality": "rna",
        "mode": "neighbours",
    }
    # learned from the other types only: the shifted genes go up by about 3, the others hardly move; with two
    # training types the neighbour weights are equal, so the change is the types' mean change
    change = pred.X.mean(0) - mdata.mod["rna"].X[gamma_ctrl].mean(0)
    assert 2.0 < change[SHIFTED_RNA].mean() < 4.0
    assert np.abs(change[6:]).mean() < 0.5
    assert np.isinf(float(model.module.neighbour_temperature[1]))
    x, obs, split = mdata.mod["rna"].X, mdata.obs, model.split_
    types = [
        x[(obs["cell_type"] == t).to_numpy() & (obs["condition"] == c).to_numpy() & (split == "train")].mean(0)
        for t in ("alpha", "beta")
        for c in ("CTRL", "STIM")
    ]
    np.testing.assert_allclose(change, ((types[1] - types[0]) + (types[3] - types[2])) / 2, atol=1e-4)
    calibrated = model.predict_perturbation(indices=gamma_ctrl, mode="calibrated")
    change = calibrated.X.mean(0) - mdata.mod["rna"].X[gamma_ctrl].mean(0)
    assert 2.0 < change[SHIFTED_RNA].mean() < 4.0
    # the uncalibrated decoded change points the same way: every shifted gene goes up, by more on average than the
    # others move either way (about twice as much on the CPUs the suite has run on; the size depends on the CPU)
    shifted = model.predict_perturbation(indices=gamma_ctrl, mode="shift")
    change = shifted.X.mean(0) - mdata.mod["rna"].X[gamma_ctrl].mean(0)
    assert (change[SHIFTED_RNA] > 0).all()
    assert change[SHIFTED_RNA].mean() > 1.5 * np.abs(change[6:]).mean()
    # defaults: source = control, target = the only perturbation, all control cells
    everything = model.predict_perturbation()
    assert everything.n_obs == int((mdata.obs["condition"] == "CTRL").sum())
    # "decode" gives the decoded counterfactual; a zero move gives back the measured profiles
    decoded = model.predict_perturbation(indices=gamma_ctrl, mode="decode")
    assert not np.allclose(decoded.X, pred.X)
    stim = (mdata.obs["condition"] == "STIM").to_numpy()
    for mode in ("neighbours", "shift", "calibrated"):
        same = model.predict_perturbation(source="STIM", target="STIM", indices=stim & ~held, mode=mode)
        np.testing.assert_allclose(same.X, mdata.mod["rna"].X[stim & ~held], atol=1e-5)
    # bernoulli target: probabilities
    atac = model.predict_perturbation(indices=gamma_ctrl, modality="atac")
    assert atac.shape == (gamma_ctrl.sum(), 32) and atac.X.min() >= 0 and atac.X.max() <= 1


def test_neighbours_mode_takes_the_response_of_similar_cell_types(model_kwargs, train_kwargs):
    """Two pairs of similar cell types respond on different genes; a held-out type takes its pair's response."""
    rng = np.random.default_rng(0)
    types = np.repeat(["a1", "a2", "b1", "b2"], 60)
    centres = {"a1": 0.0, "a2": 0.7, "b1": 6.0, "b2": 6.7}
    x = rng.normal(size=(len(types), 24)).astype(np.float32)
    x[:, 12:] += np.array([centres[t] for t in types], dtype=np.float32)[:, None]
    stim = rng.uniform(size=len(types)) < 0.5
    x[np.ix_(stim & np.isin(types, ["a1", "a2"]), np.arange(6))] += 3.0
    x[np.ix_(stim & np.isin(types, ["b1", "b2"]), np.arange(6, 12))] += 3.0
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(types), "condition": pd.Categorical(np.where(stim, "STIM", "CTRL"))},
        index=[f"c{i}" for i in range(len(types))],
    )
    rna = ad.AnnData(x, obs=obs.copy(), var=pd.DataFrame(index=[f"g{i}" for i in range(24)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData({"rna": rna})
    mdata.obs = obs.copy()
    held = stim & (types == "a2")
    model = _fit(mdata, model_kwargs, {**train_kwargs, "max_epochs": 15}, train={"held_out": held})
    assert float(model.module.neighbour_temperature[1]) < 1.0  # chosen by leave-one-type-out: the pairs differ
    cells = ~stim & (types == "a2")
    change = model.predict_perturbation(indices=cells).X.mean(0) - x[cells].mean(0)
    assert change[:6].mean() > 2.0 and np.abs(change[6:12]).mean() < 1.0
    # the label-balanced mean change of the training types (a1, b1, b2) would be 1 and 2
    mean_change = model.predict_perturbation(indices=cells, mode="calibrated").X.mean(0) - x[cells].mean(0)
    assert mean_change[:6].mean() < change[:6].mean()


def test_predict_perturbation_errors(trained, make_query):
    model, _ = trained
    mdata = model.adata
    with pytest.raises(KeyError, match="target='KO' is not a registered perturbation"):
        model.predict_perturbation(target="KO")
    with pytest.raises(ValueError, match="Some chosen cells are under \\['STIM'\\]"):
        model.predict_perturbation(indices=np.arange(mdata.n_obs))
    with pytest.raises(ValueError, match="mode must be 'neighbours', 'calibrated', 'shift' or 'decode'"):
        model.predict_perturbation(mode="add")
    with pytest.raises(KeyError, match="Unknown modality 'adt'"):
        model.predict_perturbation(modality="adt")
    query = make_query(mdata, modalities=("atac",))
    with pytest.raises(ValueError, match="use mode='decode'"):
        model.predict_perturbation(query, modality="rna")
    # a query without the perturbation column: every cell is taken to be under the source
    decoded = model.predict_perturbation(query, modality="rna", mode="decode")
    assert decoded.shape == (mdata.n_obs, 24)


def test_identify_perturbation(trained):
    model, held = trained
    mdata = model.adata
    labels = model.identify_perturbation()
    assert labels.shape == (mdata.n_obs,) and set(labels) <= {"CTRL", "STIM"}
    proba = model.identify_perturbation(return_proba=True)
    assert list(proba.columns) == ["CTRL", "STIM"]
    np.testing.assert_allclose(proba.to_numpy().sum(1), 1.0, rtol=1e-5)
    truth = mdata.obs["condition"].astype(str).to_numpy()
    # a +3 shift on six genes: most training cells are identified (chance: 0.5)
    assert (labels[~held] == truth[~held]).mean() > 0.75
    # the shared tasks still work on the perturbation model
    assert (model.predict_labels() == mdata.obs["cell_type"].astype(str).to_numpy()).mean() > 0.8


def test_save_load_round_trip(trained, tmp_path, make_mudata):
    model, held = trained
    model.save(tmp_path / "pert", overwrite=True)
    loaded = UnitedNetPerturbationModel.load(tmp_path / "pert", adata=_perturbed(make_mudata))
    assert loaded.perturbation_categories == model.perturbation_categories
    assert loaded.control_category == "CTRL"
    torch.testing.assert_close(loaded.module.perturbation_shift, model.module.perturbation_shift)
    torch.testing.assert_close(loaded.module.perturbation_weights, model.module.perturbation_weights)
    cells = ((loaded.adata.obs["cell_type"] == "gamma") & (loaded.adata.obs["condition"] == "CTRL")).to_numpy()
    for name, buffer in model.module.named_buffers():
        torch.testing.assert_close(dict(loaded.module.named_buffers())[name], buffer)
    for mode in ("neighbours", "calibrated", "shift", "decode"):
        np.testing.assert_allclose(
            loaded.predict_perturbation(indices=cells, mode=mode).X,
            model.predict_perturbation(indices=cells, mode=mode).X,
            atol=1e-6,
        )
    np.testing.assert_array_equal(loaded.identify_perturbation(), model.identify_perturbation())


# ---------------------------------------------------------------------------------------------------------------------
# two modalities: RNA + protein
# ---------------------------------------------------------------------------------------------------------------------
def test_rna_protein_with_perturbation(make_mudata, model_kwargs, train_kwargs):
    mdata = _perturbed(make_mudata, n_adt=8)
    held = ((mdata.obs["cell_type"] == "alpha") & (mdata.obs["condition"] == "STIM")).to_numpy()
    model = _fit(
        mdata,
        model_kwargs,
        train_kwargs,
        setup={"modalities": ["rna", "adt"]},
        train={"held_out": held, "max_epochs": 15},
    )
    assert model.modalities == ["rna", "adt"]
    assert model.history["contrastive_train"].to_numpy().max() > 0  # the contrastive part is active
    ctrl = ((mdata.obs["cell_type"] == "alpha") & (mdata.obs["condition"] == "CTRL")).to_numpy()
    prot = model.predict_perturbation(indices=ctrl, modality="adt")
    assert prot.shape == (ctrl.sum(), 8) and list(prot.var_names) == [f"prot{i}" for i in range(8)]
    change = prot.X.mean(0) - mdata.mod["adt"].X[ctrl].mean(0)
    assert 3.0 < change[SHIFTED_ADT].mean() < 5.0 and np.abs(change[3:]).mean() < 0.5
    rna = model.predict_perturbation(indices=ctrl, modality="rna")
    assert rna.shape == (ctrl.sum(), 24)
    # identification and cross-modal prediction from one modality only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protein_only = md.MuData({"adt": mdata.mod["adt"].copy()})
    assert model.identify_perturbation(protein_only).shape == (mdata.n_obs,)
    translated = model.predict_modality(source="rna", target="adt")
    assert translated.shape == (mdata.n_obs, 8)
    assert set(model.predict_labels()) <= {"alpha", "beta", "gamma"}
