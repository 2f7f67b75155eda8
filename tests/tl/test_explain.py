"""SHAP relevance of unitednet.tl: additivity of the explained paths, the written keys, and stability scores."""

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

import unitednet as un
from unitednet.tl._explain import (
    _background,
    _Classification,
    _ClassScore,
    _explainer,
    _GroupScore,
    _rest_backgrounds,
    _shap_values,
    _tensors,
    _Translation,
)

GROUP_NAMES = ["alpha", "beta", "gamma"]
COARSE = {"alpha": "ab", "beta": "ab", "gamma": "g"}
TIDY = ["group", "modality", "feature", "relevance", "rank"]
CROSS = ["group", "target_feature", "source_feature", "relevance", "rank"]
# shap warns about modules it does not know (the standardiser, the fusion): linear maps it passes through correctly
pytestmark = pytest.mark.filterwarnings("ignore:unrecognized nn.Module:UserWarning")


@pytest.fixture(scope="module")
def _supervised_once(train_shared):
    return train_shared("supervised", model={"n_layers": 2})


@pytest.fixture
def supervised(_supervised_once, reuse_model):
    """A supervised model trained once for this module; what a test writes to its MuData is removed afterwards."""
    return reuse_model(_supervised_once)


@pytest.fixture
def mdata(supervised):
    """The shared model's registered MuData."""
    return supervised.adata


def _fast(**kwargs):
    """Few cells per group: the explanations stay cheap."""
    return {"n_cells_per_group": 8, **kwargs}


# ---------------------------------------------------------------------------------------------------------------------
# additivity of DeepExplainer on the explained paths
# ---------------------------------------------------------------------------------------------------------------------
def _assert_additive(values, fx, fb):
    """SHAP values summed over all input features == f(x) - E_background[f]."""
    expected = fx - fb.mean(0)
    assert np.abs(expected).max() > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("background", ["group_means", "sample"])
def test_group_score_shap_is_additive(supervised, mdata, background):
    model = supervised
    model.module.eval()
    modalities = model.modalities
    base = _background(model, modalities, background, 30, np.random.default_rng(0))
    assert len(base) == 2 and base[0].shape[1] == 24 and base[1].shape[1] == 32
    xs = _tensors(model, mdata, modalities, np.arange(0, 150, 10))
    for group in range(3):
        wrapper = _GroupScore(model, modalities, group)
        with torch.no_grad():
            fx = wrapper(*xs)[:, 0].numpy()
            fb = wrapper(*base)[:, 0].numpy()
            # the wrapper is the model's own group logit
            logits = model.module.group_logits(
                model.module.inference(dict(zip(modalities, xs, strict=True)))["z_fused"]
            )
        np.testing.assert_allclose(fx, logits[:, group].numpy(), rtol=1e-5, atol=1e-6)
        explainer = _explainer("deep", wrapper, base)
        values = _shap_values(explainer, "deep", xs, check_additivity=False)
        assert [v.shape for v in values] == [(15, 24, 1), (15, 32, 1)]
        total = sum(v[..., 0].sum(1) for v in values)
        _assert_additive(total, fx, fb)


def _log_sum_prob(proba: np.ndarray, members) -> np.ndarray:
    return np.log(proba[:, members].sum(1))


@pytest.mark.parametrize("background", ["rest", "group_means"])
@pytest.mark.parametrize("output", ["log_odds", "log_proba"])
def test_class_score_is_the_class_log_odds_or_log_proba_and_its_shap_is_additive(supervised, mdata, output, background):
    model = supervised
    model.module.eval()
    modalities = model.modalities
    xs = _tensors(model, mdata, modalities, np.arange(0, 150, 10))
    with torch.no_grad():
        proba = torch.softmax(_Classification(model, modalities).logits(*xs), 1).double().numpy()
    rest = _rest_backgrounds(model, modalities, COARSE, ["ab", "g"])
    for cls, members in (("ab", [0, 1]), ("g", [2])):
        base = (
            rest[cls]
            if background == "rest"
            else _background(model, modalities, "group_means", 0, np.random.default_rng(0))
        )
        wrapper = _ClassScore(model, modalities, members, output, shift=8.0)
        with torch.no_grad():
            fx = wrapper(*xs)[:, 0].double().numpy()
            fb = wrapper(*base)[:, 0].double().numpy()
        # the score is the class log-probability (minus that of the other groups for the log-odds)
        others = [g for g in range(3) if g not in members]
        expected = _log_sum_prob(proba, members)
        if output == "log_odds":
            expected = expected - _log_sum_prob(proba, others)
        np.testing.assert_allclose(fx, expected, rtol=1e-4, atol=1e-4)
        # the shift is a constant that cancels
        with torch.no_grad():
            unshifted = _ClassScore(model, modalities, members, output, shift=0.0)(*xs)[:, 0].double().numpy()
        np.testing.assert_allclose(fx, unshifted, rtol=1e-5, atol=1e-5)
        values = _shap_values(_explainer("deep", wrapper, base), "deep", xs, check_additivity=False)
        _assert_additive(sum(v[..., 0].sum(1) for v in values), fx, fb)


