"""unitednet.tl.umap: a 2-D layout of a latent written by unitednet.tl.latent."""

import anndata as ad
import mudata as md
import numpy as np
import pytest

import unitednet as un


@pytest.fixture
def embedded():
    rng = np.random.default_rng(0)
    # two well-separated blobs in an 8-d "latent"
    rep = np.concatenate([rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 10]).astype(np.float32)
    mdata = md.MuData({"rna": ad.AnnData(rng.normal(size=(80, 3)).astype(np.float32))})
    mdata.obsm["X_unitednet"] = rep
    return mdata


def test_umap_writes_2d_coordinates(embedded):
    assert un.tl.umap(embedded, n_neighbors=10) is None
    coords = embedded.obsm["X_unitednet_umap"]
    assert coords.shape == (80, 2) and np.isfinite(coords).all()
    # the two blobs stay apart: each cell's nearest neighbour in the layout is in its own blob
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    blob = np.repeat([0, 1], 40)
    assert (blob[dist.argmin(1)] == blob).all()
    assert set(embedded.obsm) - {"rna"} == {"X_unitednet", "X_unitednet_umap"}  # "rna": mudata's mask
    assert "neighbors" not in embedded.uns


def test_umap_key_added_use_rep_and_copy(embedded):
    embedded.obsm["X_other"] = embedded.obsm["X_unitednet"][:, :4].copy()
    result = un.tl.umap(embedded, use_rep="X_other", key_added="layout", n_neighbors=10, copy=True)
    assert result.obsm["layout"].shape == (80, 2)
    assert "layout" not in embedded.obsm
    # same seed, same layout
    un.tl.umap(embedded, use_rep="X_other", key_added="layout", n_neighbors=10)
    np.testing.assert_allclose(embedded.obsm["layout"], result.obsm["layout"], rtol=1e-5, atol=1e-5)


def test_umap_missing_representation(embedded):
    with pytest.raises(KeyError, match=r"no 'X_missing'.*unitednet.tl.latent\(model, mdata\)"):
        un.tl.umap(embedded, use_rep="X_missing")
