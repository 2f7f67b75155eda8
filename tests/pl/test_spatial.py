"""unitednet.pl.spatial: cells at their coordinates, shared colours across panels, nothing written."""

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

import unitednet as un
from unitednet.pl._spatial import BACKGROUND


@pytest.fixture(autouse=True)
def _agg(mpl_agg):
    return mpl_agg


@pytest.fixture
def spatial_mdata(make_mudata):
    mdata = make_mudata(n_cells=60)
    rng = np.random.default_rng(0)
    mdata.obsm["spatial"] = rng.uniform(0, 100, size=(60, 2))
    truth = mdata.obs["cell_type"].astype(str).to_numpy()
    predicted = truth.copy()
    predicted[:10] = "alpha"  # some errors
    mdata.obs["predicted"] = pd.Categorical(predicted, categories=["gamma", "beta", "alpha"])
    return mdata


def _facecolors(ax) -> np.ndarray:
    """Colour of every drawn cell, in the order of the scatter collections."""
    out = []
    for c in ax.collections:
        n = len(c.get_offsets())
        if n:
            faces = c.get_facecolors()
            out.append(np.repeat(faces, n, axis=0) if len(faces) == 1 else faces)
    return np.concatenate(out)


def _offsets(ax) -> np.ndarray:
    return np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])


def test_panels_share_category_colours(spatial_mdata, snapshot, assert_unchanged):
    mdata = spatial_mdata
    before = snapshot(mdata)
    obsm_before = {k: np.array(v, copy=True) for k, v in mdata.obsm.items()}
    fig = un.pl.spatial(mdata, color=["cell_type", "predicted"])
    assert isinstance(fig, Figure)
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["cell_type", "predicted"]
    for ax in axes:
        # every cell drawn once, at its coordinates
        offsets = _offsets(ax)
        assert offsets.shape == (60, 2)
        np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(mdata.obsm["spatial"][:, 0]))
    # the same label has the same colour in both panels (the predicted column lists its categories in another order)
    truth = mdata.obs["cell_type"].astype(str).to_numpy()
    predicted = mdata.obs["predicted"].astype(str).to_numpy()
    colour_truth = {t: tuple(c) for t, c in zip(truth, _facecolors(axes[0]), strict=True)}
    colour_pred = {p: tuple(c) for p, c in zip(predicted, _facecolors(axes[1]), strict=True)}
    assert colour_truth == colour_pred
    assert len(set(colour_truth.values())) == 3
    # one legend with the three categories, in the truth's order
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["alpha", "beta", "gamma"]
    # nothing was written (scanpy would add uns["<column>_colors"])
    assert_unchanged(mdata, before)
    assert set(mdata.obsm) == set(obsm_before)
    np.testing.assert_array_equal(mdata.obsm["spatial"], obsm_before["spatial"])


def test_mask_missing_values_numeric_columns_and_stored_colours(spatial_mdata):
    mdata = spatial_mdata
    band = mdata.obsm["spatial"][:, 0] < 50
    only_band = mdata.obs["predicted"].astype(object).where(band, None)
    mdata.obs["band_prediction"] = pd.Categorical(only_band, categories=["alpha", "beta", "gamma"])
    mdata.uns["cell_type_colors"] = ["#ff0000", "#00ff00", "#0000ff"]
    fig = un.pl.spatial(mdata, color=["cell_type", "band_prediction", "score"], mask=~np.zeros(60, dtype=bool))
    truth_ax, band_ax, score_ax = (a for a in fig.axes if a.get_title())
    # stored scanpy colours are used (read only) for the categories they name
    colours = {tuple(c) for c in _facecolors(truth_ax)}
    assert colours == {to_rgba("#ff0000"), to_rgba("#00ff00"), to_rgba("#0000ff")}
    # cells without a prediction are grey
    offsets, faces = _offsets(band_ax), _facecolors(band_ax)
    outside = np.isin(offsets[:, 0], mdata.obsm["spatial"][~band, 0])
    assert (faces[outside] == to_rgba(BACKGROUND)).all()
    assert not (faces[~outside] == to_rgba(BACKGROUND)).all(axis=1).any()
    # a numeric column gets a colour map and a colour bar
    assert len(fig.axes) == 4  # three panels + the colour bar
    assert score_ax.collections[-1].get_array() is not None

    # mask: only those cells coloured, the others grey
    fig = un.pl.spatial(mdata, color="cell_type", mask=band)
    ax = fig.axes[0]
    offsets, faces = _offsets(ax), _facecolors(ax)
    grey = (faces == to_rgba(BACKGROUND)).all(axis=1)
    assert grey.sum() == (~band).sum()
    mdata.obs["in_band"] = band
    fig = un.pl.spatial(mdata, color="cell_type", mask="in_band", palette=["k", "r", "b"], invert_yaxis=True)
    assert fig.axes[0].yaxis_inverted()
    assert {tuple(c) for c in _facecolors(fig.axes[0])} <= {to_rgba(c) for c in ("k", "r", "b", BACKGROUND)}


def test_draws_into_given_axes_and_reads_anndata(spatial_mdata, mpl_agg):
    plt = mpl_agg
    fig, axes = plt.subplots(1, 2)
    out = un.pl.spatial(spatial_mdata, color=["cell_type", "predicted"], axes=list(axes), legend=False)
    assert out is fig and axes[0].get_title() == "cell_type" and not fig.legends
    adata = ad.AnnData(obs=spatial_mdata.obs.copy(), obsm={"xy": spatial_mdata.obsm["spatial"]})
    fig = un.pl.spatial(adata, color="cell_type", spatial_key="xy")
    assert _offsets(fig.axes[0]).shape == (60, 2)
    # coordinates stored in a modality are found too
    mdata = spatial_mdata
    mdata["rna"].obsm["xy"] = mdata.obsm["spatial"]
    assert isinstance(un.pl.spatial(mdata, color="cell_type", spatial_key="xy"), Figure)


def test_errors(spatial_mdata):
    mdata = spatial_mdata
    with pytest.raises(KeyError, match=r"Columns \['Region'\] are not in mdata.obs"):
        un.pl.spatial(mdata, color=["cell_type", "Region"])
    with pytest.raises(KeyError, match=r"No coordinates under obsm\['xy'\]"):
        un.pl.spatial(mdata, color="cell_type", spatial_key="xy")
    with pytest.raises(ValueError, match="mask must be a boolean obs column or array of 60 values"):
        un.pl.spatial(mdata, color="cell_type", mask=np.ones(5, dtype=bool))
    with pytest.raises(KeyError, match="mask='nope' is not a column"):
        un.pl.spatial(mdata, color="cell_type", mask="nope")
    with pytest.raises(KeyError, match=r"palette has no colour for categories \['gamma'\]"):
        un.pl.spatial(mdata, color="cell_type", palette={"alpha": "r", "beta": "b"})
    with pytest.raises(ValueError, match="palette has 2 colours for 3 categories"):
        un.pl.spatial(mdata, color="cell_type", palette=["r", "b"])
    with pytest.raises(ValueError, match="one axes per column"):
        un.pl.spatial(mdata, color=["cell_type", "predicted"], axes=[None])
    with pytest.raises(ValueError, match="at least one obs column"):
        un.pl.spatial(mdata, color=[])
