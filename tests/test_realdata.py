"""Accuracy floors on the reference data (looser than the benchmarks in benchmarks/, which report the real figures)."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scvi
from sklearn.model_selection import StratifiedKFold

import unitednet as un

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def patchseq_fold():
    """Fold 0 of the 10-fold stratified split used by benchmarks/patchseq_cv.py."""
    mdata = un.datasets.patchseq()
    y = mdata.obs["cell_type_TEM"].astype(str).to_numpy()
    train, test = next(StratifiedKFold(10, shuffle=True, random_state=0).split(y, y))
    return mdata[train].copy(), mdata[test].copy()


def test_patchseq_supervised_beats_floor(patchseq_fold):
    train, test = patchseq_fold
    scvi.settings.seed = 0
    un.UnitedNetModel.setup_mudata(train, labels_key="cell_type_TEM")
    model = un.UnitedNetModel(train)
    model.train("supervised", max_epochs=60, batch_size=64, enable_progress_bar=False)
    truth = test.obs["cell_type_TEM"].astype(str).to_numpy()
    accuracy = float((model.predict_labels(test) == truth).mean())
    # 27 MET types; logistic regression on PCA features reaches about 0.84 on average over the folds
    assert accuracy > 0.75
    # cross-modal prediction on unseen cells beats the training mean (R² > 0) for RNA -> ephys
    metrics = un.tl.evaluate(model, test, pairs=[("rna", "ephys")])
    assert metrics["cross_modal"]["rna->ephys"]["r2_variance_weighted"] > 0.15


def test_patchseq_unsupervised_beats_floor(patchseq_fold):
    train, test = patchseq_fold
    scvi.settings.seed = 0
    un.UnitedNetModel.setup_mudata(train, labels_key="cell_type_TEM")
    model = un.UnitedNetModel(train, n_groups=27)
    model.train("unsupervised", max_epochs=60, batch_size=64, enable_progress_bar=False)
    scores = un.tl.clustering_metrics(test.obs["cell_type_TEM"].astype(str), model.predict_labels(test))
    assert scores["ari"] > 0.15
    assert scores["nmi"] > 0.75


def test_bmmc_cite_rna_to_adt_beats_training_mean():
    mdata = un.datasets.bmmc_cite()
    scvi.settings.seed = 0
    un.UnitedNetModel.setup_mudata(mdata, modalities=["rna", "adt"])
    model = un.UnitedNetModel(mdata)
    model.train("translation", max_epochs=60, batch_size=64, split_key="split", enable_progress_bar=False)
    test = mdata[mdata.obs["split"] == "test"].copy()
    pred = model.predict_modality(test, source="rna", target="adt")
    truth = test.mod["adt"].X.toarray()
    rmse = float(np.sqrt(((pred - truth) ** 2).mean()))
    train_mean = mdata[mdata.obs["split"] == "train"].mod["adt"].X.toarray().mean(0)
    rmse_mean = float(np.sqrt(((train_mean - truth) ** 2).mean()))
    # the training mean scores about 0.79 and the OpenProblems random forest 0.5543
    assert rmse < 0.65
    assert rmse < 0.85 * rmse_mean


def test_patchseq_class_markers_lead_the_class_relevance():
    """Issue 3's acceptance: each major class's marker gene is in the top 10 of the class's RNA relevance.

    Trained as ``benchmarks/explain.py`` trains its ``decoder_batch_norm`` setting, the one the explainability
    tutorial uses (all cells, the model's own validation split, 100 epochs, batch normalisation in the decoders only)
    and with the default relevance (the signed mean of the SHAP values); there, with seed 0, Sst, Pvalb, Vip and Lamp5
    rank 1st, 2nd, 3rd and 2nd, and over seeds 0-5 23 of the 24 ranks are in the top 10 (the other 22nd).
    """
    mdata = un.datasets.patchseq()
    mdata.obs["major"] = mdata.obs["cell_type_TEM"].astype(str).str.split("-MET").str[0].astype("category")
    scvi.settings.seed = 0
    un.UnitedNetModel.setup_mudata(mdata, labels_key="cell_type_TEM")
    model = un.UnitedNetModel(mdata, norm={"encoders": "none", "decoders": "batch", "heads": "none"})
    model.train("supervised", max_epochs=100, batch_size=64, enable_progress_bar=False)
    un.tl.feature_relevance(model, groupby="major", modalities=["rna"])
    relevance = mdata.mod["rna"].varm["unitednet_relevance"]
    ranks = {c: int((relevance[c] > relevance.loc[c, c]).sum()) + 1 for c in ("Sst", "Pvalb", "Vip", "Lamp5")}
    assert all(rank <= 10 for rank in ranks.values()), ranks


def test_bmmc_cite_rare_types_train_with_the_default_split():
    """Issue 17: the default split keeps the cell of a one-cell type in training (with a warning) and trains."""
    mdata = un.datasets.bmmc_cite()
    train = mdata[mdata.obs["batch"] == "s1d1"].copy()
    test = mdata[mdata.obs["batch"] == "s1d2"].copy()
    counts = train.obs["cell_type"].value_counts()
    singles = sorted(counts.index[counts == 1])
    assert len(singles) >= 5  # the situation of the issue: rare types with one cell
    scvi.settings.seed = 0
    un.UnitedNetModel.setup_mudata(train, labels_key="cell_type")
    model = un.UnitedNetModel(train)
    with pytest.warns(UserWarning, match=rf"{len(singles)} label/batch group\(s\) have a single cell") as record:
        model.train("supervised", max_epochs=40, batch_size=64, enable_progress_bar=False)
    message = next(str(w.message) for w in record if "single cell" in str(w.message))
    assert all(repr(s) in message for s in singles[:10])
    assert set(model.split_[train.obs["cell_type"].isin(singles).to_numpy()]) == {"train"}
    accuracy = float((model.predict_labels(test) == test.obs["cell_type"].astype(str).to_numpy()).mean())
    # logistic regression on PCA reaches 0.484 on this transfer (benchmarks/bmmc_cite.py)
    assert accuracy > 0.45


def _leiden_clusters(X: np.ndarray, n_clusters: int) -> np.ndarray:
    """Leiden on a 15-neighbour graph of scaled, PCA-reduced ``X``, the resolution bisected to give ``n_clusters``."""
    adata = ad.AnnData(np.asarray(X, dtype=np.float32))
    sc.pp.scale(adata)
    sc.pp.pca(adata, n_comps=min(30, X.shape[1] - 1), random_state=0)
    sc.pp.neighbors(adata, n_neighbors=15, random_state=0)
    lo, hi = 0.01, 5.0
    for _ in range(40):
        resolution = (lo + hi) / 2
        sc.tl.leiden(adata, resolution=resolution, random_state=0, flavor="igraph", n_iterations=2, directed=False)
        found = adata.obs["leiden"].nunique()
        if found == n_clusters:
            break
        lo, hi = (resolution, hi) if found < n_clusters else (lo, resolution)
    assert found == n_clusters
    return adata.obs["leiden"].astype(str).to_numpy()


def test_osmfish_niche_latent_finds_the_regions():
    """Leiden on the RNA + niche latent of a translation model recovers the cortical regions far better than RNA."""
    mdata = un.datasets.osmfish()
    sc.pp.normalize_total(mdata["rna"])
    sc.pp.log1p(mdata["rna"])
    un.pp.niche(mdata, modality="rna", n_neighbors=40, weighting="inverse_distance")
    scvi.settings.seed = 0
    un.UnitedNetModel.setup_mudata(mdata, modalities=["rna", "niche"])
    model = un.UnitedNetModel(mdata)
    model.train("translation", train_size=0.9, max_epochs=30, batch_size=256, enable_progress_bar=False)
    truth = mdata.obs["Region"].astype(str).to_numpy()
    latent = un.tl.clustering_metrics(truth, _leiden_clusters(model.get_latent_representation(), 11))
    rna = un.tl.clustering_metrics(truth, _leiden_clusters(mdata["rna"].X, 11))
    # benchmarks/osmfish.py: 0.59 +- 0.06 over seeds (60 epochs) against 0.32 for Leiden on RNA alone
    assert latent["ari"] > 0.45
    assert latent["ari"] > rna["ari"] + 0.1