def test_class_score_shap_stays_additive_when_the_sums_of_exponentials_are_tiny(supervised, mdata):
    # a large shift makes every exp(logit - shift) tiny (about 1e-9 here): the inputs of the logarithm then differ
    # by far less than 1e-6 between a cell and its references, where a rule with an absolute threshold would switch
    # to the derivative and lose additivity
    model = supervised
    model.module.eval()
    modalities = model.modalities
    xs = _tensors(model, mdata, modalities, np.arange(0, 150, 10))
    base = _rest_backgrounds(model, modalities, COARSE, ["ab"])["ab"]
    with torch.no_grad():
        top = float(_Classification(model, modalities).logits(*xs).max())
    wrapper = _ClassScore(model, modalities, [0, 1], "log_proba", shift=top + 20.0)
    with torch.no_grad():
        fx = wrapper(*xs)[:, 0].double().numpy()
        fb = wrapper(*base)[:, 0].double().numpy()
        sums = wrapper.pool(wrapper.exp(wrapper.logits(*xs) - wrapper.shift))
    assert float(sums.max()) < 1e-8
    values = _shap_values(_explainer("deep", wrapper, base), "deep", xs, check_additivity=False)
    _assert_additive(sum(v[..., 0].sum(1) for v in values), fx, fb)


def test_class_score_rejects_empty_classes(supervised):
    with pytest.raises(ValueError, match="at least one member group and one group in its denominator"):
        _ClassScore(supervised, supervised.modalities, [0, 1, 2], "log_odds", shift=0.0)
    with pytest.raises(ValueError, match="output must be 'log_odds' or 'log_proba'"):
        _ClassScore(supervised, supervised.modalities, [0], "logit", shift=0.0)


