"""Plots of unitednet.pl: they draw what unitednet.tl wrote and explain what is missing."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import unitednet as un


@pytest.fixture(autouse=True)
def _agg(mpl_agg):
    """Every test draws with Agg and closes its figures."""
    return mpl_agg


def _ticks(labels) -> list[str]:
    return [t.get_text() for t in labels]


# ---------------------------------------------------------------------------------------------------------------------
# embedding
# ---------------------------------------------------------------------------------------------------------------------
def test_embedding_colors_by_obs_columns(mdata):
    coords = np.random.default_rng(0).normal(size=(mdata.n_obs, 2))
    mdata.obsm["X_unitednet_umap"] = coords
    ax = un.pl.embedding(mdata, color="cell_type", show=False)
    assert isinstance(ax, Axes) and ax.get_title() == "cell_type"
    # scanpy draws the cells at the stored coordinates
    offsets = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert offsets.shape == (mdata.n_obs, 2)
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(coords[:, 0]))
    axes = un.pl.embedding(mdata, color=["cell_type", "batch"], show=False)
    assert [a.get_title() for a in axes] == ["cell_type", "batch"]
    fig = un.pl.embedding(mdata, color=["cell_type"], show=False, return_fig=True)
    assert isinstance(fig, Figure)
    # another basis, first two columns of a wider representation
    mdata.obsm["X_pca_like"] = np.random.default_rng(1).normal(size=(mdata.n_obs, 5))
    assert isinstance(un.pl.embedding(mdata, basis="X_pca_like", color="score", show=False), Axes)
    assert mdata.obsm["X_pca_like"].shape == (mdata.n_obs, 5)  # not modified


def test_embedding_missing_inputs(mdata):
    with pytest.raises(KeyError, match=r"no 'X_unitednet_umap'.*unitednet.tl.umap\(mdata\)"):
        un.pl.embedding(mdata, color="cell_type")
    mdata.obsm["X_unitednet_umap"] = np.zeros((mdata.n_obs, 2))
    with pytest.raises(KeyError, match=r"Columns \['unitednet_group'\] are not in mdata.obs"):
        un.pl.embedding(mdata, color=["cell_type", "unitednet_group"])


# ---------------------------------------------------------------------------------------------------------------------
# history
# ---------------------------------------------------------------------------------------------------------------------
def test_history_one_panel_per_term(mdata, fit):
    model = fit(mdata, "supervised")
    fig = un.pl.history(model)
    assert isinstance(fig, Figure)
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    expected = sorted({k.rsplit("_", 1)[0] for k in model.history if k.endswith(("_train", "_validation"))})
    assert titles == expected
    assert {"classification", "reconstruction", "translation", "contrastive"} <= set(titles)

    fig = un.pl.history(model, terms=["translation", "classification"])
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["translation", "classification"]
    lines = {line.get_label(): line for line in axes[0].get_lines()}
    assert set(lines) == {"train", "validation"}
    np.testing.assert_allclose(
        np.asarray(lines["train"].get_ydata(), dtype=float),
        model.history["translation_train"].iloc[:, 0].to_numpy(dtype=float),
    )
    assert axes[0].get_xlabel() == "epoch"

    with pytest.raises(KeyError, match=r"No logged loss terms \['ddc'\]; logged: \["):
        un.pl.history(model, terms=["ddc"])


def test_history_of_an_untrained_model(mdata, model_kwargs):
    un.UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = un.UnitedNetModel(mdata, **model_kwargs)
    with pytest.raises(KeyError, match=r"no training history; train it first"):
        un.pl.history(model)


# ---------------------------------------------------------------------------------------------------------------------
# cross_modal_matrix
# ---------------------------------------------------------------------------------------------------------------------
def _scores() -> dict:
    r2 = pd.DataFrame(
        [[np.nan, 0.25, 0.5], [0.75, np.nan, -0.5], [0.1, 0.2, np.nan]],
        index=pd.Index(["rna", "atac", "adt"], name="target"),
        columns=pd.Index(["rna", "atac", "adt"], name="source"),
    )
    return {"r2": r2, "pearson": r2.abs()}


def test_cross_modal_matrix_from_metrics_dict():
    ax = un.pl.cross_modal_matrix(_scores())
    assert _ticks(ax.get_xticklabels()) == ["rna", "atac", "adt"]
    assert _ticks(ax.get_yticklabels()) == ["rna", "atac", "adt"]
    assert ax.get_xlabel() == "source" and ax.get_ylabel() == "target"
    # one annotation per finite cell, NaN diagonal left blank
    assert sorted(t.get_text() for t in ax.texts) == sorted(["0.25", "0.50", "0.75", "-0.50", "0.10", "0.20"])
    assert ax.images[0].get_array().shape == (3, 3)
    assert ax.figure.axes[-1].get_ylabel() == "r2"  # colour bar
    ax = un.pl.cross_modal_matrix(_scores(), value="pearson")
    assert "0.50" in [t.get_text() for t in ax.texts] and "-0.50" not in [t.get_text() for t in ax.texts]


def test_cross_modal_matrix_from_dataframe_into_given_axes(mpl_agg):
    _, ax = mpl_agg.subplots()
    df = pd.DataFrame([[np.nan, 0.9], [0.4, np.nan]], index=["rna", "atac"], columns=["rna", "atac"])
    assert un.pl.cross_modal_matrix(df, ax=ax) is ax
    assert sorted(t.get_text() for t in ax.texts) == ["0.40", "0.90"]


def test_cross_modal_matrix_from_evaluate(mdata, fit):
    model = fit(mdata, "translation", setup={})
    metrics = un.tl.evaluate(model)
    ax = un.pl.cross_modal_matrix(mdata.uns["unitednet"]["metrics"])
    assert _ticks(ax.get_xticklabels()) == ["rna", "atac"]
    assert f"{metrics['r2'].loc['atac', 'rna']:.2f}" in [t.get_text() for t in ax.texts]


def test_cross_modal_matrix_missing_values():
    with pytest.raises(KeyError, match=r"No 'r2' matrix in the metrics; run unitednet.tl.evaluate"):
        un.pl.cross_modal_matrix({"groups": {"accuracy": 1.0}})
    with pytest.raises(KeyError, match="No 'spearman' matrix"):
        un.pl.cross_modal_matrix(_scores(), value="spearman")


# ---------------------------------------------------------------------------------------------------------------------
# relevance
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def with_relevance(mdata):
    """Hand-made group relevance of ``rna``: gene<i> tops alpha, gene<10+i> beta, gene<20+i> gamma (i = 0, 1, 2)."""
    rel = pd.DataFrame(0.01, index=mdata.mod["rna"].var_names, columns=["alpha", "beta", "gamma"])
    for j, group in enumerate(rel.columns):
        for i in range(3):
            rel.loc[f"gene{10 * j + i}", group] = 1.0 - 0.1 * i
    mdata.mod["rna"].varm["unitednet_relevance"] = rel
    return mdata


@pytest.mark.parametrize("kind", ["heatmap", "dotplot"])
def test_relevance_plot(with_relevance, kind):
    ax = un.pl.relevance(with_relevance, "rna", n_top=2, kind=kind)
    assert _ticks(ax.get_xticklabels()) == ["gene0", "gene1", "gene10", "gene11", "gene20", "gene21"]
    assert _ticks(ax.get_yticklabels()) == ["alpha", "beta", "gamma"]
    assert ax.get_title() == "rna: top 2 features per group"
    if kind == "heatmap":
        values = ax.images[0].get_array()
        assert values.shape == (3, 6)
        # standard-scaled per feature: each feature is 1 for its group and 0 for the others
        np.testing.assert_allclose(values, np.kron(np.eye(3), np.ones((1, 2))))
    else:
        assert len(ax.collections[0].get_offsets()) == 3 * 6


def test_relevance_plot_subset_of_groups_unscaled(with_relevance, mpl_agg):
    _, ax = mpl_agg.subplots()
    out = un.pl.relevance(with_relevance, "rna", groups=["gamma"], n_top=3, standard_scale=False, ax=ax)
    assert out is ax
    assert _ticks(ax.get_xticklabels()) == ["gene20", "gene21", "gene22"]
    assert _ticks(ax.get_yticklabels()) == ["gamma"]
    np.testing.assert_allclose(ax.images[0].get_array(), [[1.0, 0.9, 0.8]])


def test_relevance_dotplot_of_signed_relevance(with_relevance):
    # aggregate="mean" writes signed relevance: dots are sized by the magnitude and coloured by the signed value
    rel = with_relevance.mod["rna"].varm["unitednet_relevance"]
    rel.loc["gene1", "alpha"] = -0.5
    with_relevance.uns["unitednet"] = {"relevance_params": {"aggregate": "mean"}}
    ax = un.pl.relevance(with_relevance, "rna", groups=["alpha"], n_top=2, kind="dotplot", standard_scale=False)
    assert _ticks(ax.get_xticklabels()) == ["gene0", "gene2"]  # ranked from the most positive
    dots = ax.collections[0]
    np.testing.assert_allclose(dots.get_array(), [1.0, 0.8])
    np.testing.assert_allclose(dots.get_sizes(), 10 + 140 * np.array([1.0, 0.8]))
    assert ax.figure.axes[-1].get_ylabel() == "mean SHAP"
    # every feature shown, the most negative one included: it gets the largest dot, and no size is negative
    rel.loc["gene0", "alpha"] = -2.0
    ax = un.pl.relevance(with_relevance, "rna", groups=["alpha"], n_top=24, kind="dotplot", standard_scale=False)
    dots = ax.collections[0]
    assert (dots.get_sizes() > 10).all()
    assert dots.get_sizes()[np.argmin(dots.get_array())] == pytest.approx(150.0)
    # negative values shown unscaled: a diverging map centred on zero (unless a map is given)
    assert dots.get_cmap().name == "RdBu_r" and dots.get_clim() == (-2.0, 2.0)
    ax = un.pl.relevance(with_relevance, "rna", groups=["alpha"], n_top=24, standard_scale=False, cmap="viridis")
    assert ax.images[0].get_cmap().name == "viridis" and ax.images[0].get_clim() == (-2.0, 2.0)
    # scaled to [0, 1], or with no negative value: the sequential default
    assert un.pl.relevance(with_relevance, "rna", n_top=2).images[0].get_cmap().name == "Reds"


def test_relevance_plot_title_names_the_explained_output(with_relevance):
    with_relevance.mod["rna"].varm["coarse"] = with_relevance.mod["rna"].varm["unitednet_relevance"].copy()
    uns = {"relevance_params": {"output": "log_odds", "background": "rest"}}
    uns["coarse_params"] = {"output": "logit", "background": "group_means"}
    with_relevance.uns["unitednet"] = uns
    ax = un.pl.relevance(with_relevance, "rna", n_top=2)
    assert ax.get_title() == "rna: top 2 features per group\n(output log_odds, background rest)"
    ax = un.pl.relevance(with_relevance, "rna", key="coarse", n_top=1)
    assert ax.get_title() == "rna: top 1 features per group\n(output logit, background group_means)"


def test_relevance_plot_errors(with_relevance):
    with pytest.raises(
        KeyError, match=r"No mdata.mod\['atac'\].varm\['unitednet_relevance'\]; run unitednet.tl.feature"
    ):
        un.pl.relevance(with_relevance, "atac")
    with pytest.raises(KeyError, match=r"No mdata.mod\['adt'\]"):
        un.pl.relevance(with_relevance, "adt")
    with pytest.raises(KeyError, match=r"Groups \['delta'\] are not in the relevance matrix"):
        un.pl.relevance(with_relevance, "rna", groups=["alpha", "delta"])
    with pytest.raises(ValueError, match="kind must be 'heatmap' or 'dotplot', got 'violin'"):
        un.pl.relevance(with_relevance, "rna", kind="violin")


# ---------------------------------------------------------------------------------------------------------------------
# cross_modal_relevance
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def with_links(mdata):
    table = pd.DataFrame(
        {
            "group": ["alpha"] * 4 + ["beta"] * 2,
            "target_feature": ["gene0", "gene0", "gene1", "gene1", "gene5", "gene5"],
            "source_feature": ["peak3", "peak1", "peak3", "peak2", "peak9", "peak8"],
            "relevance": [0.9, 0.3, 0.6, 0.1, 0.5, 0.4],
            "rank": [1, 2, 1, 2, 1, 2],
        }
    )
    mdata.uns["unitednet"] = {"cross_modal_relevance": {"atac->rna": table}}
    return mdata


def test_cross_modal_relevance_plot(with_links):
    ax = un.pl.cross_modal_relevance(with_links, "atac", "rna", "alpha", n_links=3)
    assert ax.get_title() == "atac->rna, group alpha: 3 strongest links"
    assert len(ax.get_lines()) == 3
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == [
        "gene0",
        "gene1",
        "peak1",
        "peak3",
    ]  # the 3 strongest links: peak3-gene0, peak3-gene1, peak1-gene0
    # the strongest link is the widest
    widths = sorted(line.get_linewidth() for line in ax.get_lines())
    assert widths[-1] == pytest.approx(3.0)
    ax = un.pl.cross_modal_relevance(with_links, "atac", "rna", "beta")
    assert len(ax.get_lines()) == 2 and ax.get_title().startswith("atac->rna, group beta: 2")


def test_cross_modal_relevance_plot_errors(with_links, mdata):
    with pytest.raises(KeyError, match=r"No cross-modal relevance 'rna->atac'; run unitednet.tl.cross_modal_relevance"):
        un.pl.cross_modal_relevance(with_links, "rna", "atac", "alpha")
    with pytest.raises(KeyError, match=r"Group 'gamma' is not in the atac->rna relevance table"):
        un.pl.cross_modal_relevance(with_links, "atac", "rna", "gamma")
    del mdata.uns["unitednet"]
    with pytest.raises(KeyError, match="No cross-modal relevance 'atac->rna'"):
        un.pl.cross_modal_relevance(mdata, "atac", "rna", "alpha")
