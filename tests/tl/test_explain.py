"""SHAP relevance of unitednet.tl: additivity of the explained paths, the written keys, and stability scores."""

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

import unitednet as un
from unitednet.tl._explain import _background, _explainer, _GroupScore, _shap_values, _tensors, _Translation

GROUP_NAMES = ["alpha", "beta", "gamma"]
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
        assert (rel.to_numpy() >= 0).all() and (rel.to_numpy() > 0).any()
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
    assert params["background"] == "group_means"


def test_feature_relevance_is_mean_abs_shap_of_the_own_group(supervised, mdata):
    # groupby names the model's groups: every cell of a group is explained through its own label's logit;
    # the query holds only the beta cells, all of them explained (n_cells_per_group > group size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        query = mdata[(mdata.obs["cell_type"] == "beta").to_numpy()].copy()
    un.tl.feature_relevance(supervised, query, groupby="cell_type", n_cells_per_group=1000, check_additivity=False)
    rel = {m: query.mod[m].varm["unitednet_relevance"] for m in ("rna", "atac")}
    assert list(rel["rna"].columns) == ["beta"]
    base = _background(supervised, ["rna", "atac"], "group_means", 100, np.random.default_rng(0))
    explainer = _explainer("deep", _GroupScore(supervised, ["rna", "atac"], 1), base)
    cells = np.arange(query.n_obs)
    values = _shap_values(explainer, "deep", _tensors(supervised, query, ["rna", "atac"], cells), False)
    for m, v in zip(("rna", "atac"), values, strict=True):
        np.testing.assert_allclose(rel[m]["beta"].to_numpy(), np.abs(v[..., 0]).mean(0), rtol=1e-4, atol=1e-7)


def test_feature_relevance_coarser_groupby(supervised, mdata):
    coarse = {"alpha": "ab", "beta": "ab", "gamma": "g"}
    mdata.obs["coarse"] = mdata.obs["cell_type"].map(coarse).astype(str)
    un.tl.feature_relevance(supervised, groupby="coarse", n_top=3, **_fast())
    rel = mdata.mod["atac"].varm["unitednet_relevance"]
    assert list(rel.columns) == ["ab", "g"] and rel.shape == (32, 2)
    table = mdata.uns["unitednet"]["relevance"]
    assert set(table["group"]) == {"ab", "g"} and len(table) == 2 * 2 * 3
    assert mdata.uns["unitednet"]["relevance_params"]["groupby"] == "coarse"
    with pytest.raises(KeyError, match="groupby='nope' is not a column of mdata.obs"):
        un.tl.feature_relevance(supervised, groupby="nope")


def test_feature_relevance_gradient_method(supervised, mdata):
    un.tl.feature_relevance(supervised, groupby="cell_type", method="gradient", n_top=4, **_fast())
    rel = mdata.mod["rna"].varm["unitednet_relevance"]
    assert list(rel.columns) == GROUP_NAMES and rel.shape == (24, 3)
    assert np.isfinite(rel.to_numpy()).all() and (rel.to_numpy() >= 0).all() and (rel.to_numpy() > 0).any()
    assert mdata.uns["unitednet"]["relevance_params"]["method"] == "gradient"
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
    with pytest.raises(ValueError, match="background must be 'group_means' or 'sample'"):
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