def test_rest_background_is_one_mean_per_other_class(supervised, mdata):
    model = supervised
    train = np.flatnonzero(model.split_ == "train")
    # the training cells count under their label (supervised model)
    labels = mdata.obs["cell_type"].astype(str).to_numpy()[train]
    classes = np.array([COARSE[g] for g in labels])
    rest = _rest_backgrounds(model, ["rna", "atac"], COARSE, ["ab", "g"])
    assert set(rest) == {"ab", "g"}
    rna = np.asarray(mdata.mod["rna"].X, dtype=np.float64)
    atac = mdata.mod["atac"].X.toarray().astype(np.float64)
    for cls, other in (("ab", "g"), ("g", "ab")):
        # one row per other class (not one per group or per cell): here a single row, the other class's mean
        assert [b.shape for b in rest[cls]] == [(1, 24), (1, 32)]
        cells = train[classes == other]
        np.testing.assert_allclose(rest[cls][0][0].numpy(), rna[cells].mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rest[cls][1][0].numpy(), atac[cells].mean(0), rtol=1e-5, atol=1e-6)
    # with the model's own groups as classes each group is contrasted with the two others, equally weighted
    identity = {g: g for g in GROUP_NAMES}
    fine = _rest_backgrounds(model, ["rna"], identity, GROUP_NAMES)
    for g in GROUP_NAMES:
        expected = [rna[train[labels == o]].mean(0) for o in GROUP_NAMES if o != g]
        np.testing.assert_allclose(fine[g][0].numpy(), np.stack(expected), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs training cells of a group other than 'all'"):
        _rest_backgrounds(model, ["rna"], dict.fromkeys(GROUP_NAMES, "all"), ["all"])


@pytest.mark.parametrize(
    ("source", "target"),
    [("atac", "rna"), ("rna", "atac")],
    ids=["gaussian-target", "bernoulli-target"],
)
def test_translation_shap_is_additive(supervised, mdata, source, target):
    model = supervised
    model.module.eval()
    features = np.array([0, 3, 7, 11])
    wrapper = _Translation(model, source, target, features)
    assert (wrapper.sigmoid is not None) == (model.likelihoods[target] == "bernoulli")
    base = _background(model, [source], "group_means", 30, np.random.default_rng(0))
    x = _tensors(model, mdata, [source], np.arange(0, 150, 10))
    with torch.no_grad():
        fx = wrapper(x[0]).numpy()
        fb = wrapper(base[0]).numpy()
    # the wrapper's output is the model's prediction in the target's units
    np.testing.assert_allclose(
        fx, model.predict_modality(source=source, target=target)[::10][:, features], rtol=1e-5, atol=1e-5
    )
    explainer = _explainer("deep", wrapper, base)
    values = _shap_values(explainer, "deep", x, check_additivity=False)[0]
    assert values.shape == (15, model.n_features(source), 4)
    _assert_additive(values.sum(1), fx, fb)


def test_explainer_rejects_unknown_method(supervised):
    wrapper = _Translation(supervised, "rna", "atac", np.array([0]))
    with pytest.raises(ValueError, match="method must be 'deep' or 'gradient', got 'kernel'"):
        _explainer("kernel", wrapper, [torch.zeros(2, 24)])


# ---------------------------------------------------------------------------------------------------------------------
# feature_relevance
# ---------------------------------------------------------------------------------------------------------------------
def test_feature_relevance_writes_varm_table_and_params(supervised, mdata):
    assert un.tl.feature_relevance(supervised, n_top=5, **_fast()) is None
    predicted = sorted(set(supervised.predict_labels()))
    for m, n in (("rna", 24), ("atac", 32)):
        rel = mdata.mod[m].varm["unitednet_relevance"]
        assert isinstance(rel, pd.DataFrame)
        assert rel.shape == (n, len(predicted))
        assert rel.index.equals(mdata.mod[m].var_names)
        assert list(rel.columns) == predicted and set(rel.columns) <= set(GROUP_NAMES)
        assert np.isfinite(rel.to_numpy()).all() and (rel.to_numpy() != 0).any()
    table = mdata.uns["unitednet"]["relevance"]
    assert list(table.columns) == TIDY
    counts = table.groupby(["group", "modality"]).size()
    assert len(counts) == 2 * len(predicted) and (counts == 5).all()
    for (group, m), sub in table.groupby(["group", "modality"]):
        assert list(sub["rank"]) == [1, 2, 3, 4, 5]
        rel = mdata.mod[m].varm["unitednet_relevance"][group]
        assert list(sub["feature"]) == list(rel.sort_values(ascending=False).index[:5])
        np.testing.assert_allclose(sub["relevance"].to_numpy(), rel.loc[sub["feature"]].to_numpy())
    params = mdata.uns["unitednet"]["relevance_params"]
    assert params["groupby"] == "predicted" and params["method"] == "deep"
    assert params["modalities"] == ["rna", "atac"] and params["n_cells_per_group"] == 8
    # defaults: the log-odds of the cell's group against the others, with a one-vs-rest reference
    assert params["output"] == "log_odds" and params["background"] == "rest"
    assert params["explained_output"].startswith("log P(group) - log P(not group)")
    assert params["aggregate"] == "mean"  # the signed mean of the SHAP values
    assert params["class_mapping"] == "identity"
    assert params["class_groups"] == GROUP_NAMES and params["class_names"] == GROUP_NAMES


def _mean_shap(model, mdata, wrapper, base, cells, absolute=False):
    values = _shap_values(
        _explainer("deep", wrapper, base), "deep", _tensors(model, mdata, ["rna", "atac"], cells), False
    )
    return [(np.abs(v[..., 0]) if absolute else v[..., 0]).mean(0) for v in values]


def _beta_cells(mdata):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return mdata[(mdata.obs["cell_type"] == "beta").to_numpy()].copy()


def test_feature_relevance_is_mean_abs_shap_of_the_own_group_logit(supervised, mdata):
    # output="logit": every cell of a group is explained through its own label's logit (groupby names the model's
    # groups); the query holds only the beta cells, all of them explained (n_cells_per_group > group size)
    query = _beta_cells(mdata)
    un.tl.feature_relevance(
        supervised,
        query,
        groupby="cell_type",
        output="logit",
        background="group_means",
        aggregate="mean_abs",
        n_cells_per_group=1000,
        check_additivity=False,
    )
    rel = {m: query.mod[m].varm["unitednet_relevance"] for m in ("rna", "atac")}
    assert list(rel["rna"].columns) == ["beta"]
    base = _background(supervised, ["rna", "atac"], "group_means", 100, np.random.default_rng(0))
    wrapper = _GroupScore(supervised, ["rna", "atac"], 1)
    expected = _mean_shap(supervised, query, wrapper, base, np.arange(query.n_obs), absolute=True)
    for m, e in zip(("rna", "atac"), expected, strict=True):
        np.testing.assert_allclose(rel[m]["beta"].to_numpy(), e, rtol=1e-4, atol=1e-7)
    assert query.uns["unitednet"]["relevance_params"]["explained_output"] == "logit of the cell's own group"


def test_feature_relevance_default_is_mean_shap_of_the_log_odds_against_the_rest(supervised, mdata):
    query = _beta_cells(mdata)
    un.tl.feature_relevance(supervised, query, groupby="cell_type", n_cells_per_group=1000, check_additivity=False)
    rest = _rest_backgrounds(supervised, ["rna", "atac"], {g: g for g in GROUP_NAMES}, ["beta"])["beta"]
    assert rest[0].shape[0] == 2  # the alpha and gamma means
    wrapper = _ClassScore(supervised, ["rna", "atac"], [1], "log_odds", shift=0.0)
    expected = _mean_shap(supervised, query, wrapper, rest, np.arange(query.n_obs))
    for m, e in zip(("rna", "atac"), expected, strict=True):
        actual = query.mod[m].varm["unitednet_relevance"]["beta"].to_numpy()
        np.testing.assert_allclose(actual, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())


def test_feature_relevance_signed_mean_adds_up_to_the_mean_evidence_gap(supervised, mdata):
    # aggregate="mean": the signed mean SHAP value of each feature over the group's cells; summed over the features
    # of all modalities it is the group's mean log-odds minus the mean over its references (DeepLIFT's additivity)
    query = _beta_cells(mdata)
    kwargs = {"groupby": "cell_type", "n_cells_per_group": 1000, "check_additivity": False}
    un.tl.feature_relevance(supervised, query, aggregate="mean", **kwargs)
    signed = {m: query.mod[m].varm["unitednet_relevance"]["beta"].to_numpy() for m in ("rna", "atac")}
    rest = _rest_backgrounds(supervised, ["rna", "atac"], {g: g for g in GROUP_NAMES}, ["beta"])["beta"]
    wrapper = _ClassScore(supervised, ["rna", "atac"], [1], "log_odds", shift=0.0)
    xs = _tensors(supervised, query, ["rna", "atac"], np.arange(query.n_obs))
    values = _shap_values(_explainer("deep", wrapper, rest), "deep", xs, False)
    for m, v in zip(("rna", "atac"), values, strict=True):
        np.testing.assert_allclose(signed[m], v[..., 0].mean(0), rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        gap = float(wrapper(*xs)[:, 0].double().mean() - wrapper(*rest)[:, 0].double().mean())
    assert abs(gap) > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(sum(v.sum() for v in signed.values()), gap, rtol=1e-3, atol=1e-5)
    # features can push against the group: the signed relevance has both signs, and the tidy table ranks the most
    # positive first
    assert (signed["rna"] < 0).any() and (signed["rna"] > 0).any()
    table = query.uns["unitednet"]["relevance"]
    top = table[(table["group"] == "beta") & (table["modality"] == "rna")]
    assert top["relevance"].iloc[0] == signed["rna"].max()
    params = query.uns["unitednet"]["relevance_params"]
    assert params["aggregate"] == "mean" and params["relevance"].startswith("mean (signed) SHAP value")
    # the absolute summary is never below the signed one, and equals it where every cell's value has one sign
    un.tl.feature_relevance(supervised, query, aggregate="mean_abs", key_added="abs", **kwargs)
    absolute = query.mod["rna"].varm["abs"]["beta"].to_numpy()
    assert (absolute >= np.abs(signed["rna"]) - 1e-7).all()
    assert query.uns["unitednet"]["abs_params"]["aggregate"] == "mean_abs"


def test_feature_relevance_rejects_an_unknown_aggregate(supervised):
    with pytest.raises(ValueError, match=r"aggregate must be one of \['mean_abs', 'mean'\], got 'median'"):
        un.tl.feature_relevance(supervised, aggregate="median")


def test_feature_relevance_of_classes(supervised, mdata):
    mdata.obs["coarse"] = mdata.obs["cell_type"].map(COARSE).astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        query = mdata[::4].copy()  # every cell of the query is explained (n_cells_per_group > class size)
    kwargs = {"groupby": "coarse", "n_cells_per_group": 1000, "check_additivity": False}
    un.tl.feature_relevance(supervised, query, n_top=3, **kwargs)
    rel = {m: query.mod[m].varm["unitednet_relevance"].copy() for m in ("rna", "atac")}
    assert list(rel["atac"].columns) == ["ab", "g"] and rel["atac"].shape == (32, 2)
    table = query.uns["unitednet"]["relevance"]
    assert set(table["group"]) == {"ab", "g"} and len(table) == 2 * 2 * 3
    params = query.uns["unitednet"]["relevance_params"]
    assert params["groupby"] == "coarse" and params["class_mapping"] == "majority"
    assert dict(zip(params["class_groups"], params["class_names"], strict=True)) == COARSE
    # each class is explained through its own log-odds (alpha + beta against gamma, and back) with the other class's
    # mean as the reference, over all of its cells
    rest = _rest_backgrounds(supervised, ["rna", "atac"], COARSE, ["ab", "g"])
    for cls, members in (("ab", [0, 1]), ("g", [2])):
        cells = np.flatnonzero((query.obs["coarse"] == cls).to_numpy())
        wrapper = _ClassScore(supervised, ["rna", "atac"], members, "log_odds", shift=0.0)
        expected = _mean_shap(supervised, query, wrapper, rest[cls], cells)
        for m, e in zip(("rna", "atac"), expected, strict=True):
            # signed means cancel: float32 rounding is compared to the largest value
            np.testing.assert_allclose(rel[m][cls].to_numpy(), e, rtol=1e-4, atol=1e-4 * np.abs(e).max())
    # the same mapping given explicitly gives the same relevance
    un.tl.feature_relevance(supervised, query, classes=COARSE, key_added="given", **kwargs)
    pd.testing.assert_frame_equal(query.mod["rna"].varm["given"], rel["rna"], rtol=1e-6)
    assert query.uns["unitednet"]["given_params"]["class_mapping"] == "given"
    # without groupby the cells are grouped by the class of their predicted group
    un.tl.feature_relevance(supervised, classes=COARSE, key_added="predicted", **_fast())
    assert list(mdata.mod["rna"].varm["predicted"].columns) == ["ab", "g"]
    assert mdata.uns["unitednet"]["predicted_params"]["groupby"] == "predicted class"
    with pytest.raises(KeyError, match="groupby='nope' is not a column of mdata.obs"):
        un.tl.feature_relevance(supervised, groupby="nope")


def test_feature_relevance_class_errors(supervised, mdata):
    mdata.obs["coarse"] = mdata.obs["cell_type"].map(COARSE).astype(str)
    with pytest.raises(KeyError, match=r"classes maps \['delta'\], which are not groups of the model"):
        un.tl.feature_relevance(supervised, classes={**COARSE, "delta": "d"})
    with pytest.raises(ValueError, match=r"classes must map every group of the model to a class; 1 of 3 are missing"):
        un.tl.feature_relevance(supervised, classes={"alpha": "ab", "beta": "ab"})
    with pytest.raises(TypeError, match="classes must map the model's groups to classes"):
        un.tl.feature_relevance(supervised, classes=["ab", "ab", "g"])
    with pytest.raises(ValueError, match=r"mdata.obs\['cell_type'\] has values \['alpha', 'beta', 'gamma'\] that are"):
        un.tl.feature_relevance(supervised, groupby="cell_type", classes=COARSE)
    with pytest.raises(ValueError, match="output must be one of"):
        un.tl.feature_relevance(supervised, output="proba")
    # one class holding every group: no log-odds, and no other class to contrast with
    mdata.obs["one"] = "all"
    with pytest.raises(ValueError, match="'all' holds all of the model's groups"):
        un.tl.feature_relevance(supervised, groupby="one")
    with pytest.raises(ValueError, match="needs training cells of a group other than 'all'"):
        un.tl.feature_relevance(supervised, groupby="one", output="logit")
    # a value of groupby that holds none of the model's groups (each goes to the value most of its cells have)
    odd = mdata.obs["coarse"].to_numpy().copy()
    odd[np.flatnonzero(odd == "g")[:3]] = "stray"
    mdata.obs["odd"] = odd
    with pytest.raises(ValueError, match=r"Explained groups \['stray'\] of groupby='odd' hold none of the model"):
        un.tl.feature_relevance(supervised, groupby="odd")
    # the own-group logit with a shared reference needs no classes
    un.tl.feature_relevance(supervised, groupby="odd", output="logit", background="group_means", **_fast())
    assert list(mdata.mod["rna"].varm["unitednet_relevance"].columns) == ["ab", "g", "stray"]


def test_feature_relevance_gradient_method(supervised, mdata):
    kwargs = {"groupby": "cell_type", "method": "gradient", "n_top": 4, "n_cells_per_group": 3}
    un.tl.feature_relevance(supervised, **kwargs)
    rel = mdata.mod["rna"].varm["unitednet_relevance"].copy()
    assert list(rel.columns) == GROUP_NAMES and rel.shape == (24, 3)
    assert np.isfinite(rel.to_numpy()).all() and (rel.to_numpy() != 0).any()
    assert mdata.uns["unitednet"]["relevance_params"]["method"] == "gradient"
    # expected gradients sample reference cells and path points: random_state makes them reproducible
    un.tl.feature_relevance(supervised, **kwargs)
    pd.testing.assert_frame_equal(mdata.mod["rna"].varm["unitednet_relevance"], rel)
    un.tl.feature_relevance(supervised, **kwargs, random_state=1)
    assert not np.allclose(mdata.mod["rna"].varm["unitednet_relevance"].to_numpy(), rel.to_numpy())
    un.tl.feature_relevance(supervised, output="logit", **kwargs)
    assert np.isfinite(mdata.mod["rna"].varm["unitednet_relevance"].to_numpy()).all()
    with pytest.raises(ValueError, match="method must be 'deep' or 'gradient'"):
        un.tl.feature_relevance(supervised, method="lime", **_fast())


def test_feature_relevance_modality_subset_key_added_and_sample_background(supervised, mdata):
    un.tl.feature_relevance(
        supervised, modalities=["atac"], key_added="atac_rel", background="sample", n_background=20, **_fast()
    )
    assert "atac_rel" in mdata.mod["atac"].varm
    assert "atac_rel" not in mdata.mod["rna"].varm and "unitednet_relevance" not in mdata.mod["rna"].varm
    uns = mdata.uns["unitednet"]
    assert set(uns) == {"atac_rel", "atac_rel_params"}
    assert set(uns["atac_rel"]["modality"]) == {"atac"}
    assert uns["atac_rel_params"]["modalities"] == ["atac"] and uns["atac_rel_params"]["background"] == "sample"
    with pytest.raises(KeyError, match=r"Modalities \['adt'\] are not in the MuData"):
        un.tl.feature_relevance(supervised, modalities=["adt"])
    with pytest.raises(ValueError, match=r"background must be one of \['rest', 'group_means', 'sample'\], got 'zeros'"):
        un.tl.feature_relevance(supervised, background="zeros", **_fast())


def test_feature_relevance_on_rna_only_query(supervised, mdata, make_query):
    query = make_query(mdata, ("rna",))
    un.tl.feature_relevance(supervised, query, n_top=2, **_fast())
    assert query.mod["rna"].varm["unitednet_relevance"].shape[0] == 24
    assert set(query.uns["unitednet"]["relevance"]["modality"]) == {"rna"}
    assert "unitednet" not in mdata.uns  # the registered MuData is not touched


def test_feature_relevance_copy(supervised, mdata, snapshot, assert_unchanged):
    snap = snapshot(mdata)
    result = un.tl.feature_relevance(supervised, copy=True, **_fast())
    assert isinstance(result, md.MuData) and result is not mdata
    assert "unitednet_relevance" in result.mod["rna"].varm and "relevance" in result.uns["unitednet"]
    assert all("unitednet_relevance" not in mdata.mod[m].varm for m in ("rna", "atac"))
    assert_unchanged(mdata, snap)


def test_feature_relevance_needs_group_heads(make_mudata, fit):
    model = fit(make_mudata(), "translation", setup={})
    with pytest.raises(ValueError, match="n_groups=0"):
        un.tl.feature_relevance(model)


# ---------------------------------------------------------------------------------------------------------------------
# cross_modal_relevance
# ---------------------------------------------------------------------------------------------------------------------
def test_cross_modal_relevance_default_targets(supervised, mdata):
    un.tl.feature_relevance(supervised, groupby="cell_type", modalities=["rna"], **_fast())
    un.tl.cross_modal_relevance(
        supervised, source="atac", target="rna", groupby="cell_type", n_target_features=3, top_k=4, **_fast()
    )
    table = mdata.uns["unitednet"]["cross_modal_relevance"]["atac->rna"]
    assert list(table.columns) == CROSS
    assert len(table) == 3 * 3 * 4  # groups x target features x top_k
    counts = table.groupby(["group", "target_feature"]).size()
    assert (counts == 4).all() and len(counts) == 9
    rel = mdata.mod["rna"].varm["unitednet_relevance"]
    for group, sub in table.groupby("group"):
        # each group's target features are its most relevant rna features
        assert set(sub["target_feature"]) == set(rel[group].sort_values(ascending=False).index[:3])
    assert set(table["source_feature"]) <= set(mdata.mod["atac"].var_names)
    for _, sub in table.groupby(["group", "target_feature"]):
        assert list(sub["rank"]) == [1, 2, 3, 4]
        assert (np.diff(sub["relevance"].to_numpy()) <= 0).all() and (sub["relevance"] >= 0).all()
        assert sub["source_feature"].is_unique


def test_cross_modal_relevance_needs_group_relevance(supervised, mdata):
    with pytest.raises(KeyError, match=r"varm\['unitednet_relevance'\].*unitednet.tl.feature_relevance"):
        un.tl.cross_modal_relevance(supervised, source="atac", target="rna")
    # relevance computed with other groups than those of the cross-modal run
    un.tl.feature_relevance(supervised, groupby="cell_type", modalities=["rna"], **_fast())
    mdata.obs["coarse"] = np.where(mdata.obs["cell_type"] == "gamma", "g", "ab")
    with pytest.raises(KeyError, match="has no groups"):
        un.tl.cross_modal_relevance(supervised, source="atac", target="rna", groupby="coarse")


def test_cross_modal_relevance_explicit_targets_and_chunks(supervised, mdata):
    kwargs = {"source": "rna", "target": "atac", "target_features": ["peak3", "peak0"], "top_k": 5, **_fast()}
    un.tl.cross_modal_relevance(supervised, chunk_size=3, **kwargs)
    first = mdata.uns["unitednet"]["cross_modal_relevance"]["rna->atac"].copy()
    groups = sorted(set(supervised.predict_labels()))
    assert sorted(set(first["group"])) == groups
    assert len(first) == len(groups) * 2 * 5
    for _, sub in first.groupby("group"):
        assert list(dict.fromkeys(sub["target_feature"])) == ["peak3", "peak0"]
    un.tl.cross_modal_relevance(supervised, chunk_size=100, **kwargs)
    second = mdata.uns["unitednet"]["cross_modal_relevance"]["rna->atac"]
    pd.testing.assert_frame_equal(first, second, rtol=1e-5, atol=1e-8)


def test_cross_modal_relevance_errors(supervised):
    with pytest.raises(KeyError, match=r"target_features \['peak99'\] are not features of the model's 'atac'"):
        un.tl.cross_modal_relevance(supervised, source="rna", target="atac", target_features=["peak0", "peak99"])
    with pytest.raises(ValueError, match="source and target must differ"):
        un.tl.cross_modal_relevance(supervised, source="rna", target="rna", target_features=["gene0"])
    with pytest.raises(KeyError, match="Unknown modality 'adt'"):
        un.tl.cross_modal_relevance(supervised, source="adt", target="rna", target_features=["gene0"])


def test_cross_modal_relevance_copy_and_gradient(supervised, mdata, snapshot, assert_unchanged):
    snap = snapshot(mdata)
    result = un.tl.cross_modal_relevance(
        supervised,
        source="atac",
        target="rna",
        target_features=["gene1"],
        top_k=3,
        method="gradient",
        copy=True,
        **_fast(),
    )
    table = result.uns["unitednet"]["cross_modal_relevance"]["atac->rna"]
    assert set(table["target_feature"]) == {"gene1"} and (table["relevance"] >= 0).all()
    assert_unchanged(mdata, snap)


@pytest.mark.parametrize("labels", [False, True], ids=["no-heads", "untrained-heads"])
def test_cross_modal_relevance_of_a_translation_model(make_mudata, fit, labels):
    setup = {"labels_key": "cell_type"} if labels else {}
    model = fit(make_mudata(), "translation", setup=setup)
    mdata = model.adata
    un.tl.cross_modal_relevance(model, source="rna", target="atac", target_features=["peak1"], top_k=3, **_fast())
    table = mdata.uns["unitednet"]["cross_modal_relevance"]["rna->atac"]
    assert set(table["group"]) == {"all"} and len(table) == 3
    un.tl.cross_modal_relevance(
        model, source="atac", target="rna", groupby="cell_type", target_features=["gene2"], top_k=2, **_fast()
    )
    table = mdata.uns["unitednet"]["cross_modal_relevance"]["atac->rna"]
    assert sorted(set(table["group"])) == GROUP_NAMES and len(table) == 3 * 2


def test_relevance_round_trips_through_h5mu(supervised, mdata, tmp_path):
    un.tl.feature_relevance(supervised, n_top=3, **_fast())
    un.tl.cross_modal_relevance(supervised, source="atac", target="rna", n_target_features=2, top_k=2, **_fast())
    mdata.write_h5mu(tmp_path / "relevance.h5mu")
    back = md.read_h5mu(tmp_path / "relevance.h5mu")
    for m in ("rna", "atac"):
        pd.testing.assert_frame_equal(
            pd.DataFrame(back.mod[m].varm["unitednet_relevance"]), mdata.mod[m].varm["unitednet_relevance"]
        )
    uns, before = back.uns["unitednet"], mdata.uns["unitednet"]
    pd.testing.assert_frame_equal(uns["relevance"], before["relevance"], check_dtype=False)
    pd.testing.assert_frame_equal(
        uns["cross_modal_relevance"]["atac->rna"], before["cross_modal_relevance"]["atac->rna"], check_dtype=False
    )
    assert uns["relevance_params"]["method"] == "deep"
    assert list(uns["relevance_params"]["modalities"]) == ["rna", "atac"]
    # the plots read the round-tripped results
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = str(uns["relevance"]["group"].iloc[0])
    un.pl.relevance(back, "rna", n_top=2)
    un.pl.cross_modal_relevance(back, "atac", "rna", group)
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------------------
# relevance_stability
# ---------------------------------------------------------------------------------------------------------------------
def _relevance(tops: dict[str, list[str]], features=("f0", "f1", "f2", "f3", "f4", "f5")) -> pd.DataFrame:
    """features x groups with the listed features of each group on top (in that order)."""
    df = pd.DataFrame(0.0, index=list(features), columns=list(tops))
    for group, top in tops.items():
        for rank, feature in enumerate(top):
            df.loc[feature, group] = 10.0 - rank
    return df


def test_relevance_stability_identical_and_disjoint():
    a = _relevance({"x": ["f0", "f1"], "y": ["f2", "f3"]})
    same = un.tl.relevance_stability([a, a.copy()], top_k=2)
    assert list(same.index) == ["x", "y"] and same.index.name == "group"
    assert list(same.columns) == ["mean_jaccard", "min_jaccard", "max_jaccard", "n_pairs"]
    assert (same[["mean_jaccard", "min_jaccard", "max_jaccard"]] == 1.0).all().all()
    assert (same["n_pairs"] == 1).all()
    b = _relevance({"x": ["f2", "f3"], "y": ["f0", "f1"]})
    disjoint = un.tl.relevance_stability([a, b], top_k=2)
    assert (disjoint[["mean_jaccard", "min_jaccard", "max_jaccard"]] == 0.0).all().all()


def test_relevance_stability_hand_computed():
    a = _relevance({"x": ["f0", "f1", "f2"], "y": ["f0", "f1", "f2"]})
    b = _relevance({"x": ["f0", "f1", "f3"], "y": ["f0", "f1", "f2"]})
    c = _relevance({"x": ["f3", "f4", "f5"], "z": ["f0"]})  # "y" and "z" are not shared by all three
    result = un.tl.relevance_stability([a, b, c], top_k=3)
    assert list(result.index) == ["x"]
    # top-3 sets: {0,1,2}, {0,1,3}, {3,4,5}; Jaccard a-b = 2/4, a-c = 0/6, b-c = 1/5
    row = result.loc["x"]
    assert row["mean_jaccard"] == pytest.approx((0.5 + 0.0 + 0.2) / 3)
    assert row["min_jaccard"] == 0.0 and row["max_jaccard"] == pytest.approx(0.5)
    assert row["n_pairs"] == 3
    # top_k = 2: {0,1} in a and b, {3,4} in c
    two = un.tl.relevance_stability([a, b, c], top_k=2).loc["x"]
    assert two["mean_jaccard"] == pytest.approx(1 / 3) and two["max_jaccard"] == 1.0


def test_relevance_stability_errors():
    a = _relevance({"x": ["f0"]})
    with pytest.raises(ValueError, match="at least two relevance matrices"):
        un.tl.relevance_stability([a])
    with pytest.raises(ValueError, match="at least two relevance matrices"):
        un.tl.relevance_stability([])
    with pytest.raises(ValueError, match="share no group columns"):
        un.tl.relevance_stability([a, _relevance({"y": ["f0"]})])
